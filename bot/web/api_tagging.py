"""Admin API routes of the tagging area under /api/v1 (documented in OPENAPI_PATHS).

- ``/rules``: keyword and behaviour rules. File rules (scripts_library/content/rules/) are listed read-only;
  API rules are stored in the database. Every write bumps the rules version, so each process recompiles its
  matcher at its next message (no restart).
- ``/rules/test``: what a text would fire and why (or why not).
- ``/messages``: chat-archive records (WeCom's decrypted JSON) in; matched by a worker.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from bot import get_services
from bot.db import utcnow
from bot.tagging.model import KeywordRule
from bot.tagging.models import TaggingRule
from bot.tagging.rules import RuleError
from bot.tagging.service import bump_rules_version, file_rules, parse_api_rule, rule_listing, try_text
from bot.web.api import ApiError, install_api_guards

bp = Blueprint("api_tagging", __name__, url_prefix="/api/v1")
install_api_guards(bp)

MAX_MESSAGES_PER_POST = 1000
SOURCES = ("kf", "archive", "app")


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "body must be JSON")
    return body


def _validated(body: Any, rule_id: str | None = None) -> tuple[str, str, dict[str, Any]]:
    if not isinstance(body, dict):
        raise ApiError(400, "a rule is a JSON object (the rule file format, see docs/TAGGING.md)")
    definition = dict(body)
    if rule_id is not None:
        if definition.setdefault("id", rule_id) != rule_id:
            raise ApiError(400, f"id in the body ({definition['id']!r}) differs from the URL ({rule_id!r})")
    kind = definition.pop("rule_type", None)
    if kind not in (None, "keyword", "behaviour"):
        raise ApiError(400, "rule_type must be keyword or behaviour")
    try:
        rule = parse_api_rule(definition, kind)
    except RuleError as exc:
        raise ApiError(400, "; ".join(exc.errors)) from exc
    _files, origins = file_rules()
    if rule.id in origins:
        raise ApiError(409, f"rule {rule.id!r} is defined in {origins[rule.id]} (file rules are read-only)")
    return rule.id, "keyword" if isinstance(rule, KeywordRule) else "behaviour", definition


def _rule_body(row: TaggingRule) -> dict[str, Any]:
    return {"id": row.id, "kind": row.kind, "origin": "api", "read_only": False, "definition": row.definition,
            "created_at": row.created_at.isoformat(), "updated_at": row.updated_at.isoformat()}


@bp.get("/rules")
def list_rules() -> ResponseReturnValue:
    with get_services().transaction() as session:
        return jsonify(items=rule_listing(session))


@bp.post("/rules")
def create_rule() -> ResponseReturnValue:
    rule_id, kind, definition = _validated(_json_body())
    now = utcnow()
    with get_services().transaction() as session:
        if session.get(TaggingRule, rule_id) is not None:
            raise ApiError(409, f"rule {rule_id!r} exists; PUT /rules/{rule_id} replaces it")
        row = TaggingRule(id=rule_id, kind=kind, definition=definition, created_at=now, updated_at=now)
        session.add(row)
        version = bump_rules_version(session, now)
        body = _rule_body(row) | {"rules_version": version["n"]}
    return jsonify(body), 201


@bp.get("/rules/<rule_id>")
def get_rule(rule_id: str) -> ResponseReturnValue:
    with get_services().transaction() as session:
        row = session.get(TaggingRule, rule_id)
        if row is not None:
            return jsonify(_rule_body(row))
        for item in rule_listing(session):
            if item["id"] == rule_id:
                return jsonify(item)
    raise ApiError(404, f"no rule {rule_id!r}")


@bp.put("/rules/<rule_id>")
def replace_rule(rule_id: str) -> ResponseReturnValue:
    _, kind, definition = _validated(_json_body(), rule_id)
    now = utcnow()
    with get_services().transaction() as session:
        row = session.get(TaggingRule, rule_id)
        if row is None:
            raise ApiError(404, f"no API rule {rule_id!r} (POST /rules creates one)")
        row.kind, row.definition, row.updated_at = kind, definition, now
        version = bump_rules_version(session, now)
        body = _rule_body(row) | {"rules_version": version["n"]}
    return jsonify(body)


@bp.delete("/rules/<rule_id>")
def delete_rule(rule_id: str) -> ResponseReturnValue:
    _files, origins = file_rules()
    if rule_id in origins:
        raise ApiError(409, f"rule {rule_id!r} is defined in {origins[rule_id]} (file rules are read-only)")
    now = utcnow()
    with get_services().transaction() as session:
        row = session.get(TaggingRule, rule_id)
        if row is None:
            raise ApiError(404, f"no API rule {rule_id!r}")
        session.delete(row)
        version = bump_rules_version(session, now)
    return jsonify(deleted=rule_id, rules_version=version["n"])


@bp.post("/rules/test")
def test_rules() -> ResponseReturnValue:
    body = _json_body()
    if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"].strip():
        raise ApiError(400, "text is required")
    source = body.get("source") or "kf"
    if source not in SOURCES:
        raise ApiError(400, f"source must be one of {', '.join(SOURCES)}")
    chat_type = body.get("chat_type") or "single"
    if chat_type not in ("single", "group"):
        raise ApiError(400, "chat_type must be single or group")
    employee, ext = body.get("employee"), body.get("external_userid")
    for name, value in (("employee", employee), ("external_userid", ext)):
        if value is not None and not isinstance(value, str):
            raise ApiError(400, f"{name} must be a string")
    with get_services().transaction() as session:
        result = try_text(session, body["text"], source=source, employee=employee, chat_type=chat_type,
                          external_userid=ext, now=utcnow())
    return jsonify(result)


@bp.post("/messages")
def post_messages() -> ResponseReturnValue:
    from jobs.tagging import ingest_archive, parse_archive

    body = _json_body()
    records = body.get("messages") if isinstance(body, dict) else body
    if isinstance(body, dict) and records is None:
        records = [body]  # one record posted on its own
    if not isinstance(records, list) or not records:
        raise ApiError(400, "body must be an archive record, a list of them, or {\"messages\": [...]}")
    if len(records) > MAX_MESSAGES_PER_POST:
        raise ApiError(413, f"at most {MAX_MESSAGES_PER_POST} records per request")
    parsed, errors = parse_archive(records)
    if errors:
        raise ApiError(400, "; ".join(errors[:20]))
    result = ingest_archive(get_services(), parsed)
    return jsonify(result.as_dict()), 202


_STR = {"type": "string"}
_ERR = {"type": "object", "required": ["error"], "properties": {"error": _STR}}
_RULE = {"type": "object", "required": ["id", "kind", "origin", "read_only"], "properties": {
    "id": _STR, "kind": {"type": "string", "enum": ["keyword", "behaviour"]},
    "origin": {"type": "string", "enum": ["file", "api"]}, "read_only": {"type": "boolean"},
    "definition": {"type": "object"}, "file": _STR}}
_RULE_ID = {"name": "rule_id", "in": "path", "required": True, "schema": _STR}


def _resp(code: int, schema: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {str(code): {"description": "OK", "content": {"application/json": {"schema": schema}}},
                           "401": {"description": "missing or wrong admin token",
                                   "content": {"application/json": {"schema": _ERR}}}}
    for e in errors:
        out[str(e)] = {"description": "error", "content": {"application/json": {"schema": _ERR}}}
    return out


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_RULE_IN = {"type": "object", "description": "One rule in the rule file format (docs/TAGGING.md); optional "
            "rule_type keyword|behaviour (else inferred from keywords)", "required": ["id", "name"]}
_VERDICT = {"type": "object", "properties": {
    "rule_id": _STR, "name": _STR, "fired": {"type": "boolean"}, "reason": _STR,
    "keyword": {"type": ["string", "null"]},
    "would_apply": {"type": "boolean"}, "decision": {"type": ["string", "null"]},
    "add_tags": {"type": "array", "items": _STR}, "remove_tags": {"type": "array", "items": _STR}}}

OPENAPI_PATHS: dict[str, Any] = {
    "/rules": {
        "get": {"summary": "Every tagging rule: file rules (read-only) and API rules",
                "responses": _resp(200, {"type": "object", "properties": {
                    "items": {"type": "array", "items": _RULE}}})},
        "post": {"summary": "Create an API rule (takes effect without restart)", "requestBody": _body(_RULE_IN),
                 "responses": _resp(201, _RULE, 400, 409)},
    },
    "/rules/{rule_id}": {
        "get": {"summary": "One rule", "parameters": [_RULE_ID], "responses": _resp(200, _RULE, 404)},
        "put": {"summary": "Replace an API rule", "parameters": [_RULE_ID], "requestBody": _body(_RULE_IN),
                "responses": _resp(200, _RULE, 400, 404, 409)},
        "delete": {"summary": "Delete an API rule (file rules: 409)", "parameters": [_RULE_ID],
                   "responses": _resp(200, {"type": "object"}, 404, 409)},
    },
    "/rules/test": {
        "post": {"summary": "Which rules a text would fire, and why or why not (negative, scope, mode, threshold, "
                            "cooldown, manual removal)",
                 "requestBody": _body({"type": "object", "required": ["text"], "properties": {
                     "text": _STR, "source": {"type": "string", "enum": list(SOURCES)}, "employee": _STR,
                     "chat_type": {"type": "string", "enum": ["single", "group"]}, "external_userid": _STR}}),
                 "responses": _resp(200, {"type": "object", "properties": {
                     "normalized": _STR, "results": {"type": "array", "items": _VERDICT}}}, 400)},
    },
    "/messages": {
        "post": {"summary": "Chat-archive records (decrypted WeCom JSON: msgid, action, from, tolist, roomid, "
                            "msgtime ms, msgtype, text.content); stored, deduplicated by msgid, matched by a worker",
                 "requestBody": _body({"oneOf": [{"type": "array", "items": {"type": "object"}},
                                                 {"type": "object"}]}),
                 "responses": _resp(202, {"type": "object", "properties": {
                     "accepted": {"type": "integer"}, "duplicates": {"type": "integer"}}}, 400, 413)},
    },
}
