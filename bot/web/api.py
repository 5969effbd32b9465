"""Admin JSON API under /api/v1 (bearer SOPBOT_ADMIN_TOKEN), described by /api/v1/openapi.json."""

from __future__ import annotations

import base64
import hmac
import json
from datetime import datetime
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from bot import get_services
from bot.models import (
    CorpTag,
    Customer,
    CustomerTag,
    Employee,
    FollowRelation,
    GroupChat,
    GroupMember,
    InboxEvent,
    TimelineEntry,
)
from bot.web.openapi import openapi_document

api_bp = Blueprint("api_v1", __name__, url_prefix="/api/v1")

INBOX_STATUSES = ("pending", "retry", "done", "failed", "ignored")
MAX_LIMIT = 200


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


MAX_ID = 2**63 - 1  # BIGINT: a larger number names no row (and would overflow SQLite's INTEGER)


def parse_id(raw: str, what: str) -> int:
    """A row id from the URL, or 404 with a reason: ids are positive integers within BIGINT."""
    if not raw.isdigit() or not 0 < int(raw) <= MAX_ID:
        raise ApiError(404, f"no {what} {raw[:40]}")
    return int(raw)


def _api_error(exc: ApiError) -> ResponseReturnValue:
    return jsonify(error=exc.message), exc.status


def _http_error(exc: HTTPException) -> ResponseReturnValue:
    return jsonify(error=exc.description or exc.name), exc.code or 500


def _require_admin_token() -> ResponseReturnValue | None:
    if request.endpoint == "api_v1.openapi":
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    expected = get_services().settings.admin_token
    # Constant-time comparison: the token must not leak through response timing.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return jsonify(error="missing or wrong admin token (Authorization: Bearer <SOPBOT_ADMIN_TOKEN>)"), 401
    return None


def install_api_guards(bp: Blueprint) -> None:
    """Admin token, JSON errors: the same on every /api/v1 blueprint (areas add their own)."""
    bp.register_error_handler(ApiError, _api_error)
    bp.register_error_handler(HTTPException, _http_error)
    bp.before_request(_require_admin_token)


install_api_guards(api_bp)


@api_bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(openapi_document())


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def json_body() -> dict[str, Any]:
    """The request's JSON object, or 400: every write endpoint takes an object."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "send a JSON object")
    return data


def _limit() -> int:
    raw = request.args.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _cursor() -> int | None:
    raw = request.args.get("cursor")
    if not raw:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(raw.encode() + b"==").decode())
        return int(value["after"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "cursor is not one this API returned") from exc


def _next_cursor(last_id: int | None) -> str | None:
    if last_id is None:
        return None
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def _datetime_arg(name: str) -> datetime | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise ApiError(400, f"{name} must be an ISO 8601 datetime with a zone, e.g. 2026-01-01T00:00:00+08:00") \
            from exc
    if value.tzinfo is None:
        raise ApiError(400, f"{name} must carry a time zone offset")
    return value


@api_bp.get("/inbox")
def list_inbox() -> ResponseReturnValue:
    status = request.args.get("status")
    if status is not None and status not in INBOX_STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(INBOX_STATUSES)}")
    limit, after = _limit(), _cursor()
    with get_services().transaction() as session:
        stmt = select(InboxEvent).order_by(InboxEvent.id).limit(limit)
        if status:
            stmt = stmt.where(InboxEvent.status == status)
        if after is not None:
            stmt = stmt.where(InboxEvent.id > after)
        rows = session.scalars(stmt).all()
        items = [{
            "id": r.id, "event_key": r.event_key, "status": r.status, "attempts": r.attempts,
            "received_at": iso(r.received_at), "processed_at": iso(r.processed_at),
            "next_attempt_at": iso(r.next_attempt_at), "last_error": r.last_error, "payload": r.payload,
        } for r in rows]
    return jsonify(items=items, next_cursor=_next_cursor(rows[-1].id) if len(rows) == limit else None)


def customer_summary(session: Session, c: Customer) -> dict[str, Any]:
    follows = session.scalars(select(FollowRelation).where(FollowRelation.customer_id == c.id)
                              .order_by(FollowRelation.id)).all()
    return {
        "external_userid": c.external_userid, "name": c.name, "avatar": c.avatar, "type": c.type,
        "gender": c.gender, "corp_name": c.corp_name, "stage": c.stage, "score": c.score,
        "created_at": iso(c.created_at), "lost_at": iso(c.lost_at),
        "follow_users": [{
            "userid": f.userid, "state": f.state, "added_at": iso(f.added_at), "deleted_at": iso(f.deleted_at),
            "deleted_by": f.deleted_by, "remark": f.remark, "description": f.description, "add_way": f.add_way,
            "half_added": f.half_added,
        } for f in follows],
    }


def tags_of(session: Session, customer_id: int, include_removed: bool = False) -> list[dict[str, Any]]:
    stmt = select(CustomerTag).where(CustomerTag.customer_id == customer_id).order_by(CustomerTag.applied_at)
    if not include_removed:
        stmt = stmt.where(CustomerTag.removed_at.is_(None))
    return [{
        "group": t.group_name, "name": t.name, "tag_id": t.tag_id, "source": t.source,
        "reason": t.reason, "applied_at": iso(t.applied_at), "removed_at": iso(t.removed_at),
    } for t in session.scalars(stmt).all()]


def _get_customer(session: Session, external_userid: str) -> Customer:
    customer = session.scalar(select(Customer).where(Customer.external_userid == external_userid))
    if customer is None:
        raise ApiError(404, f"no customer with external_userid {external_userid!r}")
    return customer


@api_bp.get("/customers/<external_userid>")
def get_customer(external_userid: str) -> ResponseReturnValue:
    with get_services().transaction() as session:
        c = _get_customer(session, external_userid)
        body = customer_summary(session, c)
        body["profile"] = c.profile
        body["custom_fields"] = c.custom_fields
        body["tags"] = tags_of(session, c.id)
        timeline = session.scalars(select(TimelineEntry).where(TimelineEntry.customer_id == c.id)
                                   .order_by(TimelineEntry.at, TimelineEntry.id).limit(500)).all()
        body["timeline"] = [{"kind": t.kind, "at": iso(t.at), "source": t.source, "userid": t.userid,
                             "detail": t.detail} for t in timeline]
        groups = session.execute(
            select(GroupChat.chat_id, GroupChat.name).join(GroupMember, GroupMember.chat_id == GroupChat.chat_id)
            .where(GroupMember.member_id == external_userid, GroupMember.left_at.is_(None))
        ).all()
        body["groups"] = [{"chat_id": g, "name": n} for g, n in groups]
    return jsonify(body)


@api_bp.get("/customers")
def list_customers() -> ResponseReturnValue:
    """Filters: tag (group:name), owner (userid), stage, channel (state), q (name/remark), added_from/to."""
    limit, after = _limit(), _cursor()
    tag, owner, stage = request.args.get("tag"), request.args.get("owner"), request.args.get("stage")
    channel, text = request.args.get("channel"), (request.args.get("q") or "").strip()
    added_from, added_to = _datetime_arg("added_from"), _datetime_arg("added_to")
    stmt = select(Customer).order_by(Customer.id).limit(limit)
    if after is not None:
        stmt = stmt.where(Customer.id > after)
    if stage:
        stmt = stmt.where(Customer.stage == stage)
    if tag:
        group, sep, name = tag.partition(":")
        if not sep:
            raise ApiError(400, "tag must be written group:name")
        stmt = stmt.where(exists().where(and_(CustomerTag.customer_id == Customer.id, CustomerTag.group_name == group,
                                              CustomerTag.name == name, CustomerTag.removed_at.is_(None))))
    follow_conds = []
    if owner:
        follow_conds.append(and_(FollowRelation.userid == owner, FollowRelation.deleted_at.is_(None)))
    if channel:
        follow_conds.append(FollowRelation.state == channel)
    if added_from:
        follow_conds.append(FollowRelation.added_at >= added_from)
    if added_to:
        follow_conds.append(FollowRelation.added_at < added_to)
    if follow_conds:
        stmt = stmt.where(exists().where(and_(FollowRelation.customer_id == Customer.id, *follow_conds)))
    if text:
        pattern = f"%{text}%"
        stmt = stmt.where(or_(Customer.name.like(pattern), Customer.external_userid == text,
                              exists().where(and_(FollowRelation.customer_id == Customer.id,
                                                  FollowRelation.remark.like(pattern)))))
    with get_services().transaction() as session:
        rows = session.scalars(stmt).all()
        items = [customer_summary(session, c) | {"tags": tags_of(session, c.id)} for c in rows]
    return jsonify(items=items, next_cursor=_next_cursor(rows[-1].id) if len(rows) == limit else None)


@api_bp.get("/customers/<external_userid>/tags")
def customer_tags(external_userid: str) -> ResponseReturnValue:
    with get_services().transaction() as session:
        c = _get_customer(session, external_userid)
        return jsonify(items=tags_of(session, c.id, include_removed=request.args.get("all") == "1"))


@api_bp.get("/employees")
def list_employees() -> ResponseReturnValue:
    with get_services().transaction() as session:
        rows = session.scalars(select(Employee).order_by(Employee.userid)).all()
        items = [{"userid": e.userid, "name": e.name, "department_ids": e.department_ids, "active": e.active,
                  "manager_userid": e.manager_userid, "left_at": iso(e.left_at)} for e in rows]
    return jsonify(items=items)


@api_bp.get("/tags")
def list_tags() -> ResponseReturnValue:
    with get_services().transaction() as session:
        rows = session.scalars(select(CorpTag).where(CorpTag.deleted.is_(False))
                               .order_by(CorpTag.group_name, CorpTag.order.desc(), CorpTag.name)).all()
        groups: dict[str, dict[str, Any]] = {}
        for t in rows:
            group = groups.setdefault(t.group_id or t.id, {"group_id": t.group_id or t.id,
                                                           "group_name": t.group_name, "tags": []})
            if not t.is_group:
                group["tags"].append({"id": t.id, "name": t.name, "order": t.order})
    return jsonify(items=list(groups.values()))


@api_bp.get("/groups")
def list_groups() -> ResponseReturnValue:
    with get_services().transaction() as session:
        rows = session.scalars(select(GroupChat).order_by(GroupChat.chat_id)).all()
        items = []
        for g in rows:
            members = session.scalars(select(GroupMember).where(GroupMember.chat_id == g.chat_id,
                                                                GroupMember.left_at.is_(None))).all()
            items.append({"chat_id": g.chat_id, "name": g.name, "owner": g.owner, "notice": g.notice,
                          "dismissed_at": iso(g.dismissed_at), "member_count": len(members),
                          "members": [{"id": m.member_id, "type": m.member_type} for m in members]})
    return jsonify(items=items)
