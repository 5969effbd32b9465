"""Inbox retention: processed callbacks are deleted once they are older than SOPBOT_INBOX_RETENTION_DAYS.

An inbox row's work is done once it is `done` or `ignored`: what it changed lives in the customer tables and the
timeline (which keeps the row's id, not the row). Kept for ever, the table grows by every callback WeCom sends, and
so does every insert's cost (the callback's B-trees deepen). Rows still `pending`, `retry` or `failed` are never
deleted here: they are work not done, or failures an operator has to see (`GET /api/v1/inbox?status=failed`).

The dedupe key goes with the row. WeCom retries a delivery within seconds (three times, five seconds apart), so
a retention of days leaves no retry without its row.

The scheduler runs this at every tick; the work runs at most once per RUN_EVERY across every scheduler (a Redis
key taken with NX), in batches of BATCH rows, each batch its own short transaction so the callback's writer waits
for one batch at most.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from redis.exceptions import RedisError
from sqlalchemy import delete, select

from bot.models import InboxEvent
from bot.services import Services

log = logging.getLogger("sopbot.retention")

__all__ = ["BATCH", "RUN_EVERY", "prune_inbox", "tick"]

BATCH = 1000
RUN_EVERY = timedelta(minutes=10)
MAX_PER_RUN = 200 * BATCH  # a backlog (retention just switched on) is worked off over several runs
LOCK_KEY = "sopbot:retention:inbox"
FINISHED = ("done", "ignored")


def tick(services: Services, now: datetime) -> int:
    """Prune if retention is on and no scheduler pruned within RUN_EVERY; the number of rows deleted."""
    if not services.settings.inbox_retention_days:
        return 0
    try:
        if not services.redis.set(LOCK_KEY, now.isoformat(), nx=True, ex=int(RUN_EVERY.total_seconds())):
            return 0
    except RedisError as exc:  # the sweeper reports Redis being down; pruning can wait for it
        log.warning("inbox retention skipped, Redis unavailable: %s", type(exc).__name__)
        return 0
    return prune_inbox(services, now)


def prune_inbox(services: Services, now: datetime, *, limit: int = MAX_PER_RUN) -> int:
    """Delete done and ignored inbox rows received before now - SOPBOT_INBOX_RETENTION_DAYS, oldest first."""
    days = services.settings.inbox_retention_days
    if not days:
        return 0
    cutoff = now - timedelta(days=days)
    deleted = 0
    with services.transaction() as session:  # rows arrive in id order: nothing is old if the first row is not
        oldest = session.scalar(select(InboxEvent.received_at).order_by(InboxEvent.id).limit(1))
    if oldest is None or oldest >= cutoff:
        return 0
    while deleted < limit:
        with services.transaction() as session:
            ids = session.scalars(
                select(InboxEvent.id)
                .where(InboxEvent.status.in_(FINISHED), InboxEvent.received_at < cutoff)
                .order_by(InboxEvent.id).limit(min(BATCH, limit - deleted))
            ).all()
            if ids:
                session.execute(delete(InboxEvent).where(InboxEvent.id.in_(ids)))
        deleted += len(ids)
        if len(ids) < BATCH:
            break
    if deleted:
        log.info("inbox retention: deleted %d processed rows received before %s", deleted, cutoff.isoformat())
    return deleted
