"""Handover services shared by the API, the CLI, the jobs and the brief page.

- `validate_request` / `start_handover`: one entry point for POST /api/v1/handovers and `sopbot handover start`;
- `resolve_successor`: who inherits a departed employee's customers (SOPBOT_HANDOVER_SUCCESSOR, else manager);
- `move_open_work` / `open_work`: adapters onto the SOP area (bot/sop/service.py) that degrade to no-ops
  while that module does not provide them yet;
- `describe` / `brief_rows`: read models for the API and the handover brief page;
- `brief_token` / `read_brief_token`: the signed, expiring link of the brief (until sidebar OAuth exists).
"""

from __future__ import annotations

import importlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.db import utcnow
from bot.models import Customer, CustomerTag, Employee, FollowRelation, TimelineEntry

log = logging.getLogger("sopbot.handover")

__all__ = [
    "HandoverRequestError", "HandoverRequest", "validate_request", "start_handover", "resolve_successor",
    "parse_successor_setting", "move_open_work", "open_work", "describe", "brief_rows", "brief_token",
    "read_brief_token", "BRIEF_MAX_AGE", "MAX_MESSAGE_CHARS",
]

MAX_MESSAGE_CHARS = 200  # transfer_success_msg limit (PROTOCOL.md §3.7)
BRIEF_MAX_AGE = 30 * 24 * 3600  # the brief link works for 30 days
_BRIEF_SALT = "sopbot.handover.brief"  # separates these signatures from other uses of the key


class HandoverRequestError(ValueError):
    """A request that cannot be started: the message is shown to the API caller / CLI user."""


@dataclass(frozen=True)
class HandoverRequest:
    kind: str
    from_userid: str
    to_userid: str
    customers: tuple[str, ...] | None  # None = all
    groups: tuple[str, ...] | None  # None = all the employee owns; () = none
    message: str | None
    initiator_userid: str | None
    source: str


def validate_request(body: Mapping[str, Any], *, source: str) -> HandoverRequest:
    kind = body.get("kind", "onjob")
    if kind not in ("onjob", "resigned"):
        raise HandoverRequestError("kind must be onjob or resigned")
    from_userid, to_userid = str(body.get("from_userid") or "").strip(), str(body.get("to_userid") or "").strip()
    if not from_userid:
        raise HandoverRequestError("from_userid is required")
    if not to_userid and kind == "onjob":
        raise HandoverRequestError("to_userid is required for an on-job handover")
    if from_userid == to_userid:
        raise HandoverRequestError("from_userid and to_userid must differ")
    raw_customers = body.get("customers", "all")
    customers: tuple[str, ...] | None
    if raw_customers == "all":
        customers = None
    elif isinstance(raw_customers, list) and raw_customers and all(isinstance(c, str) and c for c in raw_customers):
        customers = tuple(dict.fromkeys(raw_customers))
    else:
        raise HandoverRequestError('customers must be "all" or a non-empty list of external_userid')
    raw_groups = body.get("groups", False)
    groups: tuple[str, ...] | None
    if raw_groups is True or raw_groups == "all":
        groups = None
    elif raw_groups in (False, None, []):
        groups = ()
    elif isinstance(raw_groups, list) and all(isinstance(g, str) and g for g in raw_groups):
        groups = tuple(dict.fromkeys(raw_groups))
    else:
        raise HandoverRequestError('groups must be true/"all", false, or a list of chat_id')
    message = body.get("message")
    if message is not None:
        if not isinstance(message, str):
            raise HandoverRequestError("message must be a string")
        if kind == "resigned":
            raise HandoverRequestError("a resigned handover cannot carry a message (WeCom sends none)")
        if len(message) > MAX_MESSAGE_CHARS:
            raise HandoverRequestError(f"message is {len(message)} characters; WeCom takes at most "
                                       f"{MAX_MESSAGE_CHARS}")
    initiator = body.get("initiator_userid")
    if initiator is not None and not isinstance(initiator, str):
        raise HandoverRequestError("initiator_userid must be a string")
    return HandoverRequest(kind, from_userid, to_userid, customers, groups, message or None, initiator or None,
                           source)


def start_handover(session: Session, request: HandoverRequest, settings_extra: Mapping[str, str], *,
                   now: datetime | None = None, idempotency_key: str | None = None) -> tuple[int, list[int]]:
    """Record the handover and its planning job in the caller's transaction: (handover id, outbox ids)."""
    from bot.apply import apply
    from bot.handover.apply_handover import CreateHandover
    from bot.handover.models import Handover

    now = now or utcnow()
    to_userid = request.to_userid
    if not to_userid:
        to_userid = resolve_successor(session, request.from_userid, settings_extra) or ""
        if not to_userid:
            raise HandoverRequestError(f"no successor for {request.from_userid}: pass to_userid, or configure "
                                       "SOPBOT_HANDOVER_SUCCESSOR / the employee's manager")
    taker = session.get(Employee, to_userid)
    if taker is not None and not taker.active:
        raise HandoverRequestError(f"{to_userid} is not an active employee")
    giver = session.get(Employee, request.from_userid)
    if giver is not None and request.kind == "onjob" and not giver.active:
        raise HandoverRequestError(f"{request.from_userid} has left: use kind=resigned")
    key = f"{request.source}:{idempotency_key or uuid.uuid4().hex}"
    outbox_ids = apply([CreateHandover(
        request.kind, request.from_userid, to_userid, key, customers=request.customers, groups=request.groups,
        message=request.message, initiator_userid=request.initiator_userid, source=request.source,
    )], session, now=now, context_key=f"handover:{key}")
    handover_id = session.scalar(select(Handover.id).where(Handover.dedupe_key == key))
    assert handover_id is not None  # noqa: S101 - just inserted (or found by its idempotency key)
    return int(handover_id), outbox_ids


# -- successors ------------------------------------------------------------------------------------
def parse_successor_setting(raw: str | None) -> tuple[dict[str, str], str | None]:
    """`SOPBOT_HANDOVER_SUCCESSOR`: "WangFang:LiMing,ZhaoLei:ChenJing,*:LiMing" or just "LiMing" (a default).

    Returns (departed userid -> successor, default successor).
    """
    mapping: dict[str, str] = {}
    default: str | None = None
    for entry in (raw or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        left, sep, right = entry.replace("=", ":").partition(":")
        if not sep:
            default = left.strip()
        elif left.strip() == "*":
            default = right.strip() or None
        elif left.strip() and right.strip():
            mapping[left.strip()] = right.strip()
    return mapping, default


def resolve_successor(session: Session, departed_userid: str, settings_extra: Mapping[str, str]) -> str | None:
    """The configured mapping first, then the employee's manager, then the configured default."""
    mapping, default = parse_successor_setting(settings_extra.get("SOPBOT_HANDOVER_SUCCESSOR"))
    candidates = [mapping.get(departed_userid)]
    employee = session.get(Employee, departed_userid)
    candidates.append(employee.manager_userid if employee else None)
    candidates.append(default)
    for userid in candidates:
        if not userid or userid == departed_userid:
            continue
        row = session.get(Employee, userid)
        if row is None or row.active:
            return userid
    return None


# -- the SOP area's open work ------------------------------------------------------------------------
def _sop_service_function(name: str) -> Any:
    try:
        module = importlib.import_module("bot.sop.service")
    except ImportError:
        return None
    return getattr(module, name, None)


def move_open_work(session: Session, external_userid: str, from_userid: str, to_userid: str,
                   now: datetime) -> bool:
    """Open SOP enrollments, due tasks and reminders follow the customer to the new owner.

    The SOP area owns them (bot/sop/service.py `move_open_work`); until it provides that function this
    adapter logs and returns False, which the handover records per customer (`work_moved`).
    """
    fn = _sop_service_function("move_open_work")
    if fn is None:
        log.warning("bot.sop.service.move_open_work is not available; open SOP work stays with %s", from_userid,
                    extra={"external_userid": external_userid})
        return False
    fn(session, external_userid, from_userid, to_userid, now)
    return True


def open_work(session: Session, external_userid: str, userid: str) -> list[dict[str, Any]]:
    """Open SOP tasks of the customer owned by `userid`, for the brief: [{title, due_at}]."""
    try:
        from bot.sop.models import TASK_OPEN_STATES, SopTask
    except ImportError:  # the SOP area not built yet: the brief shows no tasks
        return []
    tasks = session.scalars(select(SopTask).where(
        SopTask.external_userid == external_userid, SopTask.owner_userid == userid,
        SopTask.state.in_(TASK_OPEN_STATES)).order_by(SopTask.due_at).limit(10)).all()
    return [{"title": f"{t.sop_id} · {t.step_id}", "due_at": t.due_at, "state": t.state} for t in tasks]


# -- read models ----------------------------------------------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def summary(h: Any, totals: Mapping[str, int] | None = None) -> dict[str, Any]:
    return {
        "id": h.id, "kind": h.kind, "from_userid": h.from_userid, "to_userid": h.to_userid, "scope": h.scope,
        "groups": h.groups, "message": h.message, "initiator_userid": h.initiator_userid, "source": h.source,
        "status": h.status, "status_reason": h.status_reason, "created_at": _iso(h.created_at),
        "planned_at": _iso(h.planned_at), "finished_at": _iso(h.finished_at),
        "next_poll_at": _iso(h.next_poll_at), "polls": h.polls, "brief_sent_at": _iso(h.brief_sent_at),
        **({"totals": dict(totals)} if totals is not None else {}),
    }


def totals_for(session: Session, handover_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    from bot.handover.models import HandoverItem

    out: dict[int, dict[str, int]] = {i: {} for i in handover_ids}
    if not handover_ids:
        return out
    for hid, status, n in session.execute(
            select(HandoverItem.handover_id, HandoverItem.status, func.count(HandoverItem.id))
            .where(HandoverItem.handover_id.in_(handover_ids))
            .group_by(HandoverItem.handover_id, HandoverItem.status)):
        out[hid][status] = int(n)
    return out


def describe(session: Session, handover_id: int) -> dict[str, Any] | None:
    from bot.handover.models import Handover, HandoverGroup, HandoverItem

    h = session.get(Handover, handover_id)
    if h is None:
        return None
    items = session.scalars(select(HandoverItem).where(HandoverItem.handover_id == h.id)
                            .order_by(HandoverItem.batch_no, HandoverItem.external_userid)).all()
    groups = session.scalars(select(HandoverGroup).where(HandoverGroup.handover_id == h.id)
                             .order_by(HandoverGroup.chat_id)).all()
    group_totals: dict[str, int] = {}
    for g in groups:
        group_totals[g.status] = group_totals.get(g.status, 0) + 1
    return {
        **summary(h, totals_for(session, [h.id])[h.id]),
        "group_totals": group_totals,
        "customers": [{
            "external_userid": i.external_userid, "batch": i.batch_no, "status": i.status, "errcode": i.errcode,
            "wecom_status": i.wecom_status, "reason": i.reason, "called_at": _iso(i.called_at),
            "takeover_at": _iso(i.takeover_at), "finished_at": _iso(i.finished_at), "work_moved": i.work_moved,
            "notified_at": _iso(i.notified_at),
        } for i in items],
        "groups_detail": [{"chat_id": g.chat_id, "status": g.status, "errcode": g.errcode, "reason": g.reason}
                          for g in groups],
    }


def brief_rows(session: Session, handover_id: int, timeline_limit: int = 5) -> list[dict[str, Any]]:
    """Per customer of the handover: profile, tags, last interactions, open tasks (the brief page)."""
    from bot.handover.models import Handover, HandoverItem

    h = session.get(Handover, handover_id)
    if h is None:
        return []
    items = session.scalars(select(HandoverItem).where(HandoverItem.handover_id == h.id)
                            .order_by(HandoverItem.external_userid)).all()
    rows = []
    for item in items:
        customer = session.scalar(select(Customer).where(Customer.external_userid == item.external_userid))
        tags: list[str] = []
        timeline: list[TimelineEntry] = []
        remark = None
        if customer is not None:
            tags = [f"{g}:{n}" for g, n in session.execute(
                select(CustomerTag.group_name, CustomerTag.name).where(
                    CustomerTag.customer_id == customer.id, CustomerTag.removed_at.is_(None))
                .order_by(CustomerTag.group_name, CustomerTag.name))]
            timeline = list(session.scalars(select(TimelineEntry).where(TimelineEntry.customer_id == customer.id)
                                            .order_by(TimelineEntry.at.desc(), TimelineEntry.id.desc())
                                            .limit(timeline_limit)).all())
            remark = session.scalar(select(FollowRelation.remark).where(
                FollowRelation.customer_id == customer.id,
                FollowRelation.userid.in_((h.from_userid, h.to_userid)), FollowRelation.remark.is_not(None))
                .limit(1))
        rows.append({
            "external_userid": item.external_userid, "status": item.status, "reason": item.reason,
            "name": (customer.name if customer else "") or remark or item.external_userid,
            "remark": remark, "corp_name": customer.corp_name if customer else None,
            "stage": customer.stage if customer else None, "tags": tags,
            "timeline": [{"kind": t.kind, "at": t.at, "detail": t.detail} for t in timeline],
            "tasks": open_work(session, item.external_userid, h.to_userid if item.status == "done"
                               else h.from_userid),
        })
    return rows


# -- the brief link ----------------------------------------------------------------------------------
def brief_token(secret_key: str, handover_id: int, userid: str) -> str:
    return URLSafeTimedSerializer(secret_key, salt=_BRIEF_SALT).dumps({"h": handover_id, "u": userid})


def read_brief_token(secret_key: str, token: str, handover_id: int,
                     max_age: int = BRIEF_MAX_AGE) -> str | None:
    """The userid the link was issued to, or None if the token is forged, expired or for another handover."""
    try:
        data = URLSafeTimedSerializer(secret_key, salt=_BRIEF_SALT).loads(token, max_age=max_age)
    except (SignatureExpired, BadSignature):
        return None
    if not isinstance(data, dict) or data.get("h") != handover_id:
        return None
    return str(data.get("u") or "") or None
