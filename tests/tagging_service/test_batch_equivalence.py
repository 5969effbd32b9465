"""A batch of messages for several customers, processed in ONE ProcessMessages apply (the set-based path: customers,
SOP enrollments, ledgers, lead states and rollup locks read once per batch), ends in exactly the state that
processing the same messages one apply at a time gives: tags, rule decisions, scores, stages, ledger, SOP
enrollments, timeline, outbox work."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.apply import apply
from bot.models import Customer, CustomerTag, Outbox, TimelineEntry
from bot.scoring.models import LeadState, ScoreLedgerEntry
from bot.services import Services
from bot.sop.models import SopEnrollment
from bot.tagging.apply_tagging import ProcessMessages, StoreMessages
from bot.tagging.models import RuleHit, TaggingMessage
from jobs.tagging import parse_archive
from tests.sop_service.helpers import add_customer, make_library, sop_doc

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)

RULES = """
keyword_rules:
  - id: pricing
    name: 询价
    keywords: [价格]
    negatives: [不需要]
    add_tags: ["意向:询价"]
  - id: objection
    name: 嫌贵
    keywords: [太贵]
    threshold: {count: 2, window: 7d}
    add_tags: ["风险:价格敏感"]
  - id: demo
    name: 演示
    keywords: [演示]
    cooldown: 1d
    add_tags: ["意向:演示"]
  - id: cancel
    name: 不买了
    keywords: [不买了]
    remove_tags: ["意向:询价"]
"""

STEPS = [{"id": "s1", "day": 1, "at": "10:00", "content": "x"}, {"id": "s2", "day": 3, "at": "10:00", "content": "x"}]

# (customer index, minutes after T0, text): several customers interleaved, repeated hits, a threshold reached
# within the batch, a cooldown, a negative, an employee-free customer message with no hit.
MESSAGES = [
    (0, 0, "请问价格多少？"), (1, 1, "太贵了"), (2, 2, "想看演示"), (0, 3, "太贵"), (1, 4, "还是太贵"),
    (2, 5, "再看一次演示"), (0, 6, "不需要价格了"), (3, 7, "你好"), (1, 8, "价格能优惠吗"), (3, 9, "价格？"),
    (0, 10, "还是太贵"), (2, 11, "价格"), (3, 12, "不买了"), (3, 13, "太贵"),
]


@pytest.fixture
def setup(services: Services, rules_dir: Callable[[str], Path], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Services:
    rules_dir(RULES)
    # No exit conditions: an exit pre-check sees the customer as the whole batch left them (a tag added by a
    # later message of the same batch), which one message at a time cannot; that is the batch's semantics.
    root = make_library(tmp_path / "lib",
                        sop_doc("by_tag", STEPS, crowd={"trigger": [{"event": "tag_added", "tag": "意向:询价"}]}),
                        sop_doc("by_risk", STEPS, crowd={"trigger": [{"event": "tag_added", "tag": "风险:价格敏感"}]}))
    monkeypatch.setenv("SOPBOT_CONTENT_DIR", str(root))
    return services


def _run(services: Services, prefix: str, batched: bool) -> None:
    exts = [f"wm{prefix}{i}" for i in range(4)]
    for ext in exts:
        add_customer(services, ext, "WangFang", T0 - timedelta(days=1))
    raw = [{"msgid": f"{prefix}-{k}", "action": "send", "from": exts[c], "tolist": ["WangFang"], "roomid": "",
            "msgtime": int((T0 + timedelta(minutes=m)).timestamp() * 1000), "msgtype": "text",
            "text": {"content": text}} for k, (c, m, text) in enumerate(MESSAGES)]
    records, errors = parse_archive(raw)
    assert not errors
    with services.transaction() as s:
        apply([StoreMessages(tuple(records), process=False)], s, now=NOW, context_key=f"store:{prefix}")
        ids = list(s.scalars(select(TaggingMessage.id).where(TaggingMessage.msgid.like(f"{prefix}-%"))
                             .order_by(TaggingMessage.sent_at)))
    assert len(ids) == len(MESSAGES)
    if batched:
        with services.transaction() as s:
            apply([ProcessMessages(tuple(ids))], s, now=NOW, context_key=f"batch:{prefix}")
    else:
        for i in ids:
            with services.transaction() as s:
                apply([ProcessMessages((i,))], s, now=NOW, context_key=f"one:{prefix}:{i}")


def _snapshot(services: Services, prefix: str) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    with services.transaction() as s:
        for i in range(4):
            c = s.scalar(select(Customer).where(Customer.external_userid == f"wm{prefix}{i}"))
            assert c is not None
            state = s.get(LeadState, c.id)
            out[i] = {
                "score": c.score, "stage": c.stage,
                "armed": dict(state.armed) if state else None,
                "tags": sorted((t.group_name, t.name, t.source, t.removed_at is None, t.applied_at)
                               for t in s.scalars(select(CustomerTag).where(CustomerTag.customer_id == c.id))),
                "hits": sorted((h.rule_id, h.at, h.applied, h.decision)
                               for h in s.scalars(select(RuleHit).where(RuleHit.customer_id == c.id))),
                "ledger": sorted((e.rule_id, e.event_kind, e.points, e.at) for e in s.scalars(
                    select(ScoreLedgerEntry).where(ScoreLedgerEntry.customer_id == c.id))),
                "enrollments": sorted((e.sop_id, e.rotation, e.state, e.exit_reason, e.started_at) for e in s.scalars(
                    select(SopEnrollment).where(SopEnrollment.customer_id == c.id))),
                "timeline": Counter(s.scalars(select(TimelineEntry.kind).where(TimelineEntry.customer_id == c.id))),
                "mark_tag": [(tuple(p["add"]), tuple(p["remove"])) for p in s.scalars(
                    select(Outbox.payload).where(Outbox.kind == "mark_tag").order_by(Outbox.id))
                    if p["external_userid"] == c.external_userid],
            }
    return out


def test_a_batch_ends_where_one_message_at_a_time_ends(setup: Services) -> None:
    _run(setup, "B", batched=True)
    _run(setup, "O", batched=False)
    batched, one_by_one = _snapshot(setup, "B"), _snapshot(setup, "O")
    # The scenario exercises what the set-based reads must get right (not a vacuous comparison):
    assert [e[0] for e in batched[0]["enrollments"]] == ["by_risk", "by_tag"]  # two enrollments, one batch
    assert ("objection", T0 + timedelta(minutes=4), True, "apply:threshold:2/2") in batched[1]["hits"]
    assert [h[2] for h in batched[2]["hits"] if h[0] == "demo"] == [True, False]  # cooldown within the batch
    assert batched[3]["timeline"]["tag_added"] == 1 and batched[3]["timeline"]["tag_removed"] == 1  # by a rule
    assert ("意向", "询价", "keyword_rule", False, T0 + timedelta(minutes=9)) in batched[3]["tags"]
    # mark_tag rows are one per apply: the batch merges what one-by-one sends as several calls; what counts is the
    # customer's tags in WeCom once every call is made.
    for side in (batched, one_by_one):
        for snap in side.values():
            in_wecom: set[str] = set()
            for add, remove in snap["mark_tag"]:
                in_wecom = (in_wecom | set(add)) - set(remove)
            snap["mark_tag"] = sorted(in_wecom)
    assert batched == one_by_one
