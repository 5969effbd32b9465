"""Inbox retention (jobs/retention.py): processed rows past SOPBOT_INBOX_RETENTION_DAYS go, nothing else does."""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import select

import jobs.retention as retention
from bot.db import utcnow
from bot.models import InboxEvent
from bot.services import Services
from jobs.scheduler import tick as scheduler_tick

NOW = utcnow()


def _row(services: Services, key: str, status: str, age_days: float) -> None:
    with services.transaction() as s:
        s.add(InboxEvent(corp_id="ww1", dedupe_key=key, event_key="change_external_contact:add_external_contact",
                         payload={"k": key}, received_at=NOW - timedelta(days=age_days), status=status,
                         attempts=1))


def _keys(services: Services) -> list[str]:
    with services.transaction() as s:
        return list(s.scalars(select(InboxEvent.dedupe_key).order_by(InboxEvent.id)))


def _history(services: Services) -> None:
    for status in ("done", "ignored", "pending", "retry", "failed"):
        _row(services, f"old-{status}", status, 45)
    _row(services, "edge-done", "done", 29.9)
    _row(services, "new-done", "done", 1)


def test_processed_rows_past_retention_go_and_nothing_else(services: Services) -> None:
    _history(services)
    assert retention.prune_inbox(services, NOW) == 2
    assert _keys(services) == ["old-pending", "old-retry", "old-failed", "edge-done", "new-done"]
    assert retention.prune_inbox(services, NOW) == 0  # nothing more to do


def test_retention_0_keeps_everything(services: Services) -> None:
    services.settings = dataclasses.replace(services.settings, inbox_retention_days=0)
    _history(services)
    assert retention.prune_inbox(services, NOW) == 0
    assert retention.tick(services, NOW) == 0
    assert len(_keys(services)) == 7


def test_a_backlog_goes_in_batches_up_to_the_run_limit(services: Services, monkeypatch: Any) -> None:
    monkeypatch.setattr(retention, "BATCH", 3)
    for n in range(8):
        _row(services, f"old-{n}", "done", 40)
    _row(services, "old-failed", "failed", 40)
    assert retention.prune_inbox(services, NOW, limit=5) == 5  # one full batch, then a short one
    assert _keys(services) == ["old-5", "old-6", "old-7", "old-failed"]
    assert retention.prune_inbox(services, NOW) == 3
    assert _keys(services) == ["old-failed"]


def test_the_scheduler_prunes_at_most_once_per_run_every(services: Services) -> None:
    _history(services)
    scheduler_tick(services, NOW)
    assert "old-done" not in _keys(services)
    _row(services, "old-done-2", "done", 45)
    assert retention.tick(services, NOW) == 0  # another scheduler (or this one) ran within RUN_EVERY
    ttl = services.redis.ttl(retention.LOCK_KEY)
    assert 0 < ttl <= retention.RUN_EVERY.total_seconds()
    services.redis.delete(retention.LOCK_KEY)  # as when the key expires
    assert retention.tick(services, NOW) == 1


def test_redis_down_skips_pruning_with_a_warning(services: Services, monkeypatch: Any,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    _history(services)

    def down(*_: Any, **__: Any) -> None:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(services.redis, "set", down)
    with caplog.at_level(logging.WARNING, logger="sopbot.retention"):
        assert retention.tick(services, NOW) == 0
    assert "inbox retention skipped" in caplog.text
    assert len(_keys(services)) == 7
