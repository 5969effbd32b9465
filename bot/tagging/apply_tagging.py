"""Executors of the tagging area's actions, registered on bot.apply with `@executes`, and its event subscriber.

- ``StoreMessages``: insert messages (unique per source and msgid: a message seen twice is stored and
  matched once); with ``process`` the message is put on the customer's timeline and matched at once (kf
  pages, app texts), without it the rows wait as ``pending`` for a ``process_messages`` outbox job (the
  archive API answers before matching).
- ``ProcessMessages``: that job's half: claim pending rows (the whole batch, marked done in one statement),
  timeline, match — in message time order, so thresholds count hits within a batch exactly as across batches.
- ``FireRule``: one rule hit on one customer: decide (threshold, cooldown, manual removal) against the
  rule's history, record the hit (unique per rule and message/event: fires at most once), apply its tags
  through AddTags/RemoveTags (local row with reason, ``tag_added`` timeline entry, one batched mark_tag).
- ``SaveKfCursor``: compare-and-set of a kf cursor, in the transaction of the page's messages.
- the subscriber evaluates behaviour rules on every new timeline entry (same transaction).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bot.actions import Action, AddTags, EnqueueCall, RecordTimeline, RemoveTags, TagRef
from bot.apply import ApplyContext, DomainEvent, _apply, batch_tag_reads, executes, insert_ignore, subscribe
from bot.models import KV, TimelineEntry
from bot.scoring import outcomes
from bot.tagging.behaviour import evaluate_event
from bot.tagging.decide import decide
from bot.tagging.model import BehaviourEvent, EventKind, KeywordRule
from bot.tagging.models import RuleHit, TaggingMessage
from bot.tagging.service import (
    BatchHistory,
    MessageRecord,
    batch_key,
    current_rules,
    employee_departments,
    excerpt_of,
    hit_key,
    rule_history,
)

_HISTORY = "tagging:history"  # ctx.memo key of the BatchHistory while ProcessMessages runs its batch

log = logging.getLogger("sopbot.tagging")

__all__ = ["StoreMessages", "ProcessMessages", "FireRule", "SaveKfCursor", "CursorMoved", "RecordArchiveNotify",
           "TIMELINE_EVENTS", "kf_cursor_key"]


@dataclass(frozen=True)
class StoreMessages(Action):
    messages: tuple[MessageRecord, ...]
    process: bool = True
    queue: str = "default"  # of the process_messages job when process is False


@dataclass(frozen=True)
class ProcessMessages(Action):
    ids: tuple[int, ...]


@dataclass(frozen=True)
class FireRule(Action):
    rule_id: str
    external_userid: str
    at: datetime
    what: str  # the message ("kf:<msgid>") or event this hit comes from: one hit per (rule, what)
    evidence: Mapping[str, Any] = field(default_factory=dict)
    userid: str | None = None


class CursorMoved(Exception):  # noqa: N818 - a signal, not an error: another worker saved this page first
    pass


@dataclass(frozen=True)
class SaveKfCursor(Action):
    open_kfid: str
    expected: str  # the cursor the page was read with
    cursor: str


@dataclass(frozen=True)
class RecordArchiveNotify(Action):
    at: datetime
    agent_id: str | None = None


def kf_cursor_key(open_kfid: str) -> str:
    return f"kf_cursor:{open_kfid}"


# --------------------------------------------------------------------------------------------- messages


def _row_values(rec: MessageRecord, ctx: ApplyContext, status: str) -> dict[str, Any]:
    return {"source": rec.source, "msgid": rec.msgid, "direction": rec.direction, "msgtype": rec.msgtype,
            "external_userid": rec.external_userid, "userid": rec.userid, "chat_id": rec.chat_id,
            "open_kfid": rec.open_kfid, "text": rec.text, "sent_at": rec.sent_at, "received_at": ctx.now,
            "status": status, "processed_at": ctx.now if status == "done" else None, "raw": dict(rec.raw)}


def _record_of(row: TaggingMessage) -> MessageRecord:
    return MessageRecord(row.source, row.msgid, row.direction, row.sent_at, row.msgtype, row.external_userid,
                         row.userid, row.chat_id, row.open_kfid, row.text, row.raw or {})


def _process(ctx: ApplyContext, rec: MessageRecord) -> None:
    """Timeline entry for the customer, then keyword matching of customer text (only)."""
    ext = rec.external_userid
    if not ext or rec.direction not in ("customer", "employee"):
        return  # events, app texts, group messages of employees: stored, on no customer's timeline
    customer_message = rec.direction == "customer"
    _apply(RecordTimeline(
        ext, "message_received" if customer_message else "message_sent", rec.sent_at,
        detail={"direction": rec.direction, "source": rec.source, "msgid": rec.msgid, "excerpt": excerpt_of(rec)},
        userid=rec.userid, source=rec.source, dedupe_key=f"msg:{rec.source}:{rec.msgid}"), ctx)
    if not rec.is_customer_text:
        return
    rules = current_rules(ctx.session)
    departments = employee_departments(ctx.session, rec.userid) if rules.uses_departments else frozenset()
    outcome = rules.matcher.match_outcome(rec.inbound(), departments)
    if outcome.regex_timeouts:
        log.warning("regex keyword timed out", extra={"rules": outcome.regex_timeouts, "msgid": rec.msgid})
    for hit in outcome.hits:
        _apply(FireRule(hit.rule_id, ext, rec.sent_at, f"{rec.source}:{rec.msgid}", {
            "message_source": rec.source, "msgid": rec.msgid, "keyword": hit.keyword, "mode": hit.mode.value,
            "excerpt": hit.excerpt, **({"chat_id": rec.chat_id} if rec.chat_id else {}),
            **({"employee": rec.userid} if rec.userid else {}),
        }), ctx)


def _insert_ignore_stmt(ctx: ApplyContext) -> Any:
    dialect = ctx.session.get_bind().dialect.name
    mod: Any = postgresql if dialect == "postgresql" else sqlite
    return mod.insert(TaggingMessage.__table__).on_conflict_do_nothing(index_elements=["source", "msgid"])


@executes
def _(action: StoreMessages, ctx: ApplyContext) -> None:
    table = TaggingMessage.__table__
    if action.process:
        for rec in action.messages:
            if insert_ignore(ctx.session, table, _row_values(rec, ctx, "done"), ["source", "msgid"]):  # type: ignore[arg-type]
                _process(ctx, rec)
            # else: seen before (re-pulled page, re-posted batch): stored and matched once
        return
    # Deferred (archive batches): one multi-row INSERT … ON CONFLICT DO NOTHING and one read of the ids still
    # pending. A row another request stored a moment ago and that is still pending may be included too: its
    # two jobs then race for it, and ProcessMessages only processes rows it moves out of `pending` (once).
    unique = list({(r.source, r.msgid): r for r in action.messages}.values())
    if not unique:
        return
    ctx.session.execute(_insert_ignore_stmt(ctx), [_row_values(rec, ctx, "pending") for rec in unique])
    pending: list[int] = []
    by_source: dict[str, list[str]] = {}
    for rec in unique:
        by_source.setdefault(rec.source, []).append(rec.msgid)
    for source, msgids in by_source.items():
        pending += ctx.session.scalars(select(TaggingMessage.id).where(
            TaggingMessage.source == source, TaggingMessage.msgid.in_(msgids), TaggingMessage.status == "pending")
            .order_by(TaggingMessage.id)).all()
    if pending:
        _apply(EnqueueCall("process_messages", {"ids": pending},
                           dedupe_key=f"process_messages:{ctx.context_key}:{batch_key(action.messages)}",
                           queue=action.queue), ctx)


@executes
def _(action: ProcessMessages, ctx: ApplyContext) -> None:
    rows = ctx.session.scalars(select(TaggingMessage).where(
        TaggingMessage.id.in_(action.ids), TaggingMessage.status == "pending")
        .order_by(TaggingMessage.sent_at, TaggingMessage.id).with_for_update()).all()
    if not rows:
        return  # a re-run (or a second job for the same rows): already processed
    records = [_record_of(row) for row in rows]
    # Claimed (row locks on PostgreSQL, the write lock on SQLite): mark the batch done in one statement.
    ctx.session.execute(update(TaggingMessage).where(TaggingMessage.id.in_([row.id for row in rows]))
                        .values(status="done", processed_at=ctx.now).execution_options(synchronize_session=False))
    ctx.load_customers(r.external_userid for r in records if r.external_userid)  # one read for the batch
    exts = {r.external_userid for r in records}
    ids = [c.id for e, c in ctx.customers.items() if e in exts]
    # Lock the batch's customers now, all in one statement in id order (PostgreSQL; SQLite's write lock serialises
    # anyway). Two workers' batches often share customers (one conversation spans batches); taken later, piecemeal
    # (a tag row's unique key here, the step rollup's customer lock there), the locks crossed and PostgreSQL broke
    # the deadlocks by failing one job (61 in a 60 s run of bench/tagging_e2e.py at 500 msg/s). The rollup's own
    # lock (bot.scoring.outcomes) then finds them held.
    outcomes.prepare(ctx.session, ids)
    # Follows and tag rows (bot.apply) and rule history of the batch's customers, read once for the loop's actions.
    ctx.memo[_HISTORY] = BatchHistory(ctx.session, ids)
    try:
        with batch_tag_reads(ctx, ids):
            for record in records:
                _process(ctx, record)
    finally:
        del ctx.memo[_HISTORY]


# ------------------------------------------------------------------------------------------------ rules


@executes
def _(action: FireRule, ctx: ApplyContext) -> None:
    rules = current_rules(ctx.session)
    rule = rules.rule(action.rule_id)
    if rule is None or not rule.enabled:
        return  # deleted or disabled between the hit and now
    customer = ctx.customer(action.external_userid)
    batch: BatchHistory | None = ctx.memo.get(_HISTORY)
    history = batch.history(rule, customer.id) if batch is not None else None
    if history is None:
        history = rule_history(ctx.session, rule, customer.id)
    decision = decide(rule, action.at, history)
    kind = "keyword" if isinstance(rule, KeywordRule) else "behaviour"
    inserted = insert_ignore(ctx.session, RuleHit.__table__, {  # type: ignore[arg-type]
        "rule_id": rule.id, "rule_kind": kind, "customer_id": customer.id,
        "external_userid": customer.external_userid, "at": action.at, "applied": decision.apply,
        "decision": decision.reason[:255], "evidence": dict(action.evidence),
        "hit_key": hit_key(rule.id, action.what)}, ["hit_key"])
    if inserted and batch is not None:
        batch.recorded(rule.id, customer.id, action.at, decision.apply)
    if not inserted or not decision.apply:
        return
    if rule.remove_tags and batch is not None:
        batch.forget(customer.id)  # its tag removals change: the customer's next decisions read them again
    source = f"{kind}_rule"
    reason = {"rule_id": rule.id, "rule_name": rule.name, "rule_kind": kind, **dict(action.evidence),
              "decision": decision.reason, "at": action.at.isoformat()}
    if rule.add_tags:
        _apply(AddTags(customer.external_userid, tuple(TagRef.parse(t) for t in rule.add_tags), source=source,
                       reason=reason, at=action.at, userid=action.userid), ctx)
    if rule.remove_tags:
        _apply(RemoveTags(customer.external_userid, tuple(TagRef.parse(t) for t in rule.remove_tags),
                          source=source, reason=reason, at=action.at, userid=action.userid), ctx)


# Timeline kinds behaviour rules listen to, as the engine's event kinds, and the detail field of their attribute.
TIMELINE_EVENTS: dict[str, tuple[EventKind, str | None, str | None]] = {
    "customer_added": (EventKind.ADDED, "channel", "state"),
    "link_opened": (EventKind.LINK_OPENED, "material", "material"),
    "joined_group": (EventKind.JOINED_GROUP, "group_id", "chat_id"),
    "left_group": (EventKind.LEFT_GROUP, "group_id", "chat_id"),
    "customer_deleted_employee": (EventKind.DELETED_EMPLOYEE, None, None),
    "message_received": (EventKind.CUSTOMER_MESSAGE, None, None),
}
_EVENT_TO_TIMELINE = {kind.value: timeline for timeline, (kind, _, _) in TIMELINE_EVENTS.items()}


class _TimelineCounts:
    """CountsProvider over the timeline (event_count rules)."""

    def __init__(self, ctx: ApplyContext, customer_ids: Mapping[str, int]) -> None:
        self.ctx, self.customer_ids = ctx, customer_ids

    def count_events(self, customer_id: str, event_kind: str, since: datetime, until: datetime) -> int:
        timeline_kind = _EVENT_TO_TIMELINE.get(event_kind)
        cid = self.customer_ids.get(customer_id)
        if timeline_kind is None or cid is None:
            return 0
        return int(self.ctx.session.scalar(select(func.count()).select_from(TimelineEntry).where(
            TimelineEntry.customer_id == cid, TimelineEntry.kind == timeline_kind,
            TimelineEntry.at >= since, TimelineEntry.at < until)) or 0)


def _event_key(event: DomainEvent) -> str:
    body = json.dumps({"k": event.kind, "c": event.customer_id, "at": event.at.isoformat(), "d": event.detail},
                      sort_keys=True, ensure_ascii=False, default=str)
    return "event:" + hashlib.sha256(body.encode()).hexdigest()[:32]


@subscribe
def evaluate_behaviour(ctx: ApplyContext, events: list[DomainEvent]) -> list[Action]:
    relevant = [e for e in events if e.kind in TIMELINE_EVENTS]
    if not relevant:
        return []
    rules = current_rules(ctx.session)
    if not rules.behaviour:
        return []
    counts = _TimelineCounts(ctx, {e.external_userid: e.customer_id for e in relevant})
    actions: list[Action] = []
    for event in relevant:
        kind, attr, detail_field = TIMELINE_EVENTS[event.kind]
        value = event.detail.get(detail_field) if detail_field else None
        attrs = {attr: str(value)} if attr and value not in (None, "") else {}
        behaviour_event = BehaviourEvent(kind.value, event.external_userid, event.userid, event.at, attrs)
        for hit in evaluate_event(rules.behaviour, behaviour_event, counts):
            actions.append(FireRule(hit.rule_id, event.external_userid, hit.at, _event_key(event),
                                    {"event": event.kind, "evidence": hit.evidence, **attrs}))
    return actions


# ------------------------------------------------------------------------------------------------ cursors


@executes
def _(action: SaveKfCursor, ctx: ApplyContext) -> None:
    key = kf_cursor_key(action.open_kfid)
    value = {"cursor": action.cursor, "open_kfid": action.open_kfid}
    if action.expected == "" and insert_ignore(ctx.session, KV.__table__,  # type: ignore[arg-type]
                                               {"key": key, "value": value, "updated_at": ctx.now}, ["key"]):
        return
    # Row lock on PostgreSQL (SQLite's BEGIN IMMEDIATE already serialises writers): a second worker that read the
    # same cursor waits here, then sees the moved cursor and drops its copy of the page.
    row = ctx.session.scalar(select(KV).where(KV.key == key).with_for_update())
    current = str((row.value or {}).get("cursor", "")) if row is not None else ""
    if current != action.expected:
        raise CursorMoved(f"kf cursor of {action.open_kfid} moved from {action.expected!r} to {current!r}")
    if row is None:
        ctx.session.add(KV(key=key, value=value, updated_at=ctx.now))
    else:
        row.value, row.updated_at = value, ctx.now


@executes
def _(action: RecordArchiveNotify, ctx: ApplyContext) -> None:
    key = "tagging:msgaudit_notify"
    row = ctx.session.get(KV, key)
    count = int((row.value or {}).get("count", 0)) + 1 if row is not None else 1
    value = {"last_at": action.at.isoformat(), "agent_id": action.agent_id, "count": count,
             "puller": None}  # no archive puller exists: Tencent's GetChatData SDK is proprietary (docs/TAGGING.md)
    if row is None:
        ctx.session.add(KV(key=key, value=value, updated_at=ctx.now))
    else:
        row.value, row.updated_at = value, ctx.now

