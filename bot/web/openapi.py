"""The OpenAPI 3 document of /api/v1 (kept beside the views; a test checks every route is in it)."""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_DT = {"type": ["string", "null"], "format": "date-time"}
_ERROR = {"type": "object", "required": ["error"], "properties": {"error": _STR}}
_PAGE_PARAMS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
    {"name": "cursor", "in": "query", "schema": _STR},
]


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], *errors: int) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", **_json(schema)},
                                 "401": {"description": "missing or wrong admin token", **_json(_ERROR)}}
    for code in errors:
        responses[str(code)] = {"description": "error", **_json(_ERROR)}
    return responses


def _page(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["items", "next_cursor"],
            "properties": {"items": {"type": "array", "items": item}, "next_cursor": _NSTR}}


FOLLOW = {"type": "object", "required": ["userid", "state", "added_at", "deleted_at"], "properties": {
    "userid": _STR, "state": _NSTR, "added_at": _DT, "deleted_at": _DT, "deleted_by": _NSTR}}
TAG = {"type": "object", "required": ["group", "name", "reason"], "properties": {
    "group": _STR, "name": _STR, "source": _STR, "reason": {"type": "object"}, "applied_at": _DT}}
TIMELINE = {"type": "object", "required": ["kind", "at", "detail"], "properties": {
    "kind": _STR, "at": _DT, "detail": {"type": "object"}, "source": _STR}}
CUSTOMER = {"type": "object", "required": ["external_userid", "follow_users", "tags"], "properties": {
    "external_userid": _STR, "name": _STR, "stage": _STR, "score": {"type": "number"},
    "follow_users": {"type": "array", "items": FOLLOW}, "tags": {"type": "array", "items": TAG}}}
CUSTOMER_DETAIL = {**CUSTOMER, "required": ["external_userid", "follow_users", "tags", "timeline"],
                   "properties": {**CUSTOMER["properties"],  # type: ignore[dict-item]
                                  "timeline": {"type": "array", "items": TIMELINE},
                                  "groups": {"type": "array", "items": {"type": "object"}}}}
INBOX = {"type": "object", "required": ["id", "event_key", "status"], "properties": {
    "id": {"type": "integer"}, "event_key": _STR, "status": _STR, "attempts": {"type": "integer"},
    "received_at": _DT, "processed_at": _DT, "last_error": _NSTR, "payload": {"type": "object"}}}
EXT_PARAM = {"name": "external_userid", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


AREA_API_MODULES = ("bot.web.api_tagging", "bot.web.api_sop", "bot.web.api_handover", "bot.web.api_scoring")


def openapi_document() -> dict[str, Any]:
    import importlib

    doc = _core_document()
    for name in AREA_API_MODULES:
        doc["paths"].update(importlib.import_module(name).OPENAPI_PATHS)
    # Every route may answer 400 before its view runs: NUL characters or JSON nested too deeply (bot/web/security.py).
    for operations in doc["paths"].values():
        for operation in operations.values():
            if isinstance(operation, dict) and "responses" in operation:  # skip path-level "parameters"
                operation["responses"].setdefault("400", {"description": "bad request", **_json(_ERROR)})
    return doc


def _core_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "sopbot admin API", "version": "1"},
        "servers": [{"url": "/api/v1"}],
        "components": {"securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}}},
        "security": [{"admin": []}],
        "paths": {
            "/inbox": {"get": {
                "summary": "Recorded callbacks, filterable by status",
                "parameters": [{"name": "status", "in": "query", "schema": {
                    "type": "string", "enum": ["pending", "retry", "done", "failed", "ignored"]}}, *_PAGE_PARAMS],
                "responses": _ok(_page(INBOX), 400)}},
            "/customers": {"get": {
                "summary": "Customers with filters and cursor paging",
                "parameters": [{"name": "tag", "in": "query", "schema": {"type": "string", "pattern": "^[^:]+:.+$"},
                                "description": "a corp tag written group:name"},
                               *({"name": n, "in": "query", "schema": _STR}
                                 for n in ("owner", "stage", "channel", "q")),
                               *({"name": n, "in": "query", "schema": {"type": "string", "format": "date-time"}}
                                 for n in ("added_from", "added_to")), *_PAGE_PARAMS],
                "responses": _ok(_page(CUSTOMER), 400)}},
            "/customers/{external_userid}": {"get": {
                "summary": "One customer: follow users, tags with reasons, timeline, groups",
                "parameters": [EXT_PARAM], "responses": _ok(CUSTOMER_DETAIL, 404)}},
            "/customers/{external_userid}/tags": {"get": {
                "summary": "A customer's tags, each with why it was applied",
                "parameters": [EXT_PARAM, {"name": "all", "in": "query", "schema": {"type": "string"}}],
                "responses": _ok({"type": "object", "required": ["items"],
                                  "properties": {"items": {"type": "array", "items": TAG}}}, 404)}},
            "/employees": {"get": {"summary": "Employees", "responses": _ok(
                {"type": "object", "required": ["items"], "properties": {"items": {"type": "array"}}})}},
            "/tags": {"get": {"summary": "Corp tag library (mirrored from WeCom)", "responses": _ok(
                {"type": "object", "required": ["items"], "properties": {"items": {"type": "array"}}})}},
            "/groups": {"get": {"summary": "Customer group chats", "responses": _ok(
                {"type": "object", "required": ["items"], "properties": {"items": {"type": "array"}}})}},
        },
    }
