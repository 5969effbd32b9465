"""The SOP step report's rollup (`sop_step_outcomes`), kept exact incrementally inside the apply pipeline.

The report asks, per SOP step and A/B variant: of the steps done in the period, how many got a customer reply
(a `message_received` timeline entry) and how many an inquiry (a keyword rule scoring positive points in the
ledger) within 48 hours after the step was done. Asked per report over a million customers that is two index
probes per done step; here each fact is written once, when it happens:

- a `sop_step_done` timeline entry (written once per task by the SOP area's `close_task`) inserts the task's
  row and probes for a reply / inquiry already recorded in the window (late or back-dated events);
- a `message_received` entry sets `replied_at` on the customer's rows done within the 48 h before it;
- a positive `keyword_rule_fired` ledger row (bot/scoring/service.py) sets `inquired_at` the same way.

`replied_at` / `inquired_at` keep the earliest such time, so the order in which events arrive does not matter
and the report's numbers equal the probe query's (tests/scoring_service/test_outcomes.py compares both). Both
writers lock the customer's row first, so a step closed concurrently with that customer's message sees it.

Per batch: the subscriber's one action locks all the batch's customers in one statement and reads which of them
have any rollup row at all; both are remembered for the rest of the transaction (``_TxnMemo``). A customer with
no row cannot gain one in this transaction except through our own ``record_done`` (every writer locks the
customer first, and we hold that lock), so the reply/inquiry UPDATEs are skipped for them, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from bot.actions import Action
from bot.apply import ApplyContext, DomainEvent, executes, insert_ignore, subscribe
from bot.models import Customer, TimelineEntry
from bot.scoring.models import ScoreLedgerEntry, SopStepOutcome
from bot.sop.models import SopTask

__all__ = ["REPLY_WINDOW", "RecordBatchStepOutcomes", "RecordStepOutcomes", "mark_inquiry", "mark_reply", "prepare",
           "record_done"]

REPLY_WINDOW = timedelta(hours=48)
_KINDS = ("sop_step_done", "message_received")


@dataclass(frozen=True)
class RecordStepOutcomes(Action):
    customer_id: int
    events: tuple[DomainEvent, ...]


@dataclass(frozen=True)
class RecordBatchStepOutcomes(Action):
    """The subscriber's action for one round of events: every customer's RecordStepOutcomes, with their locks
    taken and their rollup rows probed once for the whole batch."""

    items: tuple[RecordStepOutcomes, ...]


@subscribe
def _on_events(ctx: ApplyContext, events: list[DomainEvent]) -> list[Action]:
    by_customer: dict[int, list[DomainEvent]] = {}
    for event in events:
        if event.kind in _KINDS:
            by_customer.setdefault(event.customer_id, []).append(event)
    if not by_customer:
        return []
    return [RecordBatchStepOutcomes(tuple(RecordStepOutcomes(cid, tuple(evs)) for cid, evs in by_customer.items()))]


@executes
def _(action: RecordBatchStepOutcomes, ctx: ApplyContext) -> None:
    prepare(ctx.session, [item.customer_id for item in action.items])
    for item in action.items:
        _apply_one(item, ctx)


@executes
def _apply_one(action: RecordStepOutcomes, ctx: ApplyContext) -> None:
    for event in action.events:
        if event.kind == "sop_step_done":
            record_done(ctx.session, action.customer_id, event.at)
        elif event.kind == "message_received":
            mark_reply(ctx.session, action.customer_id, event.at)


class _TxnMemo:
    """What this transaction knows about customers' rollup: whose row it locked, and who has no rollup row."""

    def __init__(self, transaction: object) -> None:
        self.transaction = transaction
        self.locked: set[int] = set()
        self.without_rows: set[int] = set()


def _memo(session: Session) -> _TxnMemo:
    transaction = session.get_transaction()
    memo: _TxnMemo | None = session.info.get("step_outcomes_memo")
    if memo is None or memo.transaction is not transaction:  # a new transaction knows nothing yet
        memo = session.info["step_outcomes_memo"] = _TxnMemo(transaction)
    return memo


def prepare(session: Session, customer_ids: list[int]) -> None:
    """Lock the customers' rows (one statement, in id order) and note which have no rollup row at all."""
    memo = _memo(session)
    todo = sorted(set(customer_ids) - memo.locked)
    if not todo:
        return
    session.execute(select(Customer.id).where(Customer.id.in_(todo)).order_by(Customer.id).with_for_update())
    memo.locked.update(todo)
    having = set(session.scalars(select(SopStepOutcome.customer_id).where(
        SopStepOutcome.customer_id.in_(todo)).distinct()))
    memo.without_rows.update(cid for cid in todo if cid not in having)


def _lock_customer(session: Session, customer_id: int) -> None:
    """Serialise this customer's rollup writes: a step closed while the customer's message is being processed
    elsewhere must not miss it on both sides (READ COMMITTED: the statements after the lock see the other
    transaction's rows). SQLite's BEGIN IMMEDIATE serialises writers already; FOR UPDATE is PostgreSQL's.
    Taken once per transaction (a row lock is held until the end of it)."""
    memo = _memo(session)
    if customer_id not in memo.locked:
        session.execute(select(Customer.id).where(Customer.id == customer_id).with_for_update())
        memo.locked.add(customer_id)


def record_done(session: Session, customer_id: int, at: datetime) -> int:
    """Rows for the customer's tasks done at `at`, with any reply / inquiry already in their window."""
    _lock_customer(session, customer_id)
    _memo(session).without_rows.discard(customer_id)  # it may gain rows now
    tasks = session.execute(select(SopTask.id, SopTask.sop_id, SopTask.step_id, SopTask.variant_id).where(
        SopTask.customer_id == customer_id, SopTask.state == "done", SopTask.completed_at == at)).all()
    if not tasks:
        return 0
    limit = at + REPLY_WINDOW
    replied = session.scalar(select(func.min(TimelineEntry.at)).where(
        TimelineEntry.customer_id == customer_id, TimelineEntry.kind == "message_received",
        TimelineEntry.at > at, TimelineEntry.at <= limit))
    inquired = session.scalar(select(func.min(ScoreLedgerEntry.at)).where(
        ScoreLedgerEntry.customer_id == customer_id, ScoreLedgerEntry.event_kind == "keyword_rule_fired",
        ScoreLedgerEntry.points > 0, ScoreLedgerEntry.at > at, ScoreLedgerEntry.at <= limit))
    inserted = 0
    for task_id, sop_id, step_id, variant_id in tasks:
        inserted += insert_ignore(session, SopStepOutcome.__table__,  # type: ignore[arg-type]
                                  {"task_id": task_id, "customer_id": customer_id, "sop_id": sop_id,
                                   "step_id": step_id, "variant_id": variant_id, "done_at": at,
                                   "replied_at": replied, "inquired_at": inquired}, ["task_id"])
    return inserted


def _mark(session: Session, customer_id: int, at: datetime, column: str) -> None:
    _lock_customer(session, customer_id)
    if customer_id in _memo(session).without_rows:
        return  # no rollup row to mark (locked: none can appear but through our own record_done)
    col = getattr(SopStepOutcome, column)
    session.execute(
        update(SopStepOutcome)
        .where(SopStepOutcome.customer_id == customer_id, SopStepOutcome.done_at < at,
               SopStepOutcome.done_at >= at - REPLY_WINDOW, or_(col.is_(None), col > at))
        .values({column: at})
        .execution_options(synchronize_session=False))


def mark_reply(session: Session, customer_id: int, at: datetime) -> None:
    """A customer message at `at` answers every step of theirs done in the 48 h before it."""
    _mark(session, customer_id, at, "replied_at")


def mark_inquiry(session: Session, customer_id: int, at: datetime) -> None:
    """A positive intent keyword at `at` counts as an inquiry for the steps done in the 48 h before it."""
    _mark(session, customer_id, at, "inquired_at")
