"""Scripts rendered for one customer, as previews and as `wx.invoke('sendChatMessage', …)` arguments.

Rendering reads the database (one transaction, the caller's); media ids come afterwards from
`jobs.executors.media_id_for`, which opens its own transactions and may upload to WeCom — never
call it inside a transaction (on SQLite a nested BEGIN IMMEDIATE deadlocks).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import TemplateError
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.db import utcnow
from bot.models import Customer, CustomerTag, Employee, FollowRelation
from bot.services import Services
from scripts_library import load_library
from scripts_library.loader import Script, ScriptLibrary
from scripts_library.render import RenderedPart, RenderedScript, make_context, render_script

log = logging.getLogger("sopbot.sidebar")

__all__ = ["RenderError", "render_for", "preview", "send_payloads", "media_url", "materials_dir"]

# How many quick replies one search returns: a phone screen, not a report.
MAX_RESULTS = 20


class RenderError(Exception):
    """The script cannot be rendered for this customer (missing field): shown, not sent."""


def materials_dir() -> Path:
    from scripts_library import CONTENT_ROOT
    from scripts_library.loader import materials_root

    return materials_root(CONTENT_ROOT).resolve()


def media_url(services: Services, path: str | None) -> str:
    """Public URL of a library material (covers): WeCom fetches imgUrl without our session cookie."""
    if not path:
        return ""
    try:
        rel = Path(path).resolve().relative_to(materials_dir())
    except ValueError:
        rel = Path(path)
    return f"{services.settings.public_url}/sidebar/media/{quote(rel.as_posix())}"


def _context(services: Services, session: Session, customer: Customer, userid: str) -> dict[str, Any]:
    tags = [f"{g}:{n}" for g, n in session.execute(
        select(CustomerTag.group_name, CustomerTag.name).where(
            CustomerTag.customer_id == customer.id, CustomerTag.removed_at.is_(None))).all()]
    employee = session.get(Employee, userid)
    remark = session.scalar(select(FollowRelation.remark).where(
        FollowRelation.customer_id == customer.id, FollowRelation.userid == userid))
    return make_context(
        customer={"name": customer.name or "您", "remark": remark or "", "company": customer.corp_name or "",
                  "gender": customer.gender or 0, "tags": sorted(tags), "custom": dict(customer.custom_fields or {}),
                  "stage": customer.stage, "score": customer.score},
        owner={"name": (employee.name if employee else "") or userid, "userid": userid},
        company={"name": services.settings.extra.get("SOPBOT_COMPANY_NAME", "") or "我们"},
        now=utcnow().astimezone(services.settings.tz),
    )


def render_for(services: Services, session: Session, script: Script, customer: Customer | None,
               userid: str) -> RenderedScript:
    """Render with the customer's data; without a customer (task list) the script's own example is used."""
    context = _context(services, session, customer, userid) if customer is not None else dict(script.example)
    try:
        return render_script(script, context)
    except (TemplateError, ValueError, KeyError, TypeError) as exc:
        raise RenderError(f"话术 {script.id} 无法为该客户生成：{exc}") from exc


def _part_preview(services: Services, p: RenderedPart) -> dict[str, Any]:
    out: dict[str, Any] = {"type": p.type}
    if p.type == "text":
        out["text"] = p.text or ""
    elif p.type == "image":
        out["img"] = media_url(services, p.media_path) if p.media_path else (p.url or "")
        out["title"] = p.title or "图片"
    elif p.type == "link":
        out.update(title=p.title or "", desc=p.desc or "", url=p.url or "")
    elif p.type in ("file", "video"):
        out["title"] = p.title or (Path(p.media_path).name if p.media_path else "")
    elif p.type == "miniprogram":
        out.update(title=p.title or "", page=p.page or "")
    return out


def preview(services: Services, rendered: RenderedScript, category: str = "") -> dict[str, Any]:
    return {"script_id": rendered.script_id, "title": rendered.title, "category": category,
            "parts": [_part_preview(services, p) for p in rendered.parts]}


def send_payloads(services: Services, rendered: RenderedScript) -> list[dict[str, Any]]:
    """One sendChatMessage argument per part (PROTOCOL.md §3.11); media uploaded as WeCom temp media."""
    from jobs.executors import media_id_for

    out: list[dict[str, Any]] = []
    for p in rendered.parts:
        if p.type == "text" and p.text:
            out.append({"msgtype": "text", "text": {"content": p.text}})
        elif p.type in ("image", "video", "file") and p.media_path:
            out.append({"msgtype": p.type, p.type: {"mediaid": media_id_for(services, p.media_path, p.type)}})
        elif p.type == "link":
            img = p.cover_url or media_url(services, p.cover_path)
            out.append({"msgtype": "news", "news": {"link": p.url or "", "title": p.title or "",
                                                    "desc": p.desc or "", "imgUrl": img}})
        elif p.type == "miniprogram":
            out.append({"msgtype": "miniprogram", "miniprogram": {
                "appid": p.appid or "", "title": p.title or "", "page": p.page or "",
                "imgUrl": p.cover_url or media_url(services, p.cover_path)}})
        else:
            log.warning("sidebar: part %s of %s cannot be sent from the sidebar", p.type, rendered.script_id)
    return out


_library_cache: tuple[tuple[tuple[str, int], ...], ScriptLibrary] | None = None


def library() -> ScriptLibrary:
    """The scripts library, parsed again only when a file under content/ changed (a search per keystroke)."""
    global _library_cache
    from scripts_library import CONTENT_ROOT
    from scripts_library.loader import yaml_files

    signature = tuple((str(p), p.stat().st_mtime_ns) for p in yaml_files(CONTENT_ROOT))
    if _library_cache is None or _library_cache[0] != signature:
        _library_cache = (signature, load_library())
    return _library_cache[1]


def search(query: str) -> list[Script]:
    return library().search(query)[:MAX_RESULTS]


def get_script(script_id: str) -> Script | None:
    return library().scripts.get(script_id)
