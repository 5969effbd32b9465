"""Executors of the handover area's actions, registered on bot.apply with `@executes`.

Every state change of a handover goes through these (the outbox executors in jobs/handover.py and the
API only build actions). Each executor is idempotent: statuses only move forward, so re-applying the
same answer from WeCom, or a transfer_fail callback after the poll already saw the refusal, is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from bot.actions import Action, EndFollow, EnqueueCall, RecordTimeline, UpsertFollow, UpsertGroup
from bot.apply import ApplyContext, DomainEvent, executes, insert_ignore, subscribe
from bot.apply import _apply as apply_one  # the core dispatcher: nested core actions share this ctx
from bot.handover.models import (
    ITEM_COUNTED,
    ITEM_FAILED,
    ITEM_FINAL,
    ITEM_OPEN,
    Handover,
    HandoverGroup,
    HandoverItem,
)
from bot.handover.service import move_open_work

log = logging.getLogger("sopbot.handover")

BATCH_SIZE = 100  # WeCom takes at most 100 customers (and 100 group chats) per call
TRANSFER_WINDOW = timedelta(days=90)
TRANSFERS_PER_WINDOW = 2
FIRST_POLL_AFTER = timedelta(hours=1)  # catches refusals even if their transfer_fail callback is lost
MIN_POLL_INTERVAL = timedelta(minutes=10)
MAX_POLL_INTERVAL = timedelta(hours=6)
# WeCom completes a started transfer after 24 h; an item without a final answer this long after its
# call (unknown status value, no record for a call whose answer was lost) is closed as `unknown`.
MAX_WAIT = timedelta(days=3)
BULK = "bulk"

WECOM_STATUS = {1: "done", 2: "waiting", 3: "refused", 4: "taker_limit", 5: "no_record"}
FAIL_REASON = {"customer_refused": "refused", "customer_limit_exceed": "taker_limit"}
REASON_TEXT = {
    "refused": "客户拒绝了接替",
    "taker_limit": "接替成员的客户数已达上限",
    "no_record": "企业微信无此接替记录",
    "unknown": "超时未获得接替结果",
}


# -- actions -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateHandover(Action):
    """A new handover request; planning (who exactly, which groups) runs in the `handover_plan` job."""

    kind: str
    from_userid: str
    to_userid: str
    dedupe_key: str
    customers: tuple[str, ...] | None = None  # None = all of the employee's customers
    groups: tuple[str, ...] | None = ()  # () = none, None = all the employee owns, else these chat ids
    message: str | None = None
    initiator_userid: str | None = None
    source: str = "api"
    blocked_reason: str | None = None  # recorded but never started (e.g. no successor for a departed employee)


@dataclass(frozen=True)
class PlanHandover(Action):
    handover_id: int
    customers: tuple[str, ...]
    groups: tuple[str, ...]


@dataclass(frozen=True)
class ClaimBatch(Action):
    """Before the call: refuse locally what WeCom would refuse, claim the rest with `token`."""

    handover_id: int
    batch_no: int
    token: str
    groups: bool = False


@dataclass(frozen=True)
class ReleaseClaim(Action):
    """The call was not made (WeCom answered a transient error for the whole call): claimable again."""

    token: str
    groups: bool = False


@dataclass(frozen=True)
class RecordBatchResult(Action):
    """The call's answer: per customer errcode (0 = started), or one errcode for the whole call."""

    handover_id: int
    token: str
    errcodes: Mapping[str, int] = field(default_factory=dict)
    call_errcode: int | None = None
    call_error: str | None = None


@dataclass(frozen=True)
class RecordGroupResult(Action):
    handover_id: int
    token: str
    failed: Mapping[str, tuple[int, str]] = field(default_factory=dict)  # chat_id -> (errcode, errmsg)
    call_errcode: int | None = None
    call_error: str | None = None


@dataclass(frozen=True)
class SchedulePoll(Action):
    handover_id: int
    poll_no: int
    now: datetime


@dataclass(frozen=True)
class RecordTransferResults(Action):
    """transfer_result rows for the handover's (from, to) pair: external_userid -> (status, takeover_time)."""

    handover_id: int
    results: Mapping[str, tuple[int, datetime | None]]
    now: datetime


@dataclass(frozen=True)
class ReconcileTransferFail(Action):
    external_userid: str
    takeover_userid: str
    fail_reason: str
    at: datetime


@dataclass(frozen=True)
class MarkNotified(Action):
    item_ids: tuple[int, ...]
    at: datetime


@dataclass(frozen=True)
class MarkBriefSent(Action):
    handover_id: int
    at: datetime


# -- helpers ----------------------------------------------------------------------------------------
def _handover(ctx: ApplyContext, handover_id: int) -> Handover:
    row = ctx.session.get(Handover, handover_id)
    if row is None:
        raise LookupError(f"handover {handover_id} not found")
    return row


def _timeline(ctx: ApplyContext, h: Handover, item: HandoverItem, kind: str, at: datetime,
              **detail: Any) -> None:
    apply_one(RecordTimeline(
        item.external_userid, kind, at, userid=h.to_userid, source="sopbot",
        detail={"handover_id": h.id, "handover_kind": h.kind, "from_userid": h.from_userid,
                "to_userid": h.to_userid, **detail},
        dedupe_key=f"handover:{item.id}:{kind}",
    ), ctx)


def _enqueue(ctx: ApplyContext, kind: str, payload: Mapping[str, Any], dedupe_key: str, queue: str = BULK) -> None:
    apply_one(EnqueueCall(kind, payload, dedupe_key=dedupe_key, queue=queue), ctx)


def _notify_later(ctx: ApplyContext, h: Handover) -> None:
    """Failures are told to the initiator (one app message per apply, listing every untold customer)."""
    if h.initiator_userid:
        _enqueue(ctx, "handover_notify", {"handover_id": h.id},
                 f"handover_notify:{h.id}:{ctx.context_key}", queue="default")


def transfers_in_window(ctx: ApplyContext, external_userid: str, now: datetime, exclude_item: int) -> int:
    return int(ctx.session.scalar(select(func.count(HandoverItem.id)).where(
        HandoverItem.external_userid == external_userid, HandoverItem.id != exclude_item,
        HandoverItem.status.in_(ITEM_COUNTED), HandoverItem.called_at > now - TRANSFER_WINDOW)) or 0)


def _in_flight_elsewhere(ctx: ApplyContext, external_userid: str, item_id: int) -> bool:
    return ctx.session.scalar(select(HandoverItem.id).where(
        HandoverItem.external_userid == external_userid, HandoverItem.id != item_id,
        HandoverItem.status.in_(("calling", "started", "waiting"))).limit(1)) is not None


def _set_first_poll(h: Handover, now: datetime) -> None:
    first = now + FIRST_POLL_AFTER
    if h.next_poll_at is None or h.next_poll_at > first:
        h.next_poll_at = first


def _finish_item(ctx: ApplyContext, h: Handover, item: HandoverItem, status: str, at: datetime,
                 reason: str | None = None) -> None:
    """Move an open item to a final status, with its timeline entry and, when done, the customer's work."""
    if item.status in ITEM_FINAL:
        return
    item.status, item.finished_at = status, at
    item.reason = reason or item.reason or REASON_TEXT.get(status)
    if status == "done":
        taken = item.takeover_at or at
        # The DELETE_BY_TRANSFER / add_external_contact callbacks also arrive (resigned handovers send no
        # delete); writing ownership here too makes the outcome independent of their order or loss.
        apply_one(UpsertFollow(item.external_userid, h.to_userid, added_at=taken), ctx)
        apply_one(EndFollow(item.external_userid, h.from_userid, taken, by="transfer"), ctx)
        item.work_moved = move_open_work(ctx.session, item.external_userid, h.from_userid, h.to_userid, ctx.now)
        _timeline(ctx, h, item, "handover_done", taken, work_moved=item.work_moved)
    else:
        _timeline(ctx, h, item, "handover_failed" if status in ("failed", "unknown", "no_record")
                  else "handover_refused", at, status=status, reason=item.reason, errcode=item.errcode)


def _by_status(ctx: ApplyContext, model: Any, handover_id: int) -> dict[str, int]:
    rows = ctx.session.execute(select(model.status, func.count(model.id)).where(
        model.handover_id == handover_id).group_by(model.status)).all()
    return {str(status): int(n) for status, n in rows}


def _maybe_complete(ctx: ApplyContext, h: Handover) -> None:
    """When every customer and group is final: close the handover, send the new owner ONE brief."""
    if h.status != "running":
        return
    open_items = ctx.session.scalar(select(func.count(HandoverItem.id)).where(
        HandoverItem.handover_id == h.id, HandoverItem.status.in_(ITEM_OPEN))) or 0
    open_groups = ctx.session.scalar(select(func.count(HandoverGroup.id)).where(
        HandoverGroup.handover_id == h.id, HandoverGroup.status.in_(("pending", "calling")))) or 0
    if open_items or open_groups:
        return
    counts = _by_status(ctx, HandoverItem, h.id)
    groups = _by_status(ctx, HandoverGroup, h.id)
    done, failed = counts.get("done", 0) + groups.get("done", 0), sum(
        n for s, n in counts.items() if s in ITEM_FAILED) + groups.get("failed", 0)
    h.status = "done" if not failed else "partial" if done else "failed"
    h.finished_at, h.next_poll_at = ctx.now, None
    if counts.get("done", 0) or groups.get("done", 0):
        _enqueue(ctx, "handover_brief", {"handover_id": h.id}, f"handover_brief:{h.id}", queue="default")


# -- executors -----------------------------------------------------------------------------------------
@executes
def _(action: CreateHandover, ctx: ApplyContext) -> None:
    inserted = insert_ignore(ctx.session, Handover.__table__, {  # type: ignore[arg-type]
        "kind": action.kind, "from_userid": action.from_userid, "to_userid": action.to_userid,
        "scope": "all" if action.customers is None else "list", "requested": list(action.customers or ()),
        "groups": "all" if action.groups is None else "list" if action.groups else "none",
        "requested_groups": list(action.groups or ()), "message": action.message,
        "initiator_userid": action.initiator_userid, "source": action.source,
        "status": "blocked" if action.blocked_reason else "planning", "status_reason": action.blocked_reason,
        "dedupe_key": action.dedupe_key, "created_at": ctx.now, "updated_at": ctx.now, "polls": 0, "extra": {},
    }, ["dedupe_key"])
    if not inserted or action.blocked_reason:
        return
    handover_id = ctx.session.scalar(select(Handover.id).where(Handover.dedupe_key == action.dedupe_key))
    _enqueue(ctx, "handover_plan", {"handover_id": handover_id}, f"handover_plan:{handover_id}")


@executes
def _(action: PlanHandover, ctx: ApplyContext) -> None:
    h = _handover(ctx, action.handover_id)
    if h.status != "planning":
        return  # planned already (a re-run of the plan job)
    customers = sorted(set(action.customers))
    for index, ext in enumerate(customers):
        insert_ignore(ctx.session, HandoverItem.__table__, {  # type: ignore[arg-type]
            "handover_id": h.id, "external_userid": ext, "batch_no": index // BATCH_SIZE, "status": "pending",
            "work_moved": False}, ["handover_id", "external_userid"])
    chats = sorted(set(action.groups))
    for index, chat_id in enumerate(chats):
        insert_ignore(ctx.session, HandoverGroup.__table__, {  # type: ignore[arg-type]
            "handover_id": h.id, "chat_id": chat_id, "batch_no": index // BATCH_SIZE, "status": "pending"},
            ["handover_id", "chat_id"])
    h.status, h.planned_at = "running", ctx.now
    for batch in range((len(customers) + BATCH_SIZE - 1) // BATCH_SIZE):
        _enqueue(ctx, "handover_batch", {"handover_id": h.id, "batch_no": batch}, f"handover_batch:{h.id}:{batch}")
    for batch in range((len(chats) + BATCH_SIZE - 1) // BATCH_SIZE):
        _enqueue(ctx, "handover_group_batch", {"handover_id": h.id, "batch_no": batch},
                 f"handover_group_batch:{h.id}:{batch}")
    if not customers and not chats:
        h.status, h.status_reason, h.finished_at = "done", "没有需要转接的客户或客户群", ctx.now


@executes
def _(action: ClaimBatch, ctx: ApplyContext) -> None:
    h = _handover(ctx, action.handover_id)
    if action.groups:
        ctx.session.execute(update(HandoverGroup).where(
            HandoverGroup.handover_id == h.id, HandoverGroup.batch_no == action.batch_no,
            HandoverGroup.status == "pending").values(status="calling", claim_token=action.token, called_at=ctx.now))
        return
    items = ctx.session.scalars(select(HandoverItem).where(
        HandoverItem.handover_id == h.id, HandoverItem.batch_no == action.batch_no,
        HandoverItem.status == "pending").order_by(HandoverItem.id)).all()
    refused = False
    for item in items:
        if _in_flight_elsewhere(ctx, item.external_userid, item.id):
            reason = "该客户正在另一笔转接中"
        elif transfers_in_window(ctx, item.external_userid, ctx.now, item.id) >= TRANSFERS_PER_WINDOW:
            reason = "90天内已转接2次，企业微信不允许再次转接"
        else:
            item.status, item.claim_token, item.called_at = "calling", action.token, ctx.now
            continue
        _finish_item(ctx, h, item, "refused_local", ctx.now, reason)
        refused = True
    if refused:
        _notify_later(ctx, h)
        ctx.session.flush()
        _maybe_complete(ctx, h)


@executes
def _(action: ReleaseClaim, ctx: ApplyContext) -> None:
    model: Any = HandoverGroup if action.groups else HandoverItem
    ctx.session.execute(update(model).where(model.claim_token == action.token, model.status == "calling")
                        .values(status="pending", claim_token=None, called_at=None))


@executes
def _(action: RecordBatchResult, ctx: ApplyContext) -> None:
    h = _handover(ctx, action.handover_id)
    items = ctx.session.scalars(select(HandoverItem).where(
        HandoverItem.claim_token == action.token, HandoverItem.status == "calling")).all()
    failed = False
    if action.call_errcode is None and action.call_error is not None:
        items = []  # the answer was lost: the claimed customers stay `calling` until polling tells
    for item in items:
        code = action.errcodes.get(item.external_userid, action.call_errcode)
        if code is None:
            code = -2  # WeCom answered without this customer: it was not started
        if code == 0:
            item.status, item.errcode = "started", 0
            _timeline(ctx, h, item, "handover_started", item.called_at or ctx.now)
            continue
        item.errcode = code
        _finish_item(ctx, h, item, "failed", ctx.now, f"企业微信拒绝: errcode {code}" +
                     (f" ({action.call_error})" if action.call_error else ""))
        failed = True
    _set_first_poll(h, ctx.now)
    if failed:
        _notify_later(ctx, h)
    ctx.session.flush()
    _maybe_complete(ctx, h)


@executes
def _(action: RecordGroupResult, ctx: ApplyContext) -> None:
    h = _handover(ctx, action.handover_id)
    rows = ctx.session.scalars(select(HandoverGroup).where(
        HandoverGroup.claim_token == action.token, HandoverGroup.status == "calling")).all()
    for row in rows:
        failure = action.failed.get(row.chat_id)
        if action.call_errcode is not None:
            failure = (action.call_errcode, action.call_error or "")
        if failure is None:
            row.status = "done"
            apply_one(UpsertGroup(row.chat_id, {"owner": h.to_userid}), ctx)
        else:
            row.status, row.errcode, row.reason = "failed", failure[0], failure[1]
    ctx.session.flush()
    _maybe_complete(ctx, h)


@executes
def _(action: SchedulePoll, ctx: ApplyContext) -> None:
    h = _handover(ctx, action.handover_id)
    if h.status != "running" or h.polls != action.poll_no:
        return
    h.polls += 1
    # Until the poll answers, the tick must not enqueue another one; the poll sets the real next time.
    h.next_poll_at = action.now + MAX_POLL_INTERVAL
    _enqueue(ctx, "handover_poll", {"handover_id": h.id, "now": action.now.isoformat()},
             f"handover_poll:{h.id}:{action.poll_no}")


@executes
def _(action: RecordTransferResults, ctx: ApplyContext) -> None:
    h = _handover(ctx, action.handover_id)
    now = max(action.now, ctx.now)
    items = ctx.session.scalars(select(HandoverItem).where(
        HandoverItem.handover_id == h.id, HandoverItem.status.in_(("calling", "started", "waiting")))).all()
    waiting_until: list[datetime] = []
    failed = False
    for item in items:
        answer = action.results.get(item.external_userid)
        if answer is not None:
            status, takeover = answer
            item.wecom_status = status
            item.takeover_at = takeover or item.takeover_at
            final = WECOM_STATUS.get(status)
            if final == "waiting":
                item.status = "waiting"
                if takeover:
                    waiting_until.append(takeover)
                continue
            if final is not None:
                _finish_item(ctx, h, item, final, takeover if final == "done" and takeover else now)
                failed |= final != "done"
                continue
            log.warning("transfer_result status %s is not documented; still waiting", status,
                        extra={"handover_id": h.id, "external_userid": item.external_userid})
        if item.called_at is not None and now - item.called_at > MAX_WAIT:
            _finish_item(ctx, h, item, "unknown", now)
            failed = True
    if failed:
        _notify_later(ctx, h)
    soonest = min(waiting_until, default=now + FIRST_POLL_AFTER) + timedelta(minutes=1)
    h.next_poll_at = min(max(soonest, now + MIN_POLL_INTERVAL), now + MAX_POLL_INTERVAL)
    ctx.session.flush()
    _maybe_complete(ctx, h)


@executes
def _(action: ReconcileTransferFail, ctx: ApplyContext) -> None:
    status = FAIL_REASON.get(action.fail_reason, "refused")
    item = ctx.session.scalar(select(HandoverItem).join(Handover, Handover.id == HandoverItem.handover_id).where(
        HandoverItem.external_userid == action.external_userid, Handover.to_userid == action.takeover_userid,
        HandoverItem.status.in_(("calling", "started", "waiting"))).order_by(HandoverItem.id.desc()).limit(1))
    if item is None:
        return  # not ours (a handover made in the WeCom admin console) or already final
    h = _handover(ctx, item.handover_id)
    item.wecom_status = 3 if status == "refused" else 4
    _finish_item(ctx, h, item, status, action.at)
    _notify_later(ctx, h)
    ctx.session.flush()
    _maybe_complete(ctx, h)


@executes
def _(action: MarkNotified, ctx: ApplyContext) -> None:
    if action.item_ids:
        ctx.session.execute(update(HandoverItem).where(HandoverItem.id.in_(action.item_ids),
                                                       HandoverItem.notified_at.is_(None))
                            .values(notified_at=action.at))


@executes
def _(action: MarkBriefSent, ctx: ApplyContext) -> None:
    h = _handover(ctx, action.handover_id)
    h.brief_sent_at = h.brief_sent_at or action.at


@subscribe
def on_transfer_failed(ctx: ApplyContext, events: list[DomainEvent]) -> list[Action]:
    """transfer_fail callbacks (handlers/change_external_contact.py) reconcile the same records as polling."""
    return [ReconcileTransferFail(e.external_userid, str(e.detail.get("takeover_userid") or e.userid or ""),
                                  str(e.detail.get("fail_reason") or ""), e.at)
            for e in events if e.kind == "transfer_failed"]
