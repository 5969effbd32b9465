"""The SOP engine in the service: enrollments and tasks in the database, driven by domain events and the tick.

The pure engine (bot/sop/engine.py) decides; this module reads the state it needs, asks it, and writes the
result. Everything runs inside the caller's transaction (an apply round, an API request, a scheduler
batch) and returns the timeline actions to record, so the caller applies them in that same transaction.

- enrollment: on domain events (`handle_events`, subscribed in apply_sop.py) — a trigger SOP on its
  event, a filter SOP when an event may have moved the customer into its crowd. Never a crowd rebuild.
- tasks: the first step's task is written at enrollment, each next one when the previous comes due
  (`plan_next`), so deferrals carry over to "after the previous step" timing and an exit needs no cleanup.
- budget: every customer-facing task is checked against the per-customer frequency budget across all
  SOPs; a capped step is deferred, skipped or dropped (the SOP says which) and the reason is recorded on
  the task and the customer's timeline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, Signer
from sqlalchemy import BigInteger, Integer, String, Table, any_, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from bot.actions import Action, RecordTimeline
from bot.models import Customer, CustomerTag, Employee, FollowRelation
from bot.sop.definition import CUSTOMER_TOUCHPOINTS, SopDefinition, SopDefinitionError, load_sops
from bot.sop.engine import (
    CustomerView,
    EnrollmentRecord,
    FrequencyBudget,
    PreviewRow,
    Touch,
    TriggerEvent,
    check_exit,
    choose_variant,
    enrollment_seed,
    preview,
    should_enroll,
    step_executor,
)
from bot.sop.models import TASK_OPEN_STATES, SopEnrollment, SopTask, TrackedLink
from bot.sop.timing import due_at

log = logging.getLogger("sopbot.sop")

__all__ = [
    "Definitions", "content_root", "definitions", "budget_from_env", "customer_views", "handle_events", "enroll",
    "plan_next", "exit_enrollment", "close_task", "move_open_work", "preview_sop", "render_task", "sign_link",
    "unsign_link",
]

# Event kinds that may move a customer into a filter crowd (tags, stage, score, a new follow).
CROWD_EVENTS = frozenset({"customer_added", "tag_added", "tag_removed", "stage_changed", "stage_reached",
                          "score_changed"})
DELETE_EVENTS = frozenset({"customer_deleted_employee", "employee_deleted_customer"})
TOUCH_WINDOW = timedelta(days=32)  # the budget counts by day and by month: older touches never matter


# ------------------------------------------------------------------------------------ definitions


class Definitions:
    """SOP definitions read from the library, reloaded when a file changes (API edits apply at once)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._signature: tuple[tuple[str, int], ...] | None = None
        self._sops: dict[str, SopDefinition] = {}

    def _current_signature(self) -> tuple[tuple[str, int], ...]:
        if not self.directory.is_dir():
            return ()
        return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in self.directory.rglob("*.y*ml")))

    def get_all(self) -> dict[str, SopDefinition]:
        signature = self._current_signature()
        with self._lock:
            if signature != self._signature:
                try:
                    self._sops = load_sops(self.directory) if self.directory.is_dir() else {}
                except SopDefinitionError as exc:
                    # Keep running on the last valid set; `sopbot check` and the API show the problems.
                    log.error("SOP library has problems, keeping the previous definitions: %s", exc)
                self._signature = signature
            return dict(self._sops)


_DEFINITIONS: dict[str, Definitions] = {}


def content_root() -> Path:
    """The library the service runs on: SOPBOT_CONTENT_DIR, else the packaged scripts_library/content."""
    from scripts_library import CONTENT_ROOT

    return Path(os.environ.get("SOPBOT_CONTENT_DIR") or CONTENT_ROOT)


def sops_dir() -> Path:
    return content_root() / "sops"


def definitions(directory: Path | None = None) -> dict[str, SopDefinition]:
    directory = directory or sops_dir()
    key = str(directory)
    if key not in _DEFINITIONS:
        _DEFINITIONS[key] = Definitions(directory)
    return _DEFINITIONS[key].get_all()


def budget_from_env(env: Mapping[str, str] | None = None) -> FrequencyBudget:
    """WeCom's caps by default (mass sends: days-in-month per month; 1 touch per employee per customer per day).

    SOPBOT_SOP_MASS_SENDS_PER_MONTH, SOPBOT_SOP_TOUCHES_PER_DAY and SOPBOT_TIMEZONE change them.
    """
    env = os.environ if env is None else env
    monthly = env.get("SOPBOT_SOP_MASS_SENDS_PER_MONTH")
    return FrequencyBudget(
        mass_sends_per_month=int(monthly) if monthly else None,
        touches_per_employee_per_day=int(env.get("SOPBOT_SOP_TOUCHES_PER_DAY") or 1),
        timezone=env.get("SOPBOT_TIMEZONE") or "Asia/Shanghai",
    )


# ---------------------------------------------------------------------------------- customer views


@dataclass
class CustomerState:
    """What the engine needs about one customer, loaded in bulk; `view(owner)` per follow relation.

    `customer` and `follows` are plain rows (the columns below), not ORM objects: the tick builds one per
    claimed task, and identity-mapped instances cost several times the read itself. Nothing writes them.
    """

    customer: Any  # Row: id, external_userid, stage, score, custom_fields, lost_at
    tags: frozenset[str]
    follows: dict[str, Any]  # userid -> Row: id, userid, state, added_at, deleted_at, deleted_by

    def primary_owner(self) -> str | None:
        live = [f for f in self.follows.values() if f.deleted_at is None]
        if not live:
            return None
        return str(max(live, key=lambda f: (f.added_at is not None, f.added_at or f.id, f.id)).userid)

    def view(self, owner: str | None) -> CustomerView:
        c = self.customer
        follow = self.follows.get(owner or "") if owner else None
        # A transfer ends the old follow but the work moves with the customer (handover), it does not exit.
        deleted = c.lost_at is not None or (follow is not None and follow.deleted_at is not None
                                             and follow.deleted_by != "transfer")
        custom = c.custom_fields or {}
        return CustomerView(
            id=c.external_userid, tags=self.tags, stage=c.stage, channel=follow.state if follow else None,
            score=float(c.score or 0.0), added_at=follow.added_at if follow else None, owner=owner,
            deleted=deleted, timezone=str(custom["timezone"]) if custom.get("timezone") else None,
        )


_CUSTOMER_COLUMNS = (Customer.id, Customer.external_userid, Customer.stage, Customer.score, Customer.custom_fields,
                     Customer.lost_at)
_FOLLOW_COLUMNS = (FollowRelation.id, FollowRelation.customer_id, FollowRelation.userid, FollowRelation.state,
                   FollowRelation.added_at, FollowRelation.deleted_at, FollowRelation.deleted_by)
READ_CHUNK = 5000  # ids per IN list: well under SQLite's and psycopg's bind-parameter limits


def any_of(session: Session, column: Any, values: Sequence[Any]) -> Any:
    """`column IN values` for the bulk reads and writes of the tick.

    On PostgreSQL one array parameter (`= ANY(%s)`): an expanded IN of thousands of placeholders costs more
    to render and for psycopg to parse than the query takes to run. SQLite has no arrays: plain IN.
    """
    if session.get_bind().dialect.name == "postgresql":
        element = BigInteger() if isinstance(column.type, (Integer, BigInteger)) else String()
        return column == any_(bindparam(None, list(values), type_=ARRAY(element)))
    return column.in_(values)


def customer_views(session: Session, customer_ids: Iterable[int]) -> dict[int, CustomerState]:
    ids = sorted(set(customer_ids))
    out: dict[int, CustomerState] = {}
    for start in range(0, len(ids), READ_CHUNK):
        chunk = ids[start:start + READ_CHUNK]
        customers = {c.id: c for c in session.execute(select(*_CUSTOMER_COLUMNS).where(
            any_of(session, Customer.id, chunk)))}
        tags: dict[int, set[str]] = defaultdict(set)
        for cid, group, name in session.execute(
                select(CustomerTag.customer_id, CustomerTag.group_name, CustomerTag.name)
                .where(any_of(session, CustomerTag.customer_id, chunk), CustomerTag.removed_at.is_(None))):
            tags[cid].add(f"{group}:{name}")
        follows: dict[int, dict[str, Any]] = defaultdict(dict)
        for f in session.execute(select(*_FOLLOW_COLUMNS).where(any_of(session, FollowRelation.customer_id, chunk))):
            follows[f.customer_id][f.userid] = f
        for cid, customer in customers.items():
            out[cid] = CustomerState(customer, frozenset(tags[cid]), follows[cid])
    return out


# ------------------------------------------------------------------------------------------ touches


def touches_for(session: Session, customer_ids: Iterable[int], now: datetime) -> dict[int, list[Touch]]:
    """Customer-facing tasks sent or scheduled (not skipped) around now: what the budget counts."""
    out: dict[int, list[Touch]] = defaultdict(list)
    ids = sorted(set(customer_ids))
    for start in range(0, len(ids), READ_CHUNK):
        rows = session.execute(select(
            SopTask.customer_id, SopTask.external_userid, SopTask.owner_userid, SopTask.touchpoint, SopTask.due_at,
            SopTask.sop_id, SopTask.step_id,
        ).where(any_of(session, SopTask.customer_id, ids[start:start + READ_CHUNK]), SopTask.state != "skipped",
                SopTask.touchpoint.in_(tuple(CUSTOMER_TOUCHPOINTS)), SopTask.due_at >= now - TOUCH_WINDOW))
        for cid, ext, owner, touchpoint, at, sop_id, step_id in rows:
            out[cid].append(Touch(ext, owner, touchpoint, at, sop_id, step_id))
    return out


# ------------------------------------------------------------------------------------------ timeline


def _timeline(ext: str, kind: str, at: datetime, detail: dict[str, Any], key: str,
              userid: str | None = None) -> RecordTimeline:
    return RecordTimeline(ext, kind, at, detail=detail, userid=userid, source="sop", dedupe_key=key)


# ---------------------------------------------------------------------------------------- planning


@dataclass
class EnrollmentRow:
    """An enrollment read as a plain row, for the tick's bulk path (same attribute names as SopEnrollment).

    Planning and exits may change state/exited_at/exit_reason; the caller writes changed rows back in bulk
    (`changed()` tells which), so a batch of thousands costs one executemany instead of a unit-of-work flush.
    """

    id: int
    sop_id: str
    customer_id: int
    external_userid: str
    rotation: int
    owner_userid: str | None
    started_at: datetime
    state: str
    last_reply_at: datetime | None
    exited_at: datetime | None = None
    exit_reason: str | None = None

    def __post_init__(self) -> None:
        self._loaded = (self.state, self.exited_at, self.exit_reason)

    def changed(self) -> bool:
        return (self.state, self.exited_at, self.exit_reason) != self._loaded


EnrollmentLike = SopEnrollment | EnrollmentRow

_ENROLLMENT_COLUMNS = (SopEnrollment.id, SopEnrollment.sop_id, SopEnrollment.customer_id,
                       SopEnrollment.external_userid, SopEnrollment.rotation, SopEnrollment.owner_userid,
                       SopEnrollment.started_at, SopEnrollment.state, SopEnrollment.last_reply_at,
                       SopEnrollment.exited_at, SopEnrollment.exit_reason)


def enrollment_rows(session: Session, ids: Iterable[int]) -> dict[int, EnrollmentRow]:
    ordered = sorted(set(ids))
    out: dict[int, EnrollmentRow] = {}
    for start in range(0, len(ordered), READ_CHUNK):
        for row in session.execute(select(*_ENROLLMENT_COLUMNS).where(
                any_of(session, SopEnrollment.id, ordered[start:start + READ_CHUNK]))):
            out[row.id] = EnrollmentRow(*row)
    return out


def save_enrollment_rows(session: Session, rows: Iterable[EnrollmentRow], now: datetime) -> int:
    """Write back the enrollments planning or an exit changed (one executemany)."""
    changed = [{"_id": e.id, "_state": e.state, "_exited_at": e.exited_at, "_exit_reason": e.exit_reason,
                "_updated_at": now} for e in rows if e.changed()]
    if changed:
        session.execute(update(SopEnrollment.__table__).where(  # type: ignore[arg-type]
            SopEnrollment.__table__.c.id == bindparam("_id")).values(
            state=bindparam("_state"), exited_at=bindparam("_exited_at"), exit_reason=bindparam("_exit_reason"),
            updated_at=bindparam("_updated_at")), changed)
    return len(changed)


DueKey = tuple[str, int, datetime, datetime | None, str | None]


@dataclass
class PlanContext:
    """What planning a step needs beyond the enrollment: the budget, the touches known so far, the clock.

    `due_times` memoises `due_at` per (sop, step, start, previous due, customer zone): a tick plans the
    same step for whole cohorts that enrolled together, and the calendar walk is the costly part.
    """

    budget: FrequencyBudget
    touches: dict[int, list[Touch]]
    now: datetime
    roles: Mapping[str, Sequence[str]] | None = None
    due_times: dict[DueKey, datetime] = field(default_factory=dict)

    def due(self, sop: SopDefinition, index: int, started_at: datetime, previous_due: datetime | None,
            customer_tz: str | None) -> datetime:
        key = (sop.id, index, started_at, previous_due, customer_tz)
        found = self.due_times.get(key)
        if found is None:
            if len(self.due_times) > 100_000:  # bounded: a tick of scattered start times must not grow it
                self.due_times.clear()
            found = self.due_times[key] = due_at(sop.steps[index], started_at, previous_due, sop.calendar,
                                                 customer_tz)
        return found


def plan_next(session: Session, sop: SopDefinition, enrollment: EnrollmentLike, view: CustomerView,
              index: int, previous_due: datetime | None, plan: PlanContext) -> tuple[list[dict[str, Any]],
                                                                                    list[Action]]:
    """Rows of the task(s) for step ``index`` onward: normally one; a step skipped by the budget is written
    as skipped and the one after it planned too. Returns (task rows to insert, timeline actions)."""
    rows: list[dict[str, Any]] = []
    actions: list[Action] = []
    seed = enrollment_seed(sop.id, view.id, enrollment.rotation)
    touches = plan.touches.setdefault(enrollment.customer_id, [])
    while index < len(sop.steps):
        step = sop.steps[index]
        planned = plan.due(sop, index, enrollment.started_at, previous_due, view.timezone)
        variant = choose_variant(step, seed)
        executor = step_executor(sop, step, view, plan.roles) or enrollment.owner_userid
        row: dict[str, Any] = {
            "enrollment_id": enrollment.id, "sop_id": sop.id, "step_id": step.id, "step_index": index,
            "customer_id": enrollment.customer_id, "external_userid": enrollment.external_userid,
            "owner_userid": executor, "variant_id": variant.id if variant else None,
            "script_id": variant.script if variant else (step.content or ""), "touchpoint": step.touchpoint,
            "planned_at": planned, "due_at": planned, "state": "pending", "reason": None,
            "reminded_count": 0, "detail": {}, "created_at": plan.now,
        }
        verdict = plan.budget.decide(view.id, step.touchpoint, executor, planned, touches, sop.capped,
                                     sop.calendar, view.timezone)
        rows.append(row)
        if verdict.allowed:
            touches.append(Touch(view.id, executor, step.touchpoint, planned, sop.id, step.id))
            return rows, actions
        key = f"sop:{enrollment.id}:{step.id}"
        if verdict.action == "defer" and verdict.defer_until is not None:
            row["due_at"], row["reason"] = verdict.defer_until, f"频次上限，顺延：{verdict.reason}"
            touches.append(Touch(view.id, executor, step.touchpoint, verdict.defer_until, sop.id, step.id))
            actions.append(_timeline(enrollment.external_userid, "sop_step_deferred", plan.now, {
                "sop": sop.id, "step": step.id, "planned_at": planned.isoformat(),
                "due_at": verdict.defer_until.isoformat(), "reason": verdict.reason}, f"{key}:deferred", executor))
            return rows, actions
        row["state"], row["reason"] = "skipped", f"频次上限，跳过：{verdict.reason}"
        actions.append(_timeline(enrollment.external_userid, "sop_step_skipped", plan.now, {
            "sop": sop.id, "step": step.id, "reason": row["reason"]}, f"{key}:skipped", executor))
        if verdict.action == "drop":
            actions += _mark_exited(enrollment, f"capped (drop): {verdict.reason}", plan.now)
            return rows, actions
        previous_due = planned
        index += 1
    if rows and rows[-1]["state"] == "skipped":
        enrollment.state = "completed"  # the last step was capped away: nothing left to do
    return rows, actions


COPY_FROM = 200  # rows: below this an executemany is as quick and simpler to read in the logs


def bulk_insert(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows (same keys each) in the session's transaction.

    PostgreSQL: COPY FROM STDIN on the session's own connection. psycopg's executemany binds and sends
    each row separately, which cost the tick more than planning the rows did; COPY streams them in one go.
    Elsewhere (SQLite) a Core executemany, already a single prepared statement.
    """
    if not rows:
        return
    if session.get_bind().dialect.name != "postgresql" or len(rows) < COPY_FROM:
        session.execute(insert(table), rows)
        return
    columns = list(rows[0])
    driver = session.connection().connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(
            f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            # dicts/lists are the JSON columns (detail, payload): COPY takes their text form.
            copy.write_row([json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v
                            for v in (row[name] for name in columns)])


def insert_tasks(session: Session, rows: list[dict[str, Any]]) -> None:
    # Planning runs for every task the tick claims: no ORM unit of work, the bulk path.
    bulk_insert(session, SopTask.__table__, rows)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- enrollment


def _records(session: Session, customer_id: int,
             enrollments: Sequence[SopEnrollment] | None = None) -> list[EnrollmentRecord]:
    if enrollments is None:
        enrollments = session.scalars(select(SopEnrollment).where(SopEnrollment.customer_id == customer_id)).all()
    return [EnrollmentRecord(e.sop_id, e.external_userid, e.rotation, e.started_at,
                             e.exited_at if e.state != "active" else None, e.exit_reason)
            for e in enrollments]


def enrollments_of(session: Session, customer_ids: Iterable[int]) -> dict[int, list[SopEnrollment]]:
    """Every enrollment of each customer (all states), read in one query per chunk: what ``handle_events``
    needs per customer (the active ones for exits and replies, all of them for the re-entry rules)."""
    ids = sorted(set(customer_ids))
    out: dict[int, list[SopEnrollment]] = {cid: [] for cid in ids}
    for start in range(0, len(ids), READ_CHUNK):
        chunk = ids[start:start + READ_CHUNK]
        for e in session.scalars(select(SopEnrollment).where(any_of(session, SopEnrollment.customer_id, chunk))
                                 .order_by(SopEnrollment.id)):
            out[e.customer_id].append(e)
    return out


def enroll(session: Session, sop: SopDefinition, state: CustomerState, owner: str | None,
           trigger: TriggerEvent | None, at: datetime, plan: PlanContext,
           enrollments: list[SopEnrollment] | None = None) -> list[Action]:
    """Enroll if the engine says so (crowd/trigger, exit pre-check, uniqueness, re-entry); plan step one.

    ``enrollments``: the customer's enrollments as ``enrollments_of`` read them, when the caller has them
    (one query per batch instead of one per call); a new enrollment is appended to it."""
    from bot.apply import insert_ignore

    view = state.view(owner)
    decision = should_enroll(sop, view, trigger, _records(session, state.customer.id, enrollments), at)
    if not decision.enroll:
        return []
    inserted = insert_ignore(session, SopEnrollment.__table__, {  # type: ignore[arg-type]
        "sop_id": sop.id, "customer_id": state.customer.id, "external_userid": state.customer.external_userid,
        "rotation": decision.rotation, "owner_userid": owner, "started_at": at, "state": "active",
        "reason": decision.reason, "updated_at": plan.now,
    }, ["sop_id", "customer_id", "rotation"])
    if not inserted:
        return []  # a concurrent apply enrolled the same rotation first: the unique key decides
    enrollment = session.scalar(select(SopEnrollment).where(
        SopEnrollment.sop_id == sop.id, SopEnrollment.customer_id == state.customer.id,
        SopEnrollment.rotation == decision.rotation))
    assert enrollment is not None
    if enrollments is not None:
        enrollments.append(enrollment)
    if plan.touches.get(state.customer.id) is None:
        plan.touches.update(touches_for(session, [state.customer.id], plan.now))
    rows, actions = plan_next(session, sop, enrollment, view, 0, None, plan)
    insert_tasks(session, rows)
    actions.insert(0, _timeline(enrollment.external_userid, "sop_enrolled", at, {
        "sop": sop.id, "rotation": enrollment.rotation, "reason": decision.reason, "owner": owner,
        "first_step": rows[0]["step_id"] if rows else None,
        "first_due_at": rows[0]["due_at"].isoformat() if rows else None},
        f"sop:{enrollment.id}:enrolled", owner))
    return actions


def _mark_exited(enrollment: EnrollmentLike, reason: str, now: datetime) -> list[Action]:
    enrollment.state, enrollment.exited_at, enrollment.exit_reason = "exited", now, reason
    return [_timeline(enrollment.external_userid, "sop_exited", now, {"sop": enrollment.sop_id,
                      "rotation": enrollment.rotation, "reason": reason}, f"sop:{enrollment.id}:exited",
                      enrollment.owner_userid)]


def exit_enrollment(session: Session, enrollment: EnrollmentLike, reason: str, now: datetime) -> list[Action]:
    """End the enrollment; its open tasks become skipped with the exit as their reason."""
    if enrollment.state != "active":
        return []
    session.execute(update(SopTask).where(SopTask.enrollment_id == enrollment.id,
                                          SopTask.state.in_(TASK_OPEN_STATES))
                    .values(state="skipped", reason=f"退出：{reason}", claimed_by=None, claim_until=None,
                            completed_at=now))
    return _mark_exited(enrollment, reason, now)


def _trigger_event(kind: str, detail: Mapping[str, Any]) -> TriggerEvent | None:
    if kind == "customer_added":
        return TriggerEvent("customer_added", channel=detail.get("state") or None)
    if kind == "tag_added":
        return TriggerEvent("tag_added", tag=detail.get("tag"))
    if kind in ("stage_changed", "stage_reached"):
        return TriggerEvent("stage_reached", stage=detail.get("stage") or detail.get("to"))
    return None


def is_customer_reply(kind: str, detail: Mapping[str, Any]) -> bool:
    return kind == "message_received" and detail.get("direction", "customer") == "customer"


def handle_events(session: Session, events: Sequence[Any], now: datetime,
                  sops: Mapping[str, SopDefinition] | None = None,
                  budget: FrequencyBudget | None = None) -> list[Action]:
    """React to new domain events: record replies, re-check exits, enroll. Incremental: only the customers
    the events are about, only their own enrollments."""
    sops = definitions() if sops is None else sops
    plan = PlanContext(budget or budget_from_env(), {}, now)
    actions: list[Action] = []
    by_customer: dict[int, list[Any]] = defaultdict(list)
    for event in events:
        if not event.kind.startswith("sop_"):
            by_customer[event.customer_id].append(event)
    if not by_customer:
        return []
    # Every enrollment of the batch's customers in one read (was: one query for the active ones per customer
    # and one per enroll() call). Each customer's list is only touched by its own iteration below, and
    # enroll() appends what it creates, so every check sees what a query at that point would return.
    enrollments = enrollments_of(session, by_customer)
    # Views (customer, tags, follows) only of the customers something below can happen to: an active enrollment
    # (replies, exits) or an event that may enroll. Without either, the loop does nothing for a customer.
    states = customer_views(session, [
        cid for cid, evs in by_customer.items()
        if any(e.state == "active" for e in enrollments[cid])
        or any(e.kind in CROWD_EVENTS or _trigger_event(e.kind, e.detail) is not None for e in evs)])
    for customer_id, evs in by_customer.items():
        state = states.get(customer_id)
        if state is None:
            continue
        mine = enrollments[customer_id]
        actions += _replies_and_exits(session, sops, state, mine, evs, now)
        if state.customer.lost_at is not None:
            continue
        known = len(mine)  # enroll() appends what it creates
        for sop in sorted(sops.values(), key=lambda s: s.id):
            if sop.crowd.is_trigger:
                for event in evs:
                    trigger = _trigger_event(event.kind, event.detail)
                    if trigger is None:
                        continue
                    owner = event.userid if event.userid in state.follows else state.primary_owner()
                    actions += enroll(session, sop, state, owner, trigger, event.at, plan, mine)
            elif any(e.kind in CROWD_EVENTS for e in evs):
                actions += enroll(session, sop, state, state.primary_owner(), None, max(e.at for e in evs), plan,
                                  mine)
        # A reply later in this batch than an enrollment it created counts for it, as it would have had the
        # events come one at a time (an archive pull or a kf sync holds the add and the first reply together);
        # enroll() already checked the exits of what it created, so only a reply calls for another check.
        actions += _replies_and_exits(session, sops, state, mine[known:], evs, now, only_replied=True)
    return actions


def _replies_and_exits(session: Session, sops: Mapping[str, SopDefinition], state: CustomerState,
                       enrollments: Sequence[EnrollmentLike], events: Sequence[Any], now: datetime, *,
                       only_replied: bool = False) -> list[Action]:
    """Record the customer's replies among ``events`` on each active enrollment they came after, then re-check
    its exits (``only_replied``: only where a reply was recorded)."""
    replies = [e.at for e in events if is_customer_reply(e.kind, e.detail)]
    actions: list[Action] = []
    for enrollment in enrollments:
        if enrollment.state != "active":
            continue
        later = [at for at in replies if at > enrollment.started_at
                 and (enrollment.last_reply_at is None or at > enrollment.last_reply_at)]
        if later:
            enrollment.last_reply_at = max(later)
        sop = sops.get(enrollment.sop_id)
        if sop is None or (only_replied and not later):
            continue
        verdict = check_exit(sop, state.view(enrollment.owner_userid), enrollment.started_at,
                             enrollment.last_reply_at, now)
        if verdict.exit:
            actions += exit_enrollment(session, enrollment, verdict.reason, now)
    return actions


# ----------------------------------------------------------------------------------------- tasks


def close_task(session: Session, task: SopTask, state: str, *, reason: str | None, by: str | None,
               now: datetime) -> list[Action]:
    """done | skipped, from the sidebar, the API or WeCom's mass-send result. Closing the last step completes
    the enrollment. A closed task stays closed (the second click is a no-op)."""
    if state not in ("done", "skipped"):
        raise ValueError(f"a task is closed as done or skipped, not {state!r}")
    if task.state not in TASK_OPEN_STATES:
        return []
    task.state, task.reason, task.completed_at, task.completed_by = state, reason, now, by
    task.claimed_by = task.claim_until = None
    enrollment = session.get(SopEnrollment, task.enrollment_id)
    if enrollment is not None and enrollment.state == "active":
        sop = definitions().get(task.sop_id)
        last = sop is None or task.step_index >= len(sop.steps) - 1
        if last:
            enrollment.state = "completed"
    kind = "sop_step_done" if state == "done" else "sop_step_skipped"
    return [_timeline(task.external_userid, kind, now, {
        "sop": task.sop_id, "step": task.step_id, "variant": task.variant_id, "script": task.script_id,
        "touchpoint": task.touchpoint, "reason": reason, "by": by}, f"sop_task:{task.id}:{state}", by)]


def move_open_work(session: Session, external_userid: str, from_userid: str, to_userid: str,
                   now: datetime) -> int:
    """Handover: the customer's open enrollments and their open tasks move from one employee to another.

    Called by the handover area once WeCom reports the transfer done. Returns the tasks moved. The
    enrollments keep running (a handover is not an exit); the move is recorded on the timeline.
    """
    from bot.apply import apply

    enrollments = list(session.scalars(select(SopEnrollment).where(
        SopEnrollment.external_userid == external_userid, SopEnrollment.state == "active",
        SopEnrollment.owner_userid == from_userid)))
    for enrollment in enrollments:
        enrollment.owner_userid = to_userid
    moved = session.execute(update(SopTask).where(
        SopTask.external_userid == external_userid, SopTask.owner_userid == from_userid,
        SopTask.state.in_(TASK_OPEN_STATES)).values(owner_userid=to_userid))
    count = int(getattr(moved, "rowcount", 0) or 0)
    if enrollments or count:
        apply([_timeline(external_userid, "sop_work_moved", now, {
            "from": from_userid, "to": to_userid, "enrollments": [e.sop_id for e in enrollments],
            "tasks": count}, f"sop_moved:{external_userid}:{from_userid}:{to_userid}:{now.isoformat()}", to_userid)],
            session, now=now, context_key=f"sop_handover:{external_userid}")
    return count


# --------------------------------------------------------------------------------------- preview


def preview_sop(session: Session, sop: SopDefinition, now: datetime, days: int, *, limit: int = 500,
                budget: FrequencyBudget | None = None) -> list[PreviewRow]:
    """Dry run over current customers (one view per live follow relation's primary owner). Reads only."""
    ids = list(session.scalars(select(Customer.id).where(Customer.lost_at.is_(None)).order_by(Customer.id)
                               .limit(limit)))
    states = customer_views(session, ids)
    views = [s.view(s.primary_owner()) for s in states.values()]
    existing = [EnrollmentRecord(e.sop_id, e.external_userid, e.rotation, e.started_at,
                                 e.exited_at if e.state != "active" else None, e.exit_reason)
                for e in session.scalars(select(SopEnrollment).where(SopEnrollment.sop_id == sop.id,
                                                                     SopEnrollment.customer_id.in_(ids)))]
    touches = [t for ts in touches_for(session, ids, now).values() for t in ts]
    return preview(sop, views, now, days, existing=existing, budget=budget or budget_from_env(), touches=touches)


# ------------------------------------------------------------------------------------ tracked links


LINK_SALT = "sopbot.tracked-link"


def sign_link(secret: str, link_id: int) -> str:
    """Compact token: base-36 id + HMAC signature (itsdangerous, keyed by SOPBOT_SECRET_KEY)."""
    return Signer(secret, salt=LINK_SALT).sign(_b36(link_id)).decode()


def unsign_link(secret: str, token: str) -> int | None:
    try:
        raw = Signer(secret, salt=LINK_SALT).unsign(token.encode())
        return int(raw.decode(), 36)
    except (BadSignature, ValueError, UnicodeError):
        return None


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def tracked_url(session: Session, secret: str, public_url: str, *, customer_id: int, external_userid: str,
                userid: str, sop_id: str, script_id: str, step_id: str, url: str, title: str | None) -> str:
    from bot.apply import insert_ignore

    url_hash = hashlib.sha256(url.encode()).hexdigest()
    key = {"customer_id": customer_id, "userid": userid, "script_id": script_id, "step_id": step_id,
           "url_hash": url_hash}
    insert_ignore(session, TrackedLink.__table__, {  # type: ignore[arg-type]
        **key, "external_userid": external_userid, "sop_id": sop_id, "url": url, "title": (title or "")[:255]},
        list(key))
    link_id = session.scalar(select(TrackedLink.id).where(*(getattr(TrackedLink, k) == v for k, v in key.items())))
    assert link_id is not None
    return f"{public_url}/t/{sign_link(secret, link_id)}"


def render_task(session: Session, task: SopTask, *, secret: str, public_url: str, company: str,
                now: datetime, tz: Any) -> Any:
    """The task's script rendered for its customer, links rewritten to tracked links. RenderedScript."""
    from scripts_library import load_library
    from scripts_library.render import LinkContext, make_context, render_script

    script = load_library(content_root()).get(task.script_id)
    customer = session.get(Customer, task.customer_id)
    assert customer is not None
    owner = task.owner_userid or ""
    employee = session.get(Employee, owner) if owner else None
    remark = session.scalar(select(FollowRelation.remark).where(FollowRelation.customer_id == customer.id,
                                                                FollowRelation.userid == owner))
    tags = sorted(customer_views(session, [customer.id])[customer.id].tags)
    context = make_context(
        customer={"id": customer.external_userid, "name": customer.name or "您", "remark": remark or "",
                  "company": customer.corp_name or "", "gender": customer.gender or 0, "tags": tags,
                  "custom": dict(customer.custom_fields or {}), "stage": customer.stage,
                  "score": customer.score or 0},
        owner={"name": (employee.name if employee else "") or owner, "userid": owner},
        company={"name": company or "我们"}, now=now.astimezone(tz))

    def rewrite(url: str, ctx: LinkContext) -> str:
        return tracked_url(session, secret, public_url, customer_id=customer.id,
                           external_userid=customer.external_userid, userid=owner, sop_id=task.sop_id,
                           script_id=ctx.script_id, step_id=task.step_id, url=url, title=ctx.title)

    return render_script(script, context, rewrite)
