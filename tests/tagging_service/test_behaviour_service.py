"""Behaviour rules on domain events (same transaction as the timeline entry) and on the scheduler tick."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.actions import RecordTimeline
from bot.apply import apply
from bot.services import Services
from bot.tagging.models import RuleHit
from jobs.tagging import tick
from tests.conftest import SimHarness, run_worker
from tests.tagging_service.test_keyword_service import CUSTOMER, T0, active_tags, post, record

RULES = """
behaviour_rules:
  - id: from_webinar
    name: 直播来源
    kind: added_via_channel
    params: {channel: webinar}
    add_tags: ["来源:直播客户"]
  - id: joined_any
    name: 进群
    kind: joined_group
    add_tags: ["活动:进群"]
  - id: chatty
    name: 活跃
    kind: event_count
    params: {event_kind: customer_message, count: 2, window: 1d}
    add_tags: ["状态:活跃"]
  - id: silent
    name: 沉默
    kind: no_reply_days
    params: {days: 3}
    add_tags: ["状态:沉默"]
    remove_tags: ["状态:活跃"]
  - id: lost
    name: 流失
    kind: deleted_employee
    add_tags: ["状态:流失"]
"""


@pytest.fixture
def rules(rules_dir: Callable[[str], Path]) -> Path:
    return rules_dir(RULES)


def _event(services: Services, kind: str, at: datetime, **detail: Any) -> None:
    with services.transaction() as s:
        apply([RecordTimeline(CUSTOMER, kind, at, detail=detail, dedupe_key=f"t:{kind}:{at.isoformat()}")], s,
              now=at, context_key=f"test:{kind}:{at.isoformat()}")


def test_channel_and_deletion_rules_fire_from_real_callbacks(client: Any, services: Services, sim: SimHarness,
                                                             rules: Path) -> None:
    ext = sim.control("actions/add_customer", {"userid": "WangFang", "name": "周杰", "state": "webinar"})[
        "external_userid"]
    run_worker(services)
    tag = active_tags(services, ext)["来源:直播客户"]
    assert tag.source == "behaviour_rule" and tag.reason["rule_id"] == "from_webinar"
    assert tag.reason["evidence"] == "added:channel=webinar" and tag.reason["event"] == "customer_added"
    sim.control("actions/customer_deletes", {"userid": "WangFang", "external_userid": ext})
    run_worker(services)
    assert active_tags(services, ext)["状态:流失"].reason["rule_id"] == "lost"


def test_joined_group_fires_once_per_event(services: Services, rules: Path) -> None:
    _event(services, "joined_group", T0, chat_id="wrA")
    _event(services, "joined_group", T0, chat_id="wrA")  # the same fact again: deduplicated, no second hit
    assert active_tags(services)["活动:进群"].reason["group_id"] == "wrA"
    with services.transaction() as s:
        assert len(s.scalars(select(RuleHit).where(RuleHit.rule_id == "joined_any")).all()) == 1


def test_event_count_fires_on_the_crossing(client: Any, services: Services, rules: Path) -> None:
    post(client, services, [record("c1", "在吗", T0)])
    assert "状态:活跃" not in active_tags(services)
    post(client, services, [record("c2", "有空吗", T0 + timedelta(hours=2))])
    assert active_tags(services)["状态:活跃"].reason["evidence"] == "event_count:customer_message=2/1 days"


def test_no_reply_days_on_the_tick_once_per_silence(client: Any, services: Services, rules: Path) -> None:
    post(client, services, [record("c1", "在吗", T0), record("c2", "好的", T0 + timedelta(minutes=1))])
    assert "状态:活跃" in active_tags(services)
    last = T0 + timedelta(minutes=1)
    assert tick(services, last + timedelta(days=2)) == {"inactivity": 0}
    assert tick(services, last + timedelta(days=2, seconds=30)) == {"inactivity": "not due"}
    assert tick(services, last + timedelta(days=3, minutes=1)) == {"inactivity": 1}
    tags = active_tags(services)
    assert "状态:沉默" in tags and "状态:活跃" not in tags
    assert tags["状态:沉默"].applied_at == last + timedelta(days=3)
    assert tick(services, last + timedelta(days=3, minutes=5)) == {"inactivity": 0}


def test_no_reply_counts_from_the_add_when_the_customer_never_wrote(services: Services, rules: Path) -> None:
    _event(services, "joined_group", datetime.now(UTC) - timedelta(days=3, minutes=2), chat_id="wrB")
    # the customer row was created "now" by get_or_create_customer: silence starts at created_at
    with services.transaction() as s:
        from bot.models import Customer

        customer = s.scalar(select(Customer).where(Customer.external_userid == CUSTOMER))
        assert customer is not None
        created = customer.created_at
    assert tick(services, created + timedelta(days=3, minutes=1)) == {"inactivity": 1}
