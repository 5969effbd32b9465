"""Admin API routes of the handover area under /api/v1 (documented in OPENAPI_PATHS)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError
from sqlalchemy import select

from bot import get_services
from bot.handover.models import Handover
from bot.handover.service import HandoverRequestError, describe, start_handover, summary, totals_for, validate_request
from bot.models import Outbox
from bot.queues import enqueue_outbox
from bot.web.api import ApiError, _cursor, _limit, _next_cursor, install_api_guards, parse_id
from bot.web.openapi import _DT, _NSTR, _PAGE_PARAMS, _STR, _json, _ok, _page

bp = Blueprint("api_handover", __name__, url_prefix="/api/v1")
install_api_guards(bp)

STATUSES = ("planning", "running", "done", "partial", "failed", "blocked")


@bp.post("/handovers")
def create_handover() -> ResponseReturnValue:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "send a JSON object")
    services = get_services()
    try:
        req = validate_request(body, source="api")
        with services.transaction() as session:
            handover_id, outbox_ids = start_handover(session, req, services.settings.extra,
                                                     idempotency_key=request.headers.get("Idempotency-Key"))
            queued = [(i, q) for i, q in session.execute(
                select(Outbox.id, Outbox.queue).where(Outbox.id.in_(outbox_ids)))]
            detail = describe(session, handover_id)
    except HandoverRequestError as exc:
        raise ApiError(400, str(exc)) from exc
    if queued:
        try:
            enqueue_outbox(services.redis, queued)
        except RedisError:
            pass  # the row is committed; the scheduler's sweeper enqueues it
    return jsonify(detail), 202


@bp.get("/handovers")
def list_handovers() -> ResponseReturnValue:
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(STATUSES)}")
    limit, after = _limit(), _cursor()
    with get_services().transaction() as session:
        stmt = select(Handover).order_by(Handover.id.desc()).limit(limit)
        if status:
            stmt = stmt.where(Handover.status == status)
        for field in ("from_userid", "to_userid"):
            if request.args.get(field):
                stmt = stmt.where(getattr(Handover, field) == request.args[field])
        if after is not None:
            stmt = stmt.where(Handover.id < after)
        rows = session.scalars(stmt).all()
        totals = totals_for(session, [r.id for r in rows])
        items = [summary(r, totals[r.id]) for r in rows]
    return jsonify(items=items, next_cursor=_next_cursor(rows[-1].id) if len(rows) == limit else None)


@bp.get("/handovers/<handover_id>")
def get_handover(handover_id: str) -> ResponseReturnValue:
    with get_services().transaction() as session:
        detail = describe(session, parse_id(handover_id, "handover"))
    if detail is None:
        raise ApiError(404, f"handover {handover_id} not found")
    return jsonify(detail)


_INT = {"type": "integer"}
HANDOVER = {"type": "object", "required": ["id", "kind", "from_userid", "to_userid", "status"], "properties": {
    "id": _INT, "kind": {"type": "string", "enum": ["onjob", "resigned"]}, "from_userid": _STR,
    "to_userid": _STR, "scope": _STR, "groups": _STR, "message": _NSTR, "initiator_userid": _NSTR,
    "source": _STR, "status": {"type": "string", "enum": list(STATUSES)}, "status_reason": _NSTR,
    "created_at": _DT, "planned_at": _DT, "finished_at": _DT, "next_poll_at": _DT, "polls": _INT,
    "brief_sent_at": _DT,
    "totals": {"type": "object", "additionalProperties": _INT,
               "description": "customers by status: pending, calling, started, waiting, done, refused, "
                              "taker_limit, no_record, failed, refused_local, unknown"}}}
ITEM = {"type": "object", "required": ["external_userid", "status"], "properties": {
    "external_userid": _STR, "batch": _INT, "status": _STR, "errcode": {"type": ["integer", "null"]},
    "wecom_status": {"type": ["integer", "null"]}, "reason": _NSTR, "called_at": _DT, "takeover_at": _DT,
    "finished_at": _DT, "work_moved": {"type": "boolean"}, "notified_at": _DT}}
DETAIL = {**HANDOVER, "properties": {
    **HANDOVER["properties"],  # type: ignore[dict-item]
    "group_totals": {"type": "object", "additionalProperties": _INT},
    "customers": {"type": "array", "items": ITEM},
    "groups_detail": {"type": "array", "items": {"type": "object", "properties": {
        "chat_id": _STR, "status": _STR, "errcode": {"type": ["integer", "null"]}, "reason": _NSTR}}}}}
CREATE = {"type": "object", "required": ["from_userid"], "properties": {
    "kind": {"type": "string", "enum": ["onjob", "resigned"], "default": "onjob"},
    "from_userid": _STR,
    "to_userid": {"type": "string", "description": "required for onjob; for resigned defaults to the successor "
                                                   "(SOPBOT_HANDOVER_SUCCESSOR, else the employee's manager)"},
    "customers": {"oneOf": [{"type": "string", "enum": ["all"]}, {"type": "array", "items": _STR, "minItems": 1}],
                  "default": "all"},
    "groups": {"oneOf": [{"type": "boolean"}, {"type": "string", "enum": ["all"]},
                         {"type": "array", "items": _STR}], "default": False},
    "message": {"type": "string", "maxLength": 200, "description": "transfer_success_msg (onjob only)"},
    "initiator_userid": {"type": "string", "description": "employee told by app message about refusals/failures"}}}

OPENAPI_PATHS: dict[str, Any] = {
    "/handovers": {
        "post": {
            "summary": "Start a customer handover (在职继承 / 离职继承), planned and run by background jobs",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "schema": _STR,
                            "description": "the same key returns the same handover instead of a second one"}],
            "requestBody": {"required": True, **_json(CREATE)},
            "responses": {"202": {"description": "accepted", **_json(DETAIL)},
                          **{k: v for k, v in _ok(DETAIL, 400).items() if k != "200"}},
        },
        "get": {
            "summary": "Handovers, newest first, with totals by status (cursor-paged)",
            "parameters": [*_PAGE_PARAMS,
                           {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
                           {"name": "from_userid", "in": "query", "schema": _STR},
                           {"name": "to_userid", "in": "query", "schema": _STR}],
            "responses": _ok(_page(HANDOVER), 400),
        },
    },
    "/handovers/{handover_id}": {
        "get": {
            "summary": "One handover: totals by status and every customer's outcome",
            "parameters": [{"name": "handover_id", "in": "path", "required": True, "schema": _INT}],
            "responses": _ok(DETAIL, 404),
        },
    },
}
