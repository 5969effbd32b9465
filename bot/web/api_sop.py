"""Admin API routes of the sop area under /api/v1 (documented in OPENAPI_PATHS).

Scripts and SOPs are files in the library (git-versioned content): create/update/delete rewrite the YAML,
but only after the whole library, with the change applied to a scratch copy, passes `sopbot check` — a
change that would break a reference (an SOP step naming a deleted script) is refused with every problem.
The service reads the library per use (SOPs reload on file change), so a change applies without a restart.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from bot import get_services
from bot.apply import apply
from bot.db import utcnow
from bot.sop.definition import SopDefinition
from bot.sop.models import TASK_STATES, SopTask
from bot.sop.service import close_task, content_root, definitions, preview_sop
from bot.web.api import ApiError, install_api_guards, iso, json_body, parse_id
from scripts_library.loader import Script, load_scripts
from scripts_library.validate import validate_library

bp = Blueprint("api_sop", __name__, url_prefix="/api/v1")
install_api_guards(bp)

_WRITE_LOCK = threading.Lock()  # one library edit at a time in this process; files are replaced atomically


# ------------------------------------------------------------------------------------ library edits


def _write_validated(changes: dict[Path, Any | None]) -> None:
    """Apply {relative path: YAML data or None (delete)} to a scratch copy, validate it, then to the library."""
    root = content_root()
    with _WRITE_LOCK, tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "content"
        shutil.copytree(root, scratch)
        for rel, data in changes.items():
            _put(scratch / rel, data)
        problems = validate_library(scratch)
        if problems:
            raise ApiError(422, "; ".join(str(p).replace(str(scratch), str(root)) for p in problems[:20]))
        for rel, data in changes.items():
            _put(root / rel, data)


def _put(path: Path, data: Any | None) -> None:
    if data is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=120), encoding="utf-8")
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


def _safe_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ApiError(400, f"invalid name {name!r}")
    return name


# ------------------------------------------------------------------------------------------ scripts


def _scripts() -> dict[str, Script]:
    scripts, _problems = load_scripts(content_root())
    return scripts


def _script_json(s: Script, full: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"id": s.id, "title": s.title, "category": s.category, "tags": list(s.tags),
                            "source": f"{Path(s.source).name}:{s.line}"}
    if full:
        body["parts"] = [{k: v for k, v in p.__dict__.items() if v is not None} for p in s.parts]
        body["example"] = dict(s.example)
    return body


def _script_doc(body: dict[str, Any]) -> dict[str, Any]:
    script = body.get("script")
    if not isinstance(script, dict) or not isinstance(script.get("id"), str):
        raise ApiError(400, "body needs 'script': {id, title, tags?, parts, example}")
    return script


def _edit_script_file(path: Path, edit: Callable[[list[dict[str, Any]]], None],
                      category: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
    doc = doc or {}
    if category and "category" not in doc:
        doc["category"] = category
    scripts = doc.setdefault("scripts", [])
    edit(scripts)
    return doc


@bp.get("/scripts")
def list_scripts() -> ResponseReturnValue:
    from scripts_library.loader import ScriptLibrary

    library = ScriptLibrary(content_root(), _scripts())
    hits = library.search(request.args.get("q", ""), request.args.get("category") or None)
    return jsonify(items=[_script_json(s) for s in hits], categories=library.categories())


@bp.get("/scripts/<script_id>")
def get_script(script_id: str) -> ResponseReturnValue:
    script = _scripts().get(script_id)
    if script is None:
        raise ApiError(404, f"no script {script_id!r}")
    return jsonify(_script_json(script, full=True))


@bp.post("/scripts")
def create_script() -> ResponseReturnValue:
    body = json_body()
    doc = _script_doc(body)
    if doc["id"] in _scripts():
        raise ApiError(409, f"script {doc['id']!r} exists; PUT /scripts/{doc['id']} to change it")
    file_name = _safe_name(str(body.get("file") or f"{body.get('category') or 'custom'}.yaml"))
    rel = Path("scripts") / file_name
    data = _edit_script_file(content_root() / rel, lambda items: items.append(doc), body.get("category"))
    _write_validated({rel: data})
    return jsonify(_script_json(_scripts()[doc["id"]], full=True)), 201


def _script_file(script_id: str) -> Path:
    script = _scripts().get(script_id)
    if script is None:
        raise ApiError(404, f"no script {script_id!r}")
    return Path(script.source).relative_to(content_root())


@bp.put("/scripts/<script_id>")
def update_script(script_id: str) -> ResponseReturnValue:
    doc = _script_doc(json_body())
    if doc["id"] != script_id:
        raise ApiError(400, "the script id in the body must match the URL")
    rel = _script_file(script_id)

    def replace(items: list[dict[str, Any]]) -> None:
        items[:] = [doc if item.get("id") == script_id else item for item in items]

    _write_validated({rel: _edit_script_file(content_root() / rel, replace)})
    return jsonify(_script_json(_scripts()[script_id], full=True))


@bp.delete("/scripts/<script_id>")
def delete_script(script_id: str) -> ResponseReturnValue:
    rel = _script_file(script_id)

    def remove(items: list[dict[str, Any]]) -> None:
        items[:] = [item for item in items if item.get("id") != script_id]

    data = _edit_script_file(content_root() / rel, remove)
    _write_validated({rel: data if data["scripts"] else None})
    return jsonify(deleted=script_id)


# --------------------------------------------------------------------------------------------- SOPs


def _sop_json(sop: SopDefinition, full: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"id": sop.id, "name": sop.name, "enabled": sop.enabled,
                            "crowd": "trigger" if sop.crowd.is_trigger else "filter",
                            "steps": [s.id for s in sop.steps], "source": Path(sop.source).name}
    if full:
        path = Path(sop.source)
        body["definition"] = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None
        body["steps"] = [{"id": s.id, "touchpoint": s.touchpoint, "scripts": s.script_ids(),
                          "executor": s.executor.kind if s.executor else sop.executor.kind} for s in sop.steps]
    return body


def _sop(sop_id: str) -> SopDefinition:
    sop = definitions().get(sop_id)
    if sop is None:
        raise ApiError(404, f"no SOP {sop_id!r}")
    return sop


def _sop_doc(body: dict[str, Any]) -> dict[str, Any]:
    doc = body.get("sop")
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        raise ApiError(400, "body needs 'sop': {id, name, crowd, steps, …} (the YAML schema as JSON)")
    _safe_name(doc["id"])
    return doc


@bp.get("/sops")
def list_sops() -> ResponseReturnValue:
    return jsonify(items=[_sop_json(s) for s in sorted(definitions().values(), key=lambda s: s.id)])


@bp.get("/sops/<sop_id>")
def get_sop(sop_id: str) -> ResponseReturnValue:
    return jsonify(_sop_json(_sop(sop_id), full=True))


@bp.post("/sops")
def create_sop() -> ResponseReturnValue:
    doc = _sop_doc(json_body())
    if doc["id"] in definitions():
        raise ApiError(409, f"SOP {doc['id']!r} exists; PUT /sops/{doc['id']} to change it")
    _write_validated({Path("sops") / f"{doc['id']}.yaml": doc})
    return jsonify(_sop_json(_sop(doc["id"]), full=True)), 201


@bp.put("/sops/<sop_id>")
def update_sop(sop_id: str) -> ResponseReturnValue:
    doc = _sop_doc(json_body())
    if doc["id"] != sop_id:
        raise ApiError(400, "the SOP id in the body must match the URL")
    rel = Path(_sop(sop_id).source).relative_to(content_root())
    _write_validated({rel: doc})
    return jsonify(_sop_json(_sop(sop_id), full=True))


@bp.delete("/sops/<sop_id>")
def delete_sop(sop_id: str) -> ResponseReturnValue:
    # Running enrollments of a deleted SOP end at their next due step ("SOP 已删除或停用").
    _write_validated({Path(_sop(sop_id).source).relative_to(content_root()): None})
    return jsonify(deleted=sop_id)


@bp.post("/sops/<sop_id>/preview")
def preview(sop_id: str) -> ResponseReturnValue:
    """Dry run: which customers would get which step when. Reads only."""
    sop = _sop(sop_id)
    body = request.get_json(silent=True) or {}
    days, limit = body.get("days", 30), body.get("limit", 500)
    if not isinstance(days, int) or not 1 <= days <= 366 or not isinstance(limit, int) or not 1 <= limit <= 5000:
        raise ApiError(400, "days must be 1..366 and limit 1..5000")
    now = utcnow()
    if body.get("now"):
        try:
            now = datetime.fromisoformat(str(body["now"]))
        except ValueError as exc:
            raise ApiError(400, "now must be an ISO 8601 datetime with a zone") from exc
        if now.tzinfo is None:
            raise ApiError(400, "now must carry a time zone offset")
    with get_services().transaction() as session:
        rows = preview_sop(session, sop, now, days, limit=limit)
    return jsonify(sop=sop_id, now=now.isoformat(), days=days, items=[{
        "customer": r.customer_id, "step": r.step_id, "variant": r.variant, "script": r.script_id,
        "touchpoint": r.touchpoint, "due_at": iso(r.due_at), "executor": r.executor, "note": r.note}
        for r in rows])


# -------------------------------------------------------------------------------------------- tasks


def _task_json(t: SopTask) -> dict[str, Any]:
    return {"id": t.id, "sop": t.sop_id, "step": t.step_id, "variant": t.variant_id, "script": t.script_id,
            "touchpoint": t.touchpoint, "external_userid": t.external_userid, "owner": t.owner_userid,
            "state": t.state, "reason": t.reason, "planned_at": iso(t.planned_at), "due_at": iso(t.due_at),
            "reminded_count": t.reminded_count, "completed_at": iso(t.completed_at), "completed_by": t.completed_by}


@bp.get("/tasks")
def list_tasks() -> ResponseReturnValue:
    state, owner, ext = request.args.get("state"), request.args.get("owner"), request.args.get("external_userid")
    if state is not None and state not in TASK_STATES:
        raise ApiError(400, f"state must be one of {', '.join(TASK_STATES)}")
    stmt = select(SopTask).order_by(SopTask.due_at, SopTask.id).limit(200)
    if state:
        stmt = stmt.where(SopTask.state == state)
    if owner:
        stmt = stmt.where(SopTask.owner_userid == owner)
    if ext:
        stmt = stmt.where(SopTask.external_userid == ext)
    with get_services().transaction() as session:
        return jsonify(items=[_task_json(t) for t in session.scalars(stmt)])


def _close(raw_id: str, state: str) -> ResponseReturnValue:
    task_id = parse_id(raw_id, "task")
    body = request.get_json(silent=True) or {}
    reason = body.get("reason")
    if state == "skipped" and not (isinstance(reason, str) and reason.strip()):
        raise ApiError(400, "skipping a task needs a 'reason'")
    now = utcnow()
    with get_services().transaction() as session:
        task = session.get(SopTask, task_id)
        if task is None:
            raise ApiError(404, f"no task {task_id}")
        if task.state not in ("pending", "due", "overdue"):
            raise ApiError(409, f"task {task_id} is already {task.state}")
        actions = close_task(session, task, state, reason=reason or ("已发送" if state == "done" else None),
                             by=body.get("by") or "api", now=now)
        apply(actions, session, now=now, context_key=f"api:task:{task_id}")
        return jsonify(_task_json(task))


@bp.post("/tasks/<task_id>/done")
def task_done(task_id: str) -> ResponseReturnValue:
    return _close(task_id, "done")


@bp.post("/tasks/<task_id>/skip")
def task_skip(task_id: str) -> ResponseReturnValue:
    return _close(task_id, "skipped")


# ------------------------------------------------------------------------------------------ OpenAPI

_STR = {"type": "string"}
_ERR = {"description": "error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": _STR}}}}}


def _op(summary: str, *codes: int, params: list[dict[str, Any]] | None = None, body: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK", "content": {
        "application/json": {"schema": {"type": "object"}}}}, "401": _ERR, **{str(c): _ERR for c in codes}}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
    return op


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _STR}


_Q = [{"name": n, "in": "query", "schema": _STR} for n in ("q", "category")]
_TQ = [{"name": n, "in": "query", "schema": _STR} for n in ("state", "owner", "external_userid")]

OPENAPI_PATHS: dict[str, Any] = {
    "/scripts": {"get": _op("Scripts (话术): search by words and category", params=_Q),
                 "post": _op("Create a script in the library (YAML, validated before the write)", 400, 409, 422,
                             body=True)},
    "/scripts/{script_id}": {
        "get": _op("One script with its parts and example context", 404, params=[_path("script_id")]),
        "put": _op("Replace a script (validated before the write)", 400, 404, 422, params=[_path("script_id")],
                   body=True),
        "delete": _op("Delete a script (refused while an SOP uses it)", 404, 422, params=[_path("script_id")])},
    "/sops": {"get": _op("SOP definitions"),
              "post": _op("Create an SOP (YAML, validated before the write)", 400, 409, 422, body=True)},
    "/sops/{sop_id}": {
        "get": _op("One SOP with its definition", 404, params=[_path("sop_id")]),
        "put": _op("Replace an SOP (validated before the write)", 400, 404, 422, params=[_path("sop_id")],
                   body=True),
        "delete": _op("Delete an SOP", 404, 422, params=[_path("sop_id")])},
    "/sops/{sop_id}/preview": {"post": _op("Dry run over current customers: who gets which step when (no writes)",
                                           400, 404, params=[_path("sop_id")], body=True)},
    "/tasks": {"get": _op("SOP tasks, filterable", 400, params=_TQ)},
    "/tasks/{task_id}/done": {"post": _op("Mark a task done (sent)", 404, 409,
                                          params=[{**_path("task_id"), "schema": {"type": "integer"}}], body=True)},
    "/tasks/{task_id}/skip": {"post": _op("Skip a task, with a reason", 400, 404, 409,
                                          params=[{**_path("task_id"), "schema": {"type": "integer"}}], body=True)},
}
