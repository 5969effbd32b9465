"""Lead scoring service: the DB side of the pure engine in bot/scoring (ledger, stages, routing).

Everything here runs inside the caller's transaction (an apply, an API request, a scheduler batch): it
writes the scoring area's own tables directly and returns core Actions (timeline entries, outbox rows)
for `bot.apply` to execute, so a score, the stage it moves, the assignment and the notification commit
together or not at all.

- `apply_domain_events`: for a round's customers together, map timeline events to scoring events, append
  ledger rows (caps, repeat limits and idempotency are the engine's), recompute the score, run the
  StageMachine, persist the armed map, log stage changes and route MQL -> SQL.
- `rescore`: the decay recompute the scheduler runs for due customers (re-arms thresholds).
- `set_stage`: manual stage changes (promotion, demotion, won/lost, reopen), always logged.
- `route_lead` / `accept` / `reject` / `recycle` / `escalate_due`: assignments with an accept-by SLA in
  business minutes, escalation to the manager, time-to-first-touch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.actions import Action, EnqueueCall, RecordTimeline
from bot.apply import DomainEvent, insert_ignore_stmt
from bot.models import KV, Customer, Employee, FollowRelation, GroupChat
from bot.scoring import outcomes
from bot.scoring.ledger import entries_for_event, explain, score_at
from bot.scoring.model import LedgerEntry, ScoreEvent, ScoringConfig
from bot.scoring.models import ASSIGNMENT_OPEN, LeadAssignment, LeadState, ScoreLedgerEntry, StageChangeRow
from bot.scoring.routing import (
    LeadTask,
    NoSalespersonError,
    Salesperson,
    accept_deadline,
    choose_salesperson,
    escalation_target,
    should_escalate,
)
from bot.scoring.rules import load_config
from bot.scoring.stages import Stage, StageChange, StageError, StageMachine
from bot.sop.timing import add_business_minutes

__all__ = [
    "STAGE_CN", "SalesSettings", "ScoringError", "accept", "apply_domain_events", "config", "explain_customer",
    "lead_states", "ledgers_of",
    "reject", "recycle", "rescore", "route_lead", "sales_settings", "escalate_due", "set_stage", "to_score_events",
]

STAGE_CN = {"new": "新线索", "engaged": "互动中", "mql": "MQL 市场认可线索", "sql": "SQL 销售认可线索",
            "won": "赢单", "lost": "输单"}
REACHED_RANK = {"new": 0, "engaged": 1, "mql": 2, "sql": 3, "won": 4}  # lost never raises the funnel rollup
RR_KEY = "scoring:rr_state"
NOTIFY_KIND = "scoring_notify"
NOTIFY_QUEUE = "realtime"  # an SQL must reach sales in minutes
# Decay is continuous; re-scoring a customer once per interval is enough to re-arm thresholds and keep the
# stored score honest. Below this many decaying points nothing is left to recompute.
NEGLIGIBLE_POINTS = 0.05


class ScoringError(ValueError):
    """A request the lifecycle or routing does not allow (the API answers 400/409 with the message)."""


# ------------------------------------------------------------------------------------------ settings

_CONFIG_CACHE: dict[str, tuple[float, ScoringConfig]] = {}


def config_path() -> Path:
    explicit = os.environ.get("SOPBOT_SCORING_CONFIG")
    if explicit:
        return Path(explicit)
    from scripts_library import CONTENT_ROOT

    return Path(os.environ.get("SOPBOT_CONTENT_DIR") or CONTENT_ROOT) / "scoring.yaml"


def config() -> ScoringConfig:
    """The scoring config, reloaded when the file changes (rules are data, edited without a restart)."""
    path = config_path()
    mtime = path.stat().st_mtime
    cached = _CONFIG_CACHE.get(str(path))
    if cached is None or cached[0] != mtime:
        cached = (mtime, load_config(path))
        _CONFIG_CACHE[str(path)] = cached
    return cached[1]


@dataclass(frozen=True)
class SalesSettings:
    departments: frozenset[int] | None  # None: every active employee with customer contact
    capacity: int
    hours: str
    timezone: str
    recompute_every: timedelta


def sales_settings(env: Mapping[str, str] | None = None) -> SalesSettings:
    """SOPBOT_SALES_DEPARTMENTS (comma-separated department ids), SOPBOT_SALES_CAPACITY (default 50),
    SOPBOT_SALES_HOURS (default 09:00-18:00), SOPBOT_SCORING_RECOMPUTE_HOURS (default 24)."""
    env = os.environ if env is None else env
    raw = (env.get("SOPBOT_SALES_DEPARTMENTS") or "").strip()
    departments = frozenset(int(d) for d in raw.split(",") if d.strip()) if raw else None
    return SalesSettings(
        departments=departments,
        capacity=int(env.get("SOPBOT_SALES_CAPACITY") or 50),
        hours=env.get("SOPBOT_SALES_HOURS") or "09:00-18:00",
        timezone=env.get("SOPBOT_TIMEZONE") or "Asia/Shanghai",
        recompute_every=timedelta(hours=float(env.get("SOPBOT_SCORING_RECOMPUTE_HOURS") or 24)),
    )


# ------------------------------------------------------------------------------- events -> ledger

_MATERIAL_TYPES = (("case_study", ("案例", "case")), ("whitepaper", ("白皮书", "whitepaper")))
_COMMUNITY_WORDS = ("社群", "用户群", "community")


def _event_id(event: DomainEvent, prefix: str | None = None) -> str:
    body = json.dumps([event.kind, event.at.isoformat(), event.userid, event.detail], sort_keys=True,
                      ensure_ascii=False, default=str)
    return f"{prefix or event.kind}:{hashlib.sha256(body.encode()).hexdigest()[:24]}"


def _material_type(detail: Mapping[str, Any]) -> str | None:
    if detail.get("material_type"):
        return str(detail["material_type"])
    text = " ".join(str(detail.get(k) or "") for k in ("material", "url", "script")).lower()
    return next((kind for kind, words in _MATERIAL_TYPES if any(w in text for w in words)), None)


def to_score_events(session: Session, event: DomainEvent) -> list[ScoreEvent]:
    """A timeline event in the scoring vocabulary (bot.scoring.model.KNOWN_EVENT_KINDS); [] if it scores nothing.

    Ids are stable for the same timeline fact, so a re-applied event never scores twice.
    """
    d, cid = event.detail, str(event.customer_id)

    def ev(kind: str, attrs: Mapping[str, object], prefix: str | None = None) -> ScoreEvent:
        return ScoreEvent(_event_id(event, prefix), kind, cid, event.at, attrs)

    if event.kind == "customer_added":
        state = d.get("state")
        return [ev("customer_added", {"channel": state or "", "channel_name": d.get("channel") or "",
                                      "userid": event.userid or ""})]
    if event.kind in ("tag_added", "tag_removed"):
        out = [ev(event.kind, {"tag": d.get("tag") or "", "group": d.get("group") or "", "source": event.source})]
        reason = d.get("reason") or {}
        if event.kind == "tag_added" and event.source in ("keyword_rule", "behaviour_rule") and reason.get("rule_id"):
            # One firing may add several tags: all share the firing's id, so the rule scores once.
            firing = f"{event.source}:{reason['rule_id']}:{reason.get('msgid') or ''}:{reason.get('at') or ''}"
            out.append(ScoreEvent(firing, f"{event.source}_fired", cid, event.at,
                                  {"rule_id": str(reason["rule_id"])}))
        return out
    if event.kind == "link_opened":
        return [ev("link_opened", {"material_type": _material_type(d) or "", "material": d.get("material") or "",
                                   "script": d.get("script") or "", "sop": d.get("sop") or ""})]
    if event.kind == "message_received":
        return [ev("customer_replied", {"source": d.get("source") or event.source})]
    if event.kind == "sop_step_done":
        return [ev("sop_step_done", {"sop": d.get("sop") or "", "step": d.get("step") or "",
                                     "variant": d.get("variant") or ""})]
    if event.kind in ("joined_group", "left_group"):
        chat_id = str(d.get("chat_id") or "")
        name = session.scalar(select(GroupChat.name).where(GroupChat.chat_id == chat_id)) if chat_id else None
        group_type = d.get("group_type") or (
            "user_community" if name and any(w in name.lower() for w in _COMMUNITY_WORDS) else "")
        kind = "group_joined" if event.kind == "joined_group" else "group_left"
        return [ev(kind, {"chat_id": chat_id, "group_type": group_type})]
    if event.kind == "customer_deleted_employee":
        return [ev("customer_deleted", {"userid": event.userid or ""})]
    if event.kind in ("form_submitted", "material_viewed", "manual_adjustment"):
        return [ev(event.kind, {k: v for k, v in d.items() if isinstance(v, str | int | float | bool)})]
    return []


def ledger_of(session: Session, customer_id: int) -> list[LedgerEntry]:
    return ledgers_of(session, [customer_id])[customer_id]


_LEDGER_COLUMNS = (ScoreLedgerEntry.customer_id, ScoreLedgerEntry.rule_id, ScoreLedgerEntry.event_id,
                   ScoreLedgerEntry.points, ScoreLedgerEntry.dimension, ScoreLedgerEntry.at)


def ledgers_of(session: Session, customer_ids: Iterable[int]) -> dict[int, list[LedgerEntry]]:
    """``ledger_of`` for many customers in one query (same entries, same order per customer)."""
    ids = sorted(set(customer_ids))
    out: dict[int, list[LedgerEntry]] = {cid: [] for cid in ids}
    if ids:
        for cid, rule_id, event_id, points, dimension, at in session.execute(
                select(*_LEDGER_COLUMNS).where(ScoreLedgerEntry.customer_id.in_(ids))
                .order_by(ScoreLedgerEntry.at, ScoreLedgerEntry.id)):
            out[cid].append(LedgerEntry(str(cid), rule_id, event_id, points, dimension, at))  # type: ignore[arg-type]
    return out


_NEW_LEAD_STATE = {"armed": {}, "fit": 0.0, "engagement": 0.0, "reached_rank": 0}


def _create_lead_states(session: Session, customer_ids: Sequence[int]) -> dict[int, LeadState]:
    """Insert LeadState rows for customers read to have none (one executemany; ON CONFLICT DO NOTHING keeps a row
    a concurrent transaction created meanwhile) and load them in one query."""
    table: Any = LeadState.__table__
    session.execute(insert_ignore_stmt(session, table, ["customer_id"]),
                    [{"customer_id": cid, **_NEW_LEAD_STATE} for cid in customer_ids])
    states = {st.customer_id: st for st in session.scalars(
        select(LeadState).where(LeadState.customer_id.in_(customer_ids)))}
    assert len(states) == len(customer_ids)  # noqa: S101 - just inserted or already there
    return states


def lead_states(session: Session, customer_ids: Iterable[int]) -> dict[int, LeadState]:
    """The customers' LeadState rows, created where missing: one read, plus one insert and one read if any has
    none. The caller keeps the returned objects (the session's identity map holds unmodified ones only weakly)."""
    ids = sorted(set(customer_ids))
    states = {st.customer_id: st for st in session.scalars(select(LeadState).where(LeadState.customer_id.in_(ids)))}
    absent = [cid for cid in ids if cid not in states]
    if absent:
        states.update(_create_lead_states(session, absent))
    return states


def lead_state(session: Session, customer_id: int) -> LeadState:
    """The customer's LeadState, created if missing."""
    state = session.get(LeadState, customer_id)
    return state if state is not None else _create_lead_states(session, [customer_id])[customer_id]


def apply_domain_events(session: Session, batch: Sequence[tuple[Customer, Sequence[DomainEvent]]], now: datetime,
                        sales: SalesSettings | None = None) -> list[Action]:
    """Score each customer's events, record first touches, move stages; returns the core actions to apply, customer
    by customer in batch order.

    Set-based for the batch: a customer's scoring reads and writes only its own ledger, lead state and
    assignments, so one read of all the ledgers, one INSERT per round of ledger rows (``_append_ledger``) and one
    read (or create) of all the lead states give each customer the rows its own queries would. The rescoring loop
    then issues no statement in the common case (no stage change into SQL), so the ORM flushes the batch's
    UPDATEs of customers and lead states together instead of one customer at a time."""
    cfg, sales = config(), sales or sales_settings()
    _record_touches(session, [(customer.id, events) for customer, events in batch])
    score_events = {customer.id: sorted((se for e in events for se in to_score_events(session, e)),
                                        key=lambda e: e.at) for customer, events in batch}
    score_events = {cid: events for cid, events in score_events.items() if events}
    if not score_events:
        return []
    prior = ledgers_of(session, score_events)
    entries = {cid: list(ledger) for cid, ledger in prior.items()}
    added = _append_ledger(session, cfg, score_events, entries, now)
    if not added:
        return []
    states = lead_states(session, added)
    actions: list[Action] = []
    for customer, _ in batch:
        if customer.id in added:
            actions += rescore(session, customer, now, sales, entries=entries[customer.id], prior=prior[customer.id],
                               state=states[customer.id])
    return actions


_LEDGER_KEY = ("customer_id", "rule_id", "event_id")


def _append_ledger(session: Session, cfg: ScoringConfig, score_events: Mapping[int, Sequence[ScoreEvent]],
                   entries: Mapping[int, list[LedgerEntry]], now: datetime) -> set[int]:
    """Write the ledger rows the customers' score events earn (each customer's in time order), appending the rows
    really inserted to ``entries``; returns the customers that gained any.

    Round ``n`` writes the rows of every customer's ``n``-th event in one INSERT … ON CONFLICT DO NOTHING
    RETURNING (key columns) instead of one statement per row. Rounds go event by event because what an event
    earns (caps, repeat limits) depends on which of the customer's earlier rows were inserted: a concurrent
    transaction may have written the same (customer, rule, event) row since our read, and that row, not
    inserted again, must not count (idempotency). Customers never share a row, so one round serves them all."""
    table: Any = ScoreLedgerEntry.__table__
    stmt = insert_ignore_stmt(session, table, list(_LEDGER_KEY), _LEDGER_KEY)
    added: set[int] = set()
    for n in range(max(len(events) for events in score_events.values())):
        earned = [(cid, events[n], entry) for cid, events in score_events.items() if n < len(events)
                  for entry in entries_for_event(cfg, events[n], entries[cid])]
        if not earned:
            continue
        inserted = {tuple(row) for row in session.execute(stmt, [
            {"customer_id": cid, "rule_id": entry.rule_id, "event_id": entry.event_id, "event_kind": se.kind,
             "points": entry.points, "dimension": entry.dimension, "at": entry.at, "created_at": now}
            for cid, se, entry in earned])}
        for cid, se, entry in earned:
            if (cid, entry.rule_id, entry.event_id) in inserted:
                entries[cid].append(entry)
                added.add(cid)
                if se.kind == "keyword_rule_fired" and entry.points > 0:
                    outcomes.mark_inquiry(session, cid, entry.at)  # the SOP step report's rollup
    return added


def rescore(session: Session, customer: Customer, now: datetime, sales: SalesSettings | None = None, *,
            entries: list[LedgerEntry] | None = None, prior: list[LedgerEntry] | None = None,
            state: LeadState | None = None) -> list[Action]:
    """Recompute the (decayed) score at `now`, persist it with the armed map, apply threshold crossings.

    With `prior` (the ledger before new entries) the move is judged in two steps: the stored score decays to
    the prior score at `now` (which can re-arm a threshold), then the new entries raise it. So a customer who
    cooled off since the last recompute and warms up again crosses the line again, as they should.
    ``entries`` / ``state``: the customer's ledger and LeadState when the caller has read them (else read here).
    """
    cfg, sales = config(), sales or sales_settings()
    entries = ledger_of(session, customer.id) if entries is None else entries
    state = lead_state(session, customer.id) if state is None else state
    score = score_at(cfg, entries, now)
    machine = StageMachine.from_config(cfg)
    steps = [float(customer.score or 0.0)]
    if prior is not None:
        steps.append(score_at(cfg, prior, now).total)
    steps.append(score.total)
    armed: dict[str, bool] = dict(state.armed or {})
    changes: list[StageChange] = []
    stage = Stage(customer.stage)
    for previous, new in zip(steps, steps[1:], strict=False):
        outcome = machine.evaluate(stage, previous, new, armed)
        armed = dict(outcome.armed)
        if outcome.change is not None:
            target = outcome.change.to_stage.value
            reason = (f"评分 {previous:.1f} → {new:.1f}，越过「{STAGE_CN[target]}」阈值 "
                      f"{cfg.stage_thresholds[target]:g} 分")
            changes.append(StageChange(stage, outcome.change.to_stage, reason))
            stage = outcome.change.to_stage
    state.armed = armed
    state.fit, state.engagement, state.scored_at = score.fit, score.engagement, now
    decaying = sum(abs(rs.value) for rs in score.breakdown.values()
                   if (rule := cfg.rule(rs.rule_id)) is not None and rule.decaying)
    state.recompute_at = now + sales.recompute_every if decaying >= NEGLIGIBLE_POINTS else None
    customer.score = round(score.total, 2)
    actions: list[Action] = []
    for change in changes:
        actions += _change_stage(session, customer, state, change, now, sales)
    return actions


def _change_stage(session: Session, customer: Customer, state: LeadState, change: StageChange, now: datetime,
                  sales: SalesSettings) -> list[Action]:
    customer.stage = change.to_stage.value
    state.stage_at = now
    rank = REACHED_RANK.get(change.to_stage.value)
    if rank is not None and not change.demotion:
        state.reached_rank = max(state.reached_rank or 0, rank)
    session.add(StageChangeRow(customer_id=customer.id, from_stage=change.from_stage.value,
                               to_stage=change.to_stage.value, reason=change.reason, demotion=change.demotion,
                               by=change.by, at=now))
    actions: list[Action] = [RecordTimeline(
        customer.external_userid, "stage_changed", now, userid=change.by, source="scoring",
        detail={"from": change.from_stage.value, "to": change.to_stage.value, "reason": change.reason,
                "demotion": change.demotion, "reopen": change.reopen, "by": change.by, "score": customer.score},
        dedupe_key=f"stage:{customer.id}:{change.from_stage.value}:{change.to_stage.value}:{now.isoformat()}")]
    if change.to_stage.terminal:
        for row in _open_assignments(session, [customer.id]):
            row.status, row.closed_at, row.close_reason = "closed", now, f"客户已{STAGE_CN[change.to_stage.value]}"
    if change.creates_assignment:
        actions += route_lead(session, customer, now, sales)
    return actions


# ------------------------------------------------------------------------------------- explain / stage


def explain_customer(session: Session, customer: Customer, now: datetime) -> dict[str, Any]:
    cfg = config()
    entries = ledger_of(session, customer.id)
    score = score_at(cfg, entries, now)
    state = session.get(LeadState, customer.id)
    rows = []
    for e in sorted(entries, key=lambda x: (x.at, x.rule_id)):
        rule = cfg.rule(e.rule_id)
        value = score_at(cfg, [e], now).total if e.at <= now else 0.0
        rows.append({"rule_id": e.rule_id, "rule": rule.name if rule else e.rule_id, "event_id": e.event_id,
                     "dimension": e.dimension, "points": e.points, "at": e.at.isoformat(),
                     "value": round(value, 2), "decays": bool(rule.decaying) if rule else e.dimension == "engagement"})
    return {
        "external_userid": customer.external_userid, "stage": customer.stage, "stored_score": customer.score,
        "at": now.isoformat(), "total": round(score.total, 2), "fit": round(score.fit, 2),
        "engagement": round(score.engagement, 2), "half_life_days": cfg.half_life_days,
        "thresholds": dict(cfg.stage_thresholds), "armed": dict(state.armed) if state else {},
        "entries": rows, "explanation": explain(cfg, entries, now),
    }


def set_stage(session: Session, customer: Customer, to: str, reason: str, by: str, now: datetime,
              sales: SalesSettings | None = None) -> list[Action]:
    """A manual stage change: forward (a jump into SQL routes the lead), back (a logged demotion),
    won/lost, or reopen. Raises ScoringError for what the lifecycle forbids."""
    try:
        target = Stage(to)
    except ValueError as exc:
        raise ScoringError(f"stage must be one of {[s.value for s in Stage]}") from exc
    if not reason.strip():
        raise ScoringError("reason is required: every manual stage change is logged")
    current = Stage(customer.stage)
    if target == current:
        raise ScoringError(f"customer is already {current.value}")
    try:
        if current.terminal:
            change = StageMachine.reopen(current, target, reason, by)
        elif target.terminal:
            change = StageMachine.close(current, target, reason, by)
        elif target.rank < current.rank:
            change = StageMachine.demote(current, target, reason, by)
        else:
            change = StageChange(current, target, reason, by=by)
    except StageError as exc:
        raise ScoringError(str(exc)) from exc
    return _change_stage(session, customer, lead_state(session, customer.id), change, now, sales or sales_settings())


# ------------------------------------------------------------------------------------------- routing


def _open_assignments(session: Session, customer_ids: Iterable[int]) -> list[LeadAssignment]:
    return list(session.scalars(select(LeadAssignment).where(
        LeadAssignment.customer_id.in_(list(customer_ids)), LeadAssignment.status.in_(ASSIGNMENT_OPEN))))


def sales_team(session: Session, sales: SalesSettings, exclude: Iterable[str] = ()) -> list[Salesperson]:
    """Active employees with customer contact (in the configured sales departments), with their open load."""
    skip = set(exclude)
    loads = dict((k, v) for k, v in session.execute(
        select(LeadAssignment.userid, func.count()).where(LeadAssignment.status.in_(ASSIGNMENT_OPEN))
        .group_by(LeadAssignment.userid)).all())
    team = []
    for emp in session.scalars(select(Employee).order_by(Employee.userid)):
        if emp.userid in skip:
            continue
        in_sales = sales.departments is None or bool(set(emp.department_ids or ()) & sales.departments)
        if not (in_sales and emp.customer_contact):
            continue
        team.append(Salesperson(emp.userid, sales.capacity, int(loads.get(emp.userid, 0)), active=bool(emp.active),
                                manager=emp.manager_userid))
    return team


def _owner(session: Session, customer_id: int) -> str | None:
    return session.scalar(select(FollowRelation.userid).where(
        FollowRelation.customer_id == customer_id, FollowRelation.deleted_at.is_(None))
        .order_by(FollowRelation.added_at, FollowRelation.id).limit(1))


def _deadline(now: datetime, cfg: ScoringConfig, sales: SalesSettings) -> datetime:
    return accept_deadline(now, cfg.sla_minutes,
                           lambda start, minutes: add_business_minutes(start, minutes, sales.hours, sales.timezone))


def route_lead(session: Session, customer: Customer, now: datetime, sales: SalesSettings | None = None, *,
               exclude: Iterable[str] = (), previous_id: int | None = None) -> list[Action]:
    """Assign the SQL (owner first, else weighted round-robin by load and capacity), open the accept-by
    task and notify the salesperson now."""
    cfg, sales = config(), sales or sales_settings()
    team = sales_team(session, sales, exclude)
    kv = session.get(KV, RR_KEY, with_for_update=session.get_bind().dialect.name == "postgresql")
    owner = _owner(session, customer.id)
    try:
        choice = choose_salesperson(owner, team, (kv.value if kv else {}) or {}, cfg.fallback_userid)
    except NoSalespersonError:
        return [RecordTimeline(customer.external_userid, "lead_unrouted", now, source="scoring",
                               detail={"reason": "没有可分配的销售（无在岗销售且未配置兜底）"},
                               dedupe_key=f"lead_unrouted:{customer.id}:{now.isoformat()}")]
    if kv is None:
        kv = KV(key=RR_KEY, value={})
        session.add(kv)
    kv.value = dict(choice.new_rr_state)
    row = LeadAssignment(customer_id=customer.id, external_userid=customer.external_userid, userid=choice.userid,
                         reason=choice.reason, over_capacity=choice.over_capacity, status="pending",
                         assigned_at=now, accept_by=_deadline(now, cfg, sales), previous_id=previous_id)
    session.add(row)
    session.flush()
    tz_deadline = row.accept_by.astimezone(_zone(sales))
    name = customer.name or customer.external_userid
    card = {"title": f"新的销售线索：{name}"[:128],
            "description": (f'<div class="highlight">评分 {customer.score:.0f} 分，已进入 SQL</div>'
                            f'<div class="normal">请在 {tz_deadline:%m-%d %H:%M} 前接受'
                            f'（分配原因：{_REASON_CN.get(choice.reason, choice.reason)}）</div>')[:512],
            "url": f"{_public_url()}/sidebar/", "btntxt": "查看客户"}
    return [
        RecordTimeline(customer.external_userid, "lead_assigned", now, userid=choice.userid, source="scoring",
                       detail={"assignment_id": row.id, "userid": choice.userid, "reason": choice.reason,
                               "over_capacity": choice.over_capacity, "accept_by": row.accept_by.isoformat()},
                       dedupe_key=f"lead_assigned:{row.id}"),
        EnqueueCall(NOTIFY_KIND, {"userids": [choice.userid], "textcard": card, "assignment_id": row.id},
                    dedupe_key=f"{NOTIFY_KIND}:assigned:{row.id}", queue=NOTIFY_QUEUE),
    ]


_REASON_CN = {"owner": "客户的跟进人", "round robin": "轮转分配", "over capacity": "团队已满，负载最低",
              "fallback": "团队已满，兜底分配"}


def _zone(sales: SalesSettings) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(sales.timezone)


def _public_url() -> str:
    return (os.environ.get("SOPBOT_PUBLIC_URL") or "http://127.0.0.1:8080").rstrip("/")


def _record_touches(session: Session, batch: Sequence[tuple[int, Sequence[DomainEvent]]]) -> None:
    """An employee's message is the first touch of each open assignment it follows: the first such message in
    event order sets it. One read of the open assignments of the customers with any message, none without."""
    sent = {cid: ats for cid, events in batch if (ats := [e.at for e in events if e.kind == "message_sent"])}
    if not sent:
        return
    for row in _open_assignments(session, sent):
        at = next((at for at in sent[row.customer_id] if at >= row.assigned_at), None)
        if row.first_touch_at is None and at is not None:
            row.first_touch_at, row.first_touch_kind = at, "message"


def _assignment(session: Session, assignment_id: int) -> LeadAssignment:
    row = session.get(LeadAssignment, assignment_id)
    if row is None:
        raise LookupError(f"no assignment {assignment_id}")
    return row


def accept(session: Session, assignment_id: int, now: datetime, by: str | None = None) -> list[Action]:
    row = _assignment(session, assignment_id)
    if row.status != "pending":
        raise ScoringError(f"assignment is {row.status}, only a pending one can be accepted")
    row.status, row.accepted_at = "accepted", now
    if row.first_touch_at is None:
        row.first_touch_at, row.first_touch_kind = now, "accepted"
    return [RecordTimeline(row.external_userid, "lead_accepted", now, userid=by or row.userid, source="scoring",
                           detail={"assignment_id": row.id, "late": now > row.accept_by},
                           dedupe_key=f"lead_accepted:{row.id}")]


def reject(session: Session, assignment_id: int, reason: str, now: datetime, by: str | None = None,
           sales: SalesSettings | None = None) -> list[Action]:
    """The salesperson declines (with a reason): the lead is routed again, to someone else."""
    if not reason.strip():
        raise ScoringError("reason is required to reject a lead")
    row = _assignment(session, assignment_id)
    if row.status != "pending":
        raise ScoringError(f"assignment is {row.status}, only a pending one can be rejected")
    row.status, row.closed_at, row.close_reason = "rejected", now, reason
    rejected_by = set(session.scalars(select(LeadAssignment.userid).where(
        LeadAssignment.customer_id == row.customer_id, LeadAssignment.status == "rejected")))
    customer = session.get(Customer, row.customer_id)
    assert customer is not None  # noqa: S101 - assignments reference existing customers
    actions: list[Action] = [RecordTimeline(row.external_userid, "lead_rejected", now, userid=by or row.userid,
                                            source="scoring", detail={"assignment_id": row.id, "reason": reason},
                                            dedupe_key=f"lead_rejected:{row.id}")]
    return actions + route_lead(session, customer, now, sales, exclude=rejected_by, previous_id=row.id)


def recycle(session: Session, assignment_id: int, reason: str, now: datetime, by: str | None = None,
            sales: SalesSettings | None = None) -> list[Action]:
    """Back to nurturing: the assignment closes and the customer is demoted SQL -> engaged (logged)."""
    if not reason.strip():
        raise ScoringError("reason is required to recycle a lead")
    row = _assignment(session, assignment_id)
    if row.status not in ASSIGNMENT_OPEN:
        raise ScoringError(f"assignment is {row.status}; only an open one can be recycled")
    row.status, row.closed_at, row.close_reason = "recycled", now, reason
    customer = session.get(Customer, row.customer_id)
    assert customer is not None  # noqa: S101
    actions: list[Action] = []
    if Stage(customer.stage).rank > Stage.ENGAGED.rank and not Stage(customer.stage).terminal:
        actions += set_stage(session, customer, Stage.ENGAGED.value, f"退回培育：{reason}", by or row.userid, now,
                             sales)
    return actions


def escalate_due(session: Session, now: datetime, limit: int = 200,
                 sales: SalesSettings | None = None) -> tuple[int, list[Action]]:
    """Pending assignments past their accept-by deadline: escalate each once to the manager."""
    sales = sales or sales_settings()
    rows = list(session.scalars(select(LeadAssignment).where(
        LeadAssignment.status == "pending", LeadAssignment.escalated_at.is_(None), LeadAssignment.accept_by < now)
        .order_by(LeadAssignment.accept_by).limit(limit).with_for_update(skip_locked=True)))
    if not rows:
        return 0, []
    employees = {e.userid: e for e in session.scalars(select(Employee))}
    team = [Salesperson(e.userid, sales.capacity, 0, active=bool(e.active), manager=e.manager_userid)
            for e in employees.values()]
    actions: list[Action] = []
    tz = _zone(sales)
    for row in rows:
        task = LeadTask(str(row.customer_id), row.userid, row.reason, row.assigned_at, row.accept_by, row.accepted_at)
        if not should_escalate(task, now):
            continue
        target = escalation_target(row.userid, team)
        row.escalated_at, row.escalated_to = now, target
        actions.append(RecordTimeline(row.external_userid, "lead_escalated", now, userid=target, source="scoring",
                                      detail={"assignment_id": row.id, "assignee": row.userid, "manager": target,
                                              "accept_by": row.accept_by.isoformat()},
                                      dedupe_key=f"lead_escalated:{row.id}"))
        if target:
            who = employees[row.userid].name if row.userid in employees and employees[row.userid].name else row.userid
            card = {"title": f"线索超时未接受：{who}"[:128],
                    "description": (f'<div class="highlight">{who} 未在 {row.accept_by.astimezone(tz):%m-%d %H:%M} '
                                    f'前接受分配的 SQL 线索</div><div class="normal">请跟进或重新分配</div>')[:512],
                    "url": f"{_public_url()}/dashboard", "btntxt": "查看看板"}
            actions.append(EnqueueCall(NOTIFY_KIND, {"userids": [target], "textcard": card, "assignment_id": row.id},
                                       dedupe_key=f"{NOTIFY_KIND}:escalated:{row.id}", queue=NOTIFY_QUEUE))
    return len(rows), actions


def due_for_recompute(session: Session, now: datetime, limit: int) -> list[int]:
    return list(session.scalars(select(LeadState.customer_id).where(LeadState.recompute_at <= now)
                                .order_by(LeadState.recompute_at).limit(limit)))


def group_by_customer(events: Iterable[DomainEvent]) -> dict[int, list[DomainEvent]]:
    out: dict[int, list[DomainEvent]] = defaultdict(list)
    for e in events:
        out[e.customer_id].append(e)
    return out
