"""Admin API routes of the scoring area under /api/v1 (documented in OPENAPI_PATHS).

Score explanation, manual stage changes, SQL assignments (accept / reject / recycle) and the dashboard's
reports as JSON. Every write goes through the scoring service and `bot.apply` in one transaction.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from bot import get_services
from bot.apply import apply
from bot.dashboard import reports
from bot.db import utcnow
from bot.models import Customer
from bot.queues import enqueue_outbox
from bot.scoring import service
from bot.scoring.models import ASSIGNMENT_STATES, LeadAssignment
from bot.web.api import ApiError, install_api_guards, iso, json_body, parse_id
from bot.web.openapi import _DT, _NSTR, _STR, _json, _ok

log = logging.getLogger(__name__)

bp = Blueprint("api_scoring", __name__, url_prefix="/api/v1")
install_api_guards(bp)


def _now() -> datetime:
    """`now` is the server clock; tests may pin it with an ISO `now` query parameter (aware)."""
    raw = request.args.get("now")
    if not raw:
        return utcnow()
    value = datetime.fromisoformat(raw.replace(" ", "+"))  # an unescaped + arrives as a space
    if value.tzinfo is None:
        raise ApiError(400, "now must carry a UTC offset")
    return value


def _customer(session: Any, external_userid: str) -> Customer:
    customer = session.scalar(select(Customer).where(Customer.external_userid == external_userid))
    if customer is None:
        raise ApiError(404, f"no customer {external_userid}")
    return customer


def _enqueue(ids: list[int]) -> None:
    if not ids:
        return
    services = get_services()
    from bot.models import Outbox

    with services.transaction() as session:
        rows = session.execute(select(Outbox.id, Outbox.queue).where(Outbox.id.in_(ids))).all()
    try:
        enqueue_outbox(services.redis, [(i, q) for i, q in rows])
    except Exception:  # noqa: BLE001 - Redis away: the sweeper enqueues the rows later
        log.warning("scoring notifications not enqueued; the sweeper will", exc_info=True)


def assignment_json(row: LeadAssignment) -> dict[str, Any]:
    return {"id": row.id, "external_userid": row.external_userid, "userid": row.userid, "reason": row.reason,
            "over_capacity": row.over_capacity, "status": row.status, "assigned_at": iso(row.assigned_at),
            "accept_by": iso(row.accept_by), "accepted_at": iso(row.accepted_at),
            "escalated_at": iso(row.escalated_at), "escalated_to": row.escalated_to,
            "first_touch_at": iso(row.first_touch_at), "first_touch_kind": row.first_touch_kind,
            "closed_at": iso(row.closed_at), "close_reason": row.close_reason, "previous_id": row.previous_id}


@bp.get("/customers/<external_userid>/score")
def customer_score(external_userid: str) -> ResponseReturnValue:
    now = _now()
    with get_services().transaction() as session:
        return jsonify(service.explain_customer(session, _customer(session, external_userid), now))


@bp.post("/customers/<external_userid>/stage")
def customer_stage(external_userid: str) -> ResponseReturnValue:
    body, now = json_body(), _now()
    by = str(body.get("by") or "admin")
    with get_services().transaction() as session:
        customer = _customer(session, external_userid)
        try:
            actions = service.set_stage(session, customer, str(body.get("stage") or ""), str(body.get("reason") or ""),
                                        by, now)
        except service.ScoringError as exc:
            raise ApiError(409 if "already" in str(exc) else 400, str(exc)) from exc
        ids = apply(actions, session, now=now, context_key=f"api:stage:{customer.id}:{now.isoformat()}")
        result = {"external_userid": external_userid, "stage": customer.stage, "score": customer.score}
        assignment = session.scalar(select(LeadAssignment).where(LeadAssignment.customer_id == customer.id)
                                    .order_by(LeadAssignment.id.desc()).limit(1))
        result["assignment"] = assignment_json(assignment) if assignment else None
    _enqueue(ids)
    return jsonify(result)


@bp.get("/assignments")
def list_assignments() -> ResponseReturnValue:
    status = request.args.get("status")
    if status and status not in ASSIGNMENT_STATES:
        raise ApiError(400, f"status must be one of {', '.join(ASSIGNMENT_STATES)}")
    stmt = select(LeadAssignment).order_by(LeadAssignment.id.desc()).limit(200)
    if status:
        stmt = stmt.where(LeadAssignment.status == status)
    if request.args.get("userid"):
        stmt = stmt.where(LeadAssignment.userid == request.args["userid"])
    with get_services().transaction() as session:
        return jsonify(items=[assignment_json(r) for r in session.scalars(stmt)])


def _assignment_action(assignment_id: str, what: str) -> ResponseReturnValue:
    aid = parse_id(assignment_id, "assignment")
    body = request.get_json(silent=True) or {}
    if not isinstance(body, dict):
        raise ApiError(400, "send a JSON object")
    now = _now()
    by = str(body["by"]) if body.get("by") else None
    reason = str(body.get("reason") or "")
    with get_services().transaction() as session:
        try:
            if what == "accept":
                actions = service.accept(session, aid, now, by)
            elif what == "reject":
                actions = service.reject(session, aid, reason, now, by)
            else:
                actions = service.recycle(session, aid, reason, now, by)
        except LookupError as exc:
            raise ApiError(404, str(exc)) from exc
        except service.ScoringError as exc:
            raise ApiError(409 if "assignment is" in str(exc) else 400, str(exc)) from exc
        ids = apply(actions, session, now=now, context_key=f"api:assignment:{aid}:{what}")
        row = session.get(LeadAssignment, aid)
        assert row is not None  # noqa: S101
        result = assignment_json(row)
        if what == "reject":
            nxt = session.scalar(select(LeadAssignment).where(LeadAssignment.previous_id == aid))
            result["reassigned"] = assignment_json(nxt) if nxt else None
    _enqueue(ids)
    return jsonify(result)


@bp.post("/assignments/<assignment_id>/accept")
def accept_assignment(assignment_id: str) -> ResponseReturnValue:
    return _assignment_action(assignment_id, "accept")


@bp.post("/assignments/<assignment_id>/reject")
def reject_assignment(assignment_id: str) -> ResponseReturnValue:
    return _assignment_action(assignment_id, "reject")


@bp.post("/assignments/<assignment_id>/recycle")
def recycle_assignment(assignment_id: str) -> ResponseReturnValue:
    return _assignment_action(assignment_id, "recycle")


@bp.get("/reports/<name>")
def report(name: str) -> ResponseReturnValue:
    if name not in reports.REPORTS:
        raise ApiError(404, f"no report {name!r}; reports: {', '.join(reports.REPORTS)}")
    try:
        period = reports.parse_period(request.args.get("from"), request.args.get("to"), _now())
    except ValueError as exc:
        raise ApiError(400, f"from/to: {exc}") from exc
    with get_services().transaction() as session:
        return jsonify(reports.build(session, name, period).as_json(period))


# --------------------------------------------------------------------------------------------- OpenAPI

_NUM = {"type": "number"}
_NNUM = {"type": ["number", "null"]}
_INT = {"type": "integer"}
_REASON = {"type": "string", "minLength": 1, "pattern": "\\S"}
EXT = {"name": "external_userid", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
AID = {"name": "assignment_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}
NOW = {"name": "now", "in": "query", "schema": {"type": "string", "format": "date-time"},
       "description": "evaluate at this instant instead of the server clock (tests, replays)"}
ASSIGNMENT = {"type": "object", "required": ["id", "userid", "status", "assigned_at", "accept_by"], "properties": {
    "id": _INT, "external_userid": _STR, "userid": _STR, "reason": _STR, "over_capacity": {"type": "boolean"},
    "status": {"type": "string", "enum": list(ASSIGNMENT_STATES)}, "assigned_at": _DT, "accept_by": _DT,
    "accepted_at": _DT, "escalated_at": _DT, "escalated_to": _NSTR, "first_touch_at": _DT,
    "first_touch_kind": _NSTR, "closed_at": _DT, "close_reason": _NSTR, "previous_id": {"type": ["integer", "null"]}}}
SCORE = {"type": "object", "required": ["total", "fit", "engagement", "entries", "explanation"], "properties": {
    "external_userid": _STR, "stage": _STR, "stored_score": _NUM, "at": _DT, "total": _NUM, "fit": _NUM,
    "engagement": _NUM, "half_life_days": _NUM, "thresholds": {"type": "object"}, "armed": {"type": "object"},
    "entries": {"type": "array", "items": {"type": "object", "properties": {
        "rule_id": _STR, "rule": _STR, "event_id": _STR, "dimension": _STR, "points": _INT, "at": _DT,
        "value": _NUM, "decays": {"type": "boolean"}}}},
    "explanation": {"type": "array", "items": _STR}}}
STAGE_BODY = {"type": "object", "required": ["stage", "reason"], "properties": {
    "stage": {"type": "string", "enum": ["new", "engaged", "mql", "sql", "won", "lost"]}, "reason": _REASON,
    "by": {"type": "string", "description": "who asks (userid); default admin"}}}
REASON_BODY = {"type": "object", "properties": {"reason": _STR, "by": _STR}}
REASON_REQUIRED = {"type": "object", "required": ["reason"], "properties": {"reason": _REASON, "by": _STR}}
REPORT = {"type": "object", "required": ["name", "columns", "rows", "summary"], "properties": {
    "name": _STR, "title": _STR, "from": _DT, "to": _DT, "note": _STR, "summary": {"type": "object"},
    "columns": {"type": "array", "items": {"type": "object", "properties": {"key": _STR, "label": _STR}}},
    "rows": {"type": "array", "items": {"type": "object"}}}}


def _assignment_op(summary: str, body_required: bool) -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": [AID, NOW],
                     "requestBody": {"required": body_required,
                                     **_json(REASON_REQUIRED if body_required else REASON_BODY)},
                     "responses": _ok(ASSIGNMENT, 400, 404, 409)}}


OPENAPI_PATHS: dict[str, Any] = {
    "/customers/{external_userid}/score": {"get": {
        "summary": "The lead score explained: ledger entries with decayed values and Chinese lines (说明)",
        "parameters": [EXT, NOW], "responses": _ok(SCORE, 404)}},
    "/customers/{external_userid}/stage": {"post": {
        "summary": "Change the stage by hand (promotion, logged demotion, won/lost, reopen); into SQL routes the lead",
        "parameters": [EXT, NOW], "requestBody": {"required": True, **_json(STAGE_BODY)},
        "responses": _ok({"type": "object", "properties": {"stage": _STR, "score": _NNUM,
                                                           "assignment": {**ASSIGNMENT, "nullable": True}}},
                         400, 404, 409)}},
    "/assignments": {"get": {
        "summary": "SQL assignments, newest first (at most 200)",
        "parameters": [{"name": "status", "in": "query", "schema": {"type": "string", "enum": list(ASSIGNMENT_STATES)}},
                       {"name": "userid", "in": "query", "schema": _STR}],
        "responses": _ok({"type": "object", "properties": {"items": {"type": "array", "items": ASSIGNMENT}}}, 400)}},
    "/assignments/{assignment_id}/accept": _assignment_op("Accept a pending SQL (records time-to-first-touch)", False),
    "/assignments/{assignment_id}/reject": _assignment_op(
        "Reject a pending SQL with a reason; it is routed to another salesperson", True),
    "/assignments/{assignment_id}/recycle": _assignment_op(
        "Recycle to nurturing with a reason: closes the assignment, demotes SQL -> engaged (logged)", True),
    "/reports/{name}": {"get": {
        "summary": "A dashboard report as JSON: funnel, channels, sop_execution, sop_steps, keyword_hits, first_touch",
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string", "enum": list(reports.REPORTS)}},
                       {"name": "from", "in": "query", "schema": _STR,
                        "description": "YYYY-MM-DD (Asia/Shanghai) or ISO datetime; default 30 days before to"},
                       {"name": "to", "in": "query", "schema": _STR,
                        "description": "YYYY-MM-DD inclusive or ISO datetime; default now"}, NOW],
        "responses": _ok(REPORT, 400, 404)}},
}
