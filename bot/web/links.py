"""Tracked links: `/t/<token>` records `link_opened` on the customer's timeline and redirects (302).

Public (customers open these in WeChat), so nothing but the signature is trusted: a forged or altered token
is a 404 and records nothing. The event is a domain event like any other timeline entry, so behaviour
tagging, scoring and SOP exits see it in the same transaction.
"""

from __future__ import annotations

from flask import Blueprint, abort, redirect
from flask.typing import ResponseReturnValue

from bot import get_services
from bot.actions import RecordTimeline
from bot.apply import apply
from bot.db import utcnow
from bot.sop.models import TrackedLink
from bot.sop.service import unsign_link

links_bp = Blueprint("links", __name__)


@links_bp.get("/t/<token>")
def open_tracked_link(token: str) -> ResponseReturnValue:
    services = get_services()
    link_id = unsign_link(services.settings.secret_key, token)
    if link_id is None:
        abort(404)
    now = utcnow()
    with services.transaction() as session:
        link = session.get(TrackedLink, link_id)
        if link is None:
            abort(404)
        target = link.url
        apply([RecordTimeline(link.external_userid, "link_opened", now, userid=link.userid or None, source="link",
                              detail={"material": link.title or link.url, "url": link.url, "script": link.script_id,
                                      "step": link.step_id or None, "sop": link.sop_id or None, "link_id": link.id})],
              session, now=now, context_key=f"link:{link.id}")
    return redirect(target, code=302)
