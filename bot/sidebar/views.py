"""Sidebar pages (server-rendered Jinja2 + one small script): the chat-toolbar page and the task list.

`/sidebar/` is what WeCom's 聊天工具栏 opens (docs/SIDEBAR.md); `/sidebar/tasks` is where the reminder
digest links. Without a session both go through WeCom OAuth first and come back to the same path.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, render_template, request, send_from_directory, url_for
from flask.typing import ResponseReturnValue
from markupsafe import Markup
from werkzeug.wrappers import Response

from bot import get_services
from bot.services import Services
from bot.sidebar import auth, messages, tasks
from bot.sidebar.api import is_admin, jssdk_params, security_headers, task_card
from bot.wecom.client import WeComError

log = logging.getLogger("sopbot.sidebar")

STATIC_DIR = Path(__file__).parent / "static"

sidebar_bp = Blueprint("sidebar", __name__, url_prefix="/sidebar", template_folder="templates",
                       static_folder="static", static_url_path="/static")


@lru_cache(maxsize=32)
def _static_version(filename: str, mtime_ns: int) -> str:
    return hashlib.sha256((STATIC_DIR / filename).read_bytes()).hexdigest()[:10]


def static_url(filename: str) -> str:
    """Versioned URL: the file can then be cached for a year on the phone (one fetch per release)."""
    version = _static_version(filename, (STATIC_DIR / filename).stat().st_mtime_ns)
    return url_for("sidebar.static", filename=filename, v=version)


def jssdk_url(services: Services) -> str:
    """SOPBOT_JSSDK_URL: the official jweixin file, ideally copied under our own static files."""
    return services.settings.extra.get("SOPBOT_JSSDK_URL", "")


def _script_origin(services: Services) -> str:
    parts = urlsplit(jssdk_url(services))
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


@sidebar_bp.after_request
def _headers(resp: Response) -> Response:
    services = get_services()
    if request.endpoint == "sidebar.static" and request.args.get("v"):
        resp.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    elif request.endpoint != "sidebar.media":
        resp.headers["Cache-Control"] = "no-store"
    security_headers(resp, _script_origin(services))
    return resp


@sidebar_bp.app_context_processor
def _template_helpers() -> dict[str, Any]:
    return {"sidebar_static": static_url}


def _boot_json(data: dict[str, Any]) -> Markup:
    # In a <script type="application/json"> block: "</" must not close the element early.
    text = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    return Markup(text)  # noqa: S704 - JSON escaped for a data block, never executed


def _page(template: str, services: Services, session: auth.SidebarSession, boot: dict[str, Any],
          **context: Any) -> ResponseReturnValue:
    boot = {"csrf": session.csrf, "userid": session.userid, **boot}
    return render_template(template, boot=_boot_json(boot), jssdk_url=jssdk_url(services), **context)


def _page_url(services: Services) -> str:
    """The URL WeCom sees: public base + path + query (what the JS-SDK signature must cover)."""
    query = request.query_string.decode()
    return services.settings.public_url + request.path + (f"?{query}" if query else "")


@sidebar_bp.get("/")
def main() -> ResponseReturnValue:
    services = get_services()
    session = auth.current_session(services)
    if session is None:
        return auth.authorize_redirect(services, request.full_path.rstrip("?"))
    try:
        signature: dict[str, Any] | None = jssdk_params(services, _page_url(services))
    except WeComError as exc:
        # The page still renders; the script asks /sidebar/api/jssdk again and explains if that fails too.
        log.warning("sidebar: jsapi ticket unavailable while rendering: %s", exc)
        signature = None
    return _page("main.html", services, session, {"page": "main", "jssdk": signature})


@sidebar_bp.get("/tasks")
def task_list() -> ResponseReturnValue:
    services = get_services()
    session = auth.current_session(services)
    if session is None:
        return auth.authorize_redirect(services, request.full_path.rstrip("?"))
    with services.transaction() as db:
        cards = [task_card(services, db, t, None, session.userid)
                 for t in tasks.open_tasks_for_employee(db, session.userid)]
    return _page("tasks.html", services, session, {"page": "tasks"}, cards=cards,
                 admin=is_admin(services, session.userid))


@sidebar_bp.get("/oauth/callback")
def oauth_callback() -> ResponseReturnValue:
    services = get_services()
    try:
        return auth.finish_login(services, request.args.get("code"), request.args.get("state"))
    except auth.LoginError as exc:
        return render_template("message.html", title="无法登录", message=exc.message), exc.status


@sidebar_bp.get("/media/<path:filename>")
def media(filename: str) -> ResponseReturnValue:
    """Library materials (covers, images) by public URL: WeCom and the customer fetch them without a cookie."""
    if Path(filename).suffix.lower() not in (".png", ".jpg", ".jpeg", ".gif", ".webp"):
        abort(404)
    return send_from_directory(messages.materials_dir(), filename, max_age=86400)
