"""rq jobs and outbox executors of the handover area (registered with `jobs.wecom_calls.executor`).

Flow of one handover (see docs/HANDOVER.md):
  handover_plan         who exactly: the employee's customers (externalcontact/list, or get_unassigned_list for a
                        departed one) and group chats (groupchat/list) -> items in batches of 100
  handover_batch        claim the batch's customers (committed) -> transfer_customer / resigned/transfer_customer
                        -> record each customer's errcode; a re-run finds them claimed and never calls again
  handover_group_batch  the same for groupchat/onjob_transfer / groupchat/transfer
  tick -> handover_poll transfer_result (cursor-paged) until every customer is final; transfer_fail callbacks
                        reconcile the same items (bot/handover/apply_handover.py)
  handover_notify       one app message to the initiator listing the customers that were not transferred
  handover_brief        one textcard to the new owner linking to /sidebar/handover/<id>
The tick also starts a resigned handover to the successor for every employee who left (delete_user).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select

from bot.actions import Action
from bot.apply import apply
from bot.handover.apply_handover import (
    ClaimBatch,
    CreateHandover,
    MarkBriefSent,
    MarkNotified,
    RecordBatchResult,
    RecordGroupResult,
    RecordTransferResults,
    ReleaseClaim,
    SchedulePoll,
)
from bot.handover.models import ITEM_FAILED, Handover, HandoverGroup, HandoverItem
from bot.handover.service import brief_token, resolve_successor
from bot.models import Customer, Employee
from bot.queues import enqueue_outbox
from bot.services import Services
from bot.wecom.client import WeComError, WeComTransientError
from jobs.executors import _call
from jobs.wecom_calls import GiveUp, Outbox, Outcome, Retry, executor

log = logging.getLogger("sopbot.jobs.handover")

__all__ = ["tick", "RESIGNED_LOOKBACK"]

# WeCom only lets a departed member's customers be assigned within a year of leaving.
RESIGNED_LOOKBACK = timedelta(days=365)

KIND_TEXT = {"onjob": "在职继承", "resigned": "离职继承"}
STATUS_TEXT = {"refused": "客户拒绝", "taker_limit": "接替成员客户数已达上限", "no_record": "无接替记录",
               "failed": "企业微信拒绝", "refused_local": "未发起（不满足转接规则）", "unknown": "结果未知"}


def _run_apply(services: Services, actions: list[Action], context_key: str) -> None:
    """Write through bot.apply in its own transaction (never nested), enqueueing what it created."""
    with services.transaction() as session:
        ids = apply(actions, session, context_key=context_key)
        rows = [(i, q) for i, q in session.execute(select(Outbox.id, Outbox.queue).where(Outbox.id.in_(ids)))]
    _enqueue(services, rows)


def _enqueue(services: Services, rows: list[tuple[int, str]]) -> None:
    if not rows:
        return
    try:
        enqueue_outbox(services.redis, rows)
    except RedisError:
        log.warning("handover enqueue failed; left for the sweeper")


def _load(services: Services, handover_id: int) -> Handover:
    with services.transaction() as session:
        h = session.get(Handover, handover_id)
        if h is None:
            raise GiveUp(f"handover {handover_id} does not exist")
        session.expunge(h)
    return h


# -- planning -------------------------------------------------------------------------------------------
@executor("handover_plan")
def handover_plan(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    from bot.handover.apply_handover import PlanHandover

    h = _load(services, int(payload["handover_id"]))
    if h.status != "planning":
        return Outcome(result={"skipped": f"status {h.status}"})
    wecom = services.wecom
    if h.scope == "list":
        customers = list(h.requested)
    elif h.kind == "resigned":
        # Only customers WeCom still lists as unassigned can be given away (already assigned ones answer 40097+).
        unassigned = _call(lambda: list(wecom.get_unassigned_list()))
        customers = [r["external_userid"] for r in unassigned if r.get("handover_userid") == h.from_userid]
    else:
        customers = _call(wecom.list_external_contacts, h.from_userid)
    if h.groups == "list":
        chats = list(h.requested_groups)
    elif h.groups == "all":
        chats = [g["chat_id"] for g in _call(lambda: list(wecom.groupchat_list(owner_userids=[h.from_userid])))]
    else:
        chats = []
    return Outcome([PlanHandover(h.id, tuple(customers), tuple(chats))],
                   {"customers": len(set(customers)), "groups": len(set(chats))})


# -- the transfer calls -------------------------------------------------------------------------------------
def _claimed(services: Services, model: Any, token: str) -> list[str]:
    column = model.chat_id if model is HandoverGroup else model.external_userid
    with services.transaction() as session:
        return list(session.scalars(select(column).where(model.claim_token == token, model.status == "calling")
                                    .order_by(column)).all())


@executor("handover_batch")
def handover_batch(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    """One transfer call for at most 100 customers, each claimed first so no customer is ever called twice."""
    h = _load(services, int(payload["handover_id"]))
    token = f"o{row.id}:{uuid.uuid4().hex[:16]}"
    _run_apply(services, [ClaimBatch(h.id, int(payload["batch_no"]), token)], f"outbox:{row.id}:claim:{token}")
    customers = _claimed(services, HandoverItem, token)
    if not customers:
        return Outcome(result={"called": 0})  # a re-run: everything was claimed (and called) before
    try:
        if h.kind == "resigned":
            errcodes = services.wecom.resigned_transfer_customer(h.from_userid, h.to_userid, customers)
        else:
            errcodes = services.wecom.transfer_customer(h.from_userid, h.to_userid, customers,
                                                        transfer_success_msg=h.message)
    except WeComError as exc:
        if exc.errcode is None:
            # No answer (network): WeCom may have started the transfers. They stay claimed (never re-called);
            # polling transfer_result finds those that started, the bound closes the rest as unknown.
            log.warning("handover batch answer lost; reconciled by polling", extra={"handover_id": h.id})
            return Outcome([RecordBatchResult(h.id, token, call_error="no answer")], {"called": len(customers),
                                                                                      "answer": "lost"})
        if isinstance(exc, WeComTransientError):
            _run_apply(services, [ReleaseClaim(token)], f"outbox:{row.id}:release:{token}")
            raise Retry(str(exc)) from exc
        return Outcome([RecordBatchResult(h.id, token, call_errcode=exc.errcode, call_error=exc.errmsg)],
                       {"called": len(customers), "errcode": exc.errcode})
    started = sum(1 for c in customers if errcodes.get(c) == 0)
    return Outcome([RecordBatchResult(h.id, token, errcodes=errcodes)],
                   {"called": len(customers), "started": started})


@executor("handover_group_batch")
def handover_group_batch(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    h = _load(services, int(payload["handover_id"]))
    token = f"g{row.id}:{uuid.uuid4().hex[:16]}"
    _run_apply(services, [ClaimBatch(h.id, int(payload["batch_no"]), token, groups=True)],
               f"outbox:{row.id}:claim:{token}")
    chats = _claimed(services, HandoverGroup, token)
    if not chats:
        return Outcome(result={"called": 0})
    call = services.wecom.groupchat_transfer if h.kind == "resigned" else services.wecom.groupchat_onjob_transfer
    try:
        failed = call(chats, h.to_userid)
    except WeComError as exc:
        if isinstance(exc, WeComTransientError) and exc.errcode is not None:
            _run_apply(services, [ReleaseClaim(token, groups=True)], f"outbox:{row.id}:release:{token}")
            raise Retry(str(exc)) from exc
        return Outcome([RecordGroupResult(h.id, token, call_errcode=exc.errcode if exc.errcode is not None else -1,
                                          call_error=exc.errmsg)], {"called": len(chats), "errcode": exc.errcode})
    failures = {str(f["chat_id"]): (int(f.get("errcode") or 0), str(f.get("errmsg") or "")) for f in failed}
    return Outcome([RecordGroupResult(h.id, token, failed=failures)],
                   {"called": len(chats), "failed": len(failures)})


# -- follow-through -----------------------------------------------------------------------------------------
def _ts(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), UTC) if value not in (None, "", 0, "0") else None
    except (TypeError, ValueError):
        return None


@executor("handover_poll")
def handover_poll(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    h = _load(services, int(payload["handover_id"]))
    if h.status != "running":
        return Outcome(result={"skipped": f"status {h.status}"})
    fetch = services.wecom.resigned_transfer_result if h.kind == "resigned" else services.wecom.transfer_result
    rows = _call(lambda: list(fetch(h.from_userid, h.to_userid)))
    # The pair's history may hold older transfers of the same customer: the last row is the latest.
    results = {str(r["external_userid"]): (int(r.get("status") or 0), _ts(r.get("takeover_time"))) for r in rows}
    now = datetime.fromisoformat(payload["now"]) if payload.get("now") else datetime.now(UTC)
    return Outcome([RecordTransferResults(h.id, results, now)], {"rows": len(rows)})


@executor("handover_notify")
def handover_notify(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    """Tell the initiator, in one message, which customers were not handed over and why."""
    with services.transaction() as session:
        h = session.get(Handover, int(payload["handover_id"]))
        if h is None or not h.initiator_userid:
            return Outcome(result={"skipped": "no initiator"})
        items = session.execute(select(HandoverItem.id, HandoverItem.external_userid, HandoverItem.status,
                                       HandoverItem.reason, Customer.name)
                                .outerjoin(Customer, Customer.external_userid == HandoverItem.external_userid)
                                .where(HandoverItem.handover_id == h.id, HandoverItem.status.in_(ITEM_FAILED),
                                       HandoverItem.notified_at.is_(None))
                                .order_by(HandoverItem.id)).all()
        initiator, kind, from_u, to_u, hid = h.initiator_userid, h.kind, h.from_userid, h.to_userid, h.id
    if not items:
        return Outcome(result={"skipped": "nothing new to tell"})
    lines = [f"· {name or ext}：{STATUS_TEXT.get(status, status)}" + (f"（{reason}）" if reason else "")
             for _id, ext, status, reason, name in items[:20]]
    more = f"\n…另有 {len(items) - 20} 位" if len(items) > 20 else ""
    text = (f"客户{KIND_TEXT.get(kind, '转接')}（#{hid}，{from_u} → {to_u}）：以下 {len(items)} 位客户未能转接，"
            f"仍由原负责人跟进：\n" + "\n".join(lines) + more)
    _call(services.wecom.send_app_message, [initiator], text=text)
    return Outcome([MarkNotified(tuple(i[0] for i in items), datetime.now(UTC))], {"told": len(items)})


@executor("handover_brief")
def handover_brief(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    """ONE textcard per handover to the new owner, linking to the brief page (signed, expiring link)."""
    with services.transaction() as session:
        h = session.get(Handover, int(payload["handover_id"]))
        if h is None:
            raise GiveUp("handover gone")
        if h.brief_sent_at is not None:
            return Outcome(result={"skipped": "already sent"})
        done = [n for n, in session.execute(
            select(Customer.name).select_from(HandoverItem)
            .outerjoin(Customer, Customer.external_userid == HandoverItem.external_userid)
            .where(HandoverItem.handover_id == h.id, HandoverItem.status == "done").order_by(HandoverItem.id))]
        groups = session.scalar(select(HandoverGroup.id).where(HandoverGroup.handover_id == h.id,
                                                               HandoverGroup.status == "done").limit(1))
        giver = session.get(Employee, h.from_userid)
        giver_name = (giver.name if giver else "") or h.from_userid
        hid, to_userid, kind = h.id, h.to_userid, h.kind
    token = brief_token(services.settings.secret_key, hid, to_userid)
    url = f"{services.settings.public_url}/sidebar/handover/{hid}?token={token}"
    names = "、".join(n or "客户" for n in done[:5]) + (" 等" if len(done) > 5 else "")
    description = (f"{giver_name} 的 {len(done)} 位客户已转给你（{KIND_TEXT.get(kind, '转接')}）"
                   + (f"：{names}" if done else "") + ("，以及客户群" if groups else "")
                   + "。点开查看客户资料、标签、最近互动和待办任务。")
    _call(services.wecom.send_app_message, [to_userid],
          textcard={"title": "客户交接简报", "description": description[:500], "url": url})
    return Outcome([MarkBriefSent(hid, datetime.now(UTC))], {"customers": len(done)})


# -- the tick ---------------------------------------------------------------------------------------------
def _auto_resigned(services: Services, now: datetime) -> list[tuple[int, str]]:
    """A departed employee (delete_user -> MarkEmployeeLeft) gets one resigned handover to the successor."""
    if services.settings.extra.get("SOPBOT_HANDOVER_AUTO", "1").strip().lower() in ("0", "false", "no", "off"):
        return []
    extra = services.settings.extra
    with services.transaction() as session:
        left = session.execute(select(Employee.userid, Employee.left_at).where(
            Employee.active.is_(False), Employee.left_at.is_not(None),
            Employee.left_at > now - RESIGNED_LOOKBACK)).all()
        actions: list[Action] = []
        for userid, left_at in left:
            assert left_at is not None  # noqa: S101 - filtered above
            key = f"delete_user:{userid}:{int(left_at.timestamp())}"
            if session.scalar(select(Handover.id).where(Handover.dedupe_key == key)) is not None:
                continue
            successor = resolve_successor(session, userid, extra)
            actions.append(CreateHandover(
                "resigned", userid, successor or "", key, customers=None, groups=None,
                initiator_userid=successor, source="delete_user",
                blocked_reason=None if successor else "未找到接替人：请配置 SOPBOT_HANDOVER_SUCCESSOR 或该成员的上级"))
            log.info("departed employee %s: resigned handover to %s", userid, successor or "(none)")
        if not actions:
            return []
        ids = apply(actions, session, now=now, context_key=f"handover:tick:{now.isoformat()}")
        return [(i, q) for i, q in session.execute(select(Outbox.id, Outbox.queue).where(Outbox.id.in_(ids)))]


def _due_polls(services: Services, now: datetime) -> list[tuple[int, str]]:
    with services.transaction() as session:
        due = session.execute(select(Handover.id, Handover.polls).where(
            Handover.status == "running", Handover.next_poll_at.is_not(None), Handover.next_poll_at <= now)
            .order_by(Handover.next_poll_at).limit(500)).all()
        if not due:
            return []
        ids = apply([SchedulePoll(hid, polls, now) for hid, polls in due], session, now=now,
                    context_key=f"handover:poll:{now.isoformat()}")
        return [(i, q) for i, q in session.execute(select(Outbox.id, Outbox.queue).where(Outbox.id.in_(ids)))]


def tick(services: Services, now: datetime) -> dict[str, int]:
    """Start handovers for departed employees; poll transfer results that are due."""
    started = _auto_resigned(services, now)
    _enqueue(services, started)
    polls = _due_polls(services, now)
    _enqueue(services, polls)
    return {"started": len(started), "polls": len(polls)}
