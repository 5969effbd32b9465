"""A batch of messages for several customers, processed in ONE ProcessMessages apply (the set-based path: customers,
SOP enrollments, ledgers, lead states and rollup locks read once per batch, ledger rows written once per round),
ends in exactly the state that processing the same messages one apply at a time gives: tags, rule decisions,
scores, stages, ledger, SOP enrollments, timeline, outbox work; and with lead scores crossing stage thresholds, the
state that one apply per customer gives."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from bot.apply import apply
from bot.models import Customer, CustomerTag, Outbox, TimelineEntry
from bot.scoring.models import LeadAssignment, LeadState, ScoreLedgerEntry, StageChangeRow
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

# The same rules under the ids the shipped scoring config scores (intent_pricing 15, intent_trial and
# kw-trial-request 20, stage_business 25), plus two more: the lead scores of the messages below cross stage thresholds.
SCORED_RULES = RULES.replace("id: pricing", "id: intent_pricing").replace("id: demo", "id: intent_trial") + """
  - id: kw-trial-request
    name: 试用
    keywords: [试用]
    add_tags: ["意向:试用"]
  - id: stage_business
    name: 合同
    keywords: [合同]
    add_tags: ["意向:合同"]
"""

# (customer index, minutes after T0, text): several customers interleaved, repeated hits, a threshold reached
# within the batch, a cooldown, a negative, an employee-free customer message with no hit.
MESSAGES = [
    (0, 0, "请问价格多少？"), (1, 1, "太贵了"), (2, 2, "想看演示"), (0, 3, "太贵"), (1, 4, "还是太贵"),
    (2, 5, "再看一次演示"), (0, 6, "不需要价格了"), (3, 7, "你好"), (1, 8, "价格能优惠吗"), (3, 9, "价格？"),
    (0, 10, "还是太贵"), (2, 11, "价格"), (3, 12, "不买了"), (3, 13, "太贵"),
]
# With SCORED_RULES customer 2 climbs past the engaged, MQL and SQL thresholds within the batch (and is routed).
SCORED_MESSAGES = [*MESSAGES, (2, 14, "合同怎么签"), (2, 15, "可以试用吗")]
# Processed one apply each before the messages, in every run: customers 0 and 1 come to the batch with a lead
# state and a ledger already, 2 and 3 without.
EARLIER = [(0, -60, "你好"), (1, -50, "在吗")]


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


def _run(services: Services, prefix: str, mode: str, messages: list[tuple[int, int, str]] = MESSAGES) -> None:
    """``mode``: "batch" (one apply for all the messages), "one" (one apply per message) or "per_customer" (one apply
    per customer with all of that customer's messages)."""
    exts = [f"wm{prefix}{i}" for i in range(4)]
    for ext in exts:
        add_customer(services, ext, "WangFang", T0 - timedelta(days=1))
    for i in _store(services, f"{prefix}e", exts, EARLIER):
        with services.transaction() as s:
            apply([ProcessMessages((i,))], s, now=NOW, context_key=f"earlier:{prefix}:{i}")
    ids = _store(services, prefix, exts, messages)
    if mode == "batch":
        applies = [ids]
    elif mode == "one":
        applies = [[i] for i in ids]
    else:
        by_time = sorted(range(len(messages)), key=lambda k: messages[k][1])  # ids are in message time order
        applies = [[ids[n] for n, k in enumerate(by_time) if messages[k][0] == c] for c in range(len(exts))]
    for n, batch in enumerate(applies):
        with services.transaction() as s:
            apply([ProcessMessages(tuple(batch))], s, now=NOW, context_key=f"{mode}:{prefix}:{n}")


def _store(services: Services, prefix: str, exts: list[str], messages: list[tuple[int, int, str]]) -> list[int]:
    raw = [{"msgid": f"{prefix}-{k}", "action": "send", "from": exts[c], "tolist": ["WangFang"], "roomid": "",
            "msgtime": int((T0 + timedelta(minutes=m)).timestamp() * 1000), "msgtype": "text",
            "text": {"content": text}} for k, (c, m, text) in enumerate(messages)]
    records, errors = parse_archive(raw)
    assert not errors
    with services.transaction() as s:
        apply([StoreMessages(tuple(records), process=False)], s, now=NOW, context_key=f"store:{prefix}")
        ids = list(s.scalars(select(TaggingMessage.id).where(TaggingMessage.msgid.like(f"{prefix}-%"))
                             .order_by(TaggingMessage.sent_at)))
    assert len(ids) == len(messages)
    return ids


def _snapshot(services: Services, prefix: str) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    with services.transaction() as s:
        for i in range(4):
            c = s.scalar(select(Customer).where(Customer.external_userid == f"wm{prefix}{i}"))
            assert c is not None
            state = s.get(LeadState, c.id)
            out[i] = {
                "score": c.score, "stage": c.stage,
                "state": state and (dict(state.armed), state.fit, state.engagement, state.scored_at,
                                    state.recompute_at, state.reached_rank, state.stage_at),
                "stage_changes": [(r.from_stage, r.to_stage, r.reason, r.at) for r in s.scalars(
                    select(StageChangeRow).where(StageChangeRow.customer_id == c.id).order_by(StageChangeRow.id))],
                "assignments": [(a.userid, a.reason, a.status, a.accept_by) for a in s.scalars(
                    select(LeadAssignment).where(LeadAssignment.customer_id == c.id).order_by(LeadAssignment.id))],
                "tags": sorted((t.group_name, t.name, t.source, t.removed_at is None, t.applied_at)
                               for t in s.scalars(select(CustomerTag).where(CustomerTag.customer_id == c.id))),
                "hits": sorted((h.rule_id, h.at, h.applied, h.decision)
                               for h in s.scalars(select(RuleHit).where(RuleHit.customer_id == c.id))),
                "ledger": sorted((e.rule_id, e.event_kind, e.points, e.at, e.dimension) for e in s.scalars(
                    select(ScoreLedgerEntry).where(ScoreLedgerEntry.customer_id == c.id))),
                "enrollments": sorted((e.sop_id, e.rotation, e.state, e.exit_reason, e.started_at) for e in s.scalars(
                    select(SopEnrollment).where(SopEnrollment.customer_id == c.id))),
                "timeline": Counter(s.scalars(select(TimelineEntry.kind).where(TimelineEntry.customer_id == c.id))),
                "mark_tag": [(tuple(p["add"]), tuple(p["remove"])) for p in s.scalars(
                    select(Outbox.payload).where(Outbox.kind == "mark_tag").order_by(Outbox.id))
                    if p["external_userid"] == c.external_userid],
            }
    return out


def _merge_mark_tags(*sides: dict[int, dict[str, Any]]) -> None:
    """mark_tag rows are one per apply: a batch merges what smaller applies send as several calls; what counts is the
    customer's tags in WeCom once every call is made."""
    for side in sides:
        for snap in side.values():
            in_wecom: set[str] = set()
            for add, remove in snap["mark_tag"]:
                in_wecom = (in_wecom | set(add)) - set(remove)
            snap["mark_tag"] = sorted(in_wecom)


def test_a_batch_ends_where_one_message_at_a_time_ends(setup: Services) -> None:
    _run(setup, "B", "batch")
    _run(setup, "O", "one")
    batched, one_by_one = _snapshot(setup, "B"), _snapshot(setup, "O")
    # The scenario exercises what the set-based reads must get right (not a vacuous comparison):
    assert [e[0] for e in batched[0]["enrollments"]] == ["by_risk", "by_tag"]  # two enrollments, one batch
    assert ("objection", T0 + timedelta(minutes=4), True, "apply:threshold:2/2") in batched[1]["hits"]
    assert [h[2] for h in batched[2]["hits"] if h[0] == "demo"] == [True, False]  # cooldown within the batch
    assert batched[3]["timeline"]["tag_added"] == 1 and batched[3]["timeline"]["tag_removed"] == 1  # by a rule
    assert ("意向", "询价", "keyword_rule", False, T0 + timedelta(minutes=9)) in batched[3]["tags"]
    _merge_mark_tags(batched, one_by_one)
    assert batched == one_by_one


def test_lead_scoring_of_a_batch_is_each_customers_own(setup: Services, rules_dir: Callable[[str], Path]) -> None:
    """Scoring takes a round's events of all the batch's customers together (one ledger read, one ledger INSERT per
    round of events, lead states read or created at once, the score and stage UPDATEs flushed together): every
    customer ends as when its messages are the only ones of the apply. (Not as one message at a time: a round
    scores all of a customer's events of the batch in one step, so a stage change's reason spans them.)"""
    rules_dir(SCORED_RULES)
    _run(setup, "B", "batch", SCORED_MESSAGES)
    _run(setup, "C", "per_customer", SCORED_MESSAGES)
    batched, per_customer = _snapshot(setup, "B"), _snapshot(setup, "C")
    assert batched[2]["stage"] == "sql" and [c[1] for c in batched[2]["stage_changes"]] == ["sql"]
    assert batched[2]["timeline"]["lead_assigned"] + batched[2]["timeline"]["lead_unrouted"] == 1
    assert batched[0]["stage"] == batched[1]["stage"] == "engaged"  # they had a lead state before the batch
    assert all(snap["state"] is not None and snap["ledger"] for snap in batched.values())
    _merge_mark_tags(batched, per_customer)
    assert batched == per_customer


def test_a_batch_that_fires_nothing_reads_only_what_it_uses(setup: Services) -> None:
    """Rule history, tag rows, follows and SOP customer views are read only when a rule fires or a customer can be
    enrolled (a batch of small talk reads none of them), and the batch's ledger rows take one INSERT."""
    exts = [f"wmN{i}" for i in range(4)]
    for ext in exts:
        add_customer(setup, ext, "WangFang", T0 - timedelta(days=1))
    ids = _store(setup, "N", exts, [(c, c, "好的，谢谢") for c in range(4)])
    statements: list[str] = []

    def count(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        statements.append(" ".join(sql.split()))

    event.listen(setup.engine, "before_cursor_execute", count)
    try:
        with setup.transaction() as s:
            apply([ProcessMessages(tuple(ids))], s, now=NOW, context_key="small-talk")
    finally:
        event.remove(setup.engine, "before_cursor_execute", count)
    tables = ("tagging_rule_hits", "customer_tags", "follow_relations")
    assert [sql for sql in statements if sql.startswith("SELECT") and any(f"FROM {t}" in sql for t in tables)] == []
    assert sum(sql.startswith("INSERT INTO score_ledger") for sql in statements) == 1
    with setup.transaction() as s:
        assert s.scalar(select(func.count()).select_from(ScoreLedgerEntry)) == 4  # each customer's reply scored
