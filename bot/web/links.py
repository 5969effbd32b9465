"""Tracked links: `/t/<token>` records `link_opened` on the customer's timeline and redirects (302).

Public (customers open these in WeChat), so nothing but the signature is trusted: a forged or altered token
is a 404 and records nothing. The event is a domain event like any other timeline entry, so behaviour
tagging, scoring and SOP exits see it in the same transaction.

Links sit in customers' chat histories, so they keep working for a long time: SOPBOT_LINK_MAX_AGE_DAYS
(default 180) after the link was first made, then 410 Gone with a short page and nothing recorded.
0 means links never expire. (docs/SECURITY.md)
"""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, abort, redirect
from flask.typing import ResponseReturnValue

from bot import get_services
from bot.actions import RecordTimeline
from bot.apply import apply
from bot.db import utcnow
from bot.services import Services
from bot.sop.models import TrackedLink
from bot.sop.service import unsign_link

links_bp = Blueprint("links", __name__)

DEFAULT_MAX_AGE_DAYS = 180
MAX_ID = 2**63 - 1
EXPIRED_PAGE = (
    "<!doctype html><html lang=\"zh-CN\"><meta charset=\"utf-8\">"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>链接已过期</title>"
    "<p style=\"font-family:sans-serif;margin:2em;text-align:center\">该链接已过期，请联系您的顾问获取最新链接。</p>"
)


def link_max_age(services: Services) -> timedelta | None:
    """SOPBOT_LINK_MAX_AGE_DAYS as a timedelta; None when links never expire (0)."""
    raw = services.settings.extra.get("SOPBOT_LINK_MAX_AGE_DAYS", "")
    try:
        days = int(raw) if raw.strip() else DEFAULT_MAX_AGE_DAYS
    except ValueError:
        days = DEFAULT_MAX_AGE_DAYS
    return timedelta(days=days) if days > 0 else None


@links_bp.get("/t/<token>")
def open_tracked_link(token: str) -> ResponseReturnValue:
    services = get_services()
    link_id = unsign_link(services.settings.secret_key, token)
    if link_id is None or not 0 < link_id <= MAX_ID:
        abort(404)
    now = utcnow()
    max_age = link_max_age(services)
    with services.transaction() as session:
        link = session.get(TrackedLink, link_id)
        if link is None:
            abort(404)
        if max_age is not None and link.created_at + max_age < now:
            return Response(EXPIRED_PAGE, status=410, mimetype="text/html")
        target = link.url
        apply([RecordTimeline(link.external_userid, "link_opened", now, userid=link.userid or None, source="link",
                              detail={"material": link.title or link.url, "url": link.url, "script": link.script_id,
                                      "step": link.step_id or None, "sop": link.sop_id or None, "link_id": link.id})],
              session, now=now, context_key=f"link:{link.id}")
    return redirect(target, code=302)
