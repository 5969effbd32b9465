"""Executors of outbox rows: one WeCom call (or a few) each, returning follow-up actions.

Each takes (services, payload, row) and returns an Outcome; bot.apply writes the follow-ups in the
same transaction that marks the row done. Error policy (ARCHITECTURE.md "Contracts"): the client
already retried transient errors with backoff and refreshed the token once; what reaches here as
WeComTransientError is retried later by the row, anything else permanent is recorded (GiveUp).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bot.actions import (
    Action,
    AddTags,
    RecordTimeline,
    RemoveTags,
    SyncCorpTags,
    TagRef,
    UpsertCustomer,
    UpsertEmployee,
    UpsertFollow,
    UpsertGroup,
)
from bot.db import utcnow
from bot.models import KV, CorpTag, Customer, CustomerTag, Employee, FollowRelation
from bot.services import Services
from bot.wecom.client import WeComError, WeComNotFound, WeComTokenError, WeComTransientError
from jobs.wecom_calls import GiveUp, Outbox, Outcome, Retry, executor

log = logging.getLogger("sopbot.jobs.executors")

# WeCom temporary media live 3 days; re-upload a little before that.
MEDIA_TTL = timedelta(days=3) - timedelta(hours=6)
WELCOME_ALREADY_SENT = 41051
WELCOME_BUSY = 41096


def _ts(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), UTC) if value not in (None, "", 0, "0") else None
    except (TypeError, ValueError):
        return None


def _policy(exc: WeComError) -> Exception:
    """Map a client error onto the row's retry policy: Retry (later) or GiveUp (recorded, final)."""
    # None: network/HTTP after the client's retries; a token error right after a refresh (the token was
    # invalidated again in between) is also worth another try later, not a permanent failure.
    if isinstance(exc, WeComTransientError | WeComTokenError) or exc.errcode is None:
        return Retry(str(exc))
    return GiveUp(f"{exc.errcode}: {exc.errmsg}")


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except WeComError as exc:
        raise _policy(exc) from exc


def contact_actions(detail: dict[str, Any], *, reconcile_tags: bool, existing_tags: set[str]) -> list[Action]:
    """Actions that mirror one externalcontact/get answer: profile, follow relations, corp tags."""
    contact = detail.get("external_contact") or {}
    ext = str(contact.get("external_userid", ""))
    actions: list[Action] = [UpsertCustomer(ext, {
        "name": contact.get("name"), "avatar": contact.get("avatar"), "type": contact.get("type"),
        "gender": contact.get("gender"), "corp_name": contact.get("corp_name") or contact.get("corp_full_name"),
        "unionid": contact.get("unionid"), "profile": contact,
    })]
    in_wecom: dict[str, str] = {}
    for follow in detail.get("follow_user") or []:
        userid = str(follow.get("userid", ""))
        actions.append(UpsertFollow(ext, userid, added_at=_ts(follow.get("createtime")), state=follow.get("state"),
                                    fields={k: follow.get(k) for k in ("remark", "description", "add_way",
                                                                       "oper_userid")}))
        for tag in follow.get("tags") or []:
            if int(tag.get("type") or 1) == 1 and tag.get("group_name") and tag.get("tag_name"):
                in_wecom.setdefault(f"{tag['group_name']}:{tag['tag_name']}", userid)
    new = sorted(set(in_wecom) - existing_tags)
    if new:
        actions.append(AddTags(ext, tuple(TagRef.parse(t) for t in new), source="wecom", mark_in_wecom=False,
                               reason={"via": "externalcontact/get", "userid": in_wecom[new[0]]}))
    gone = sorted(existing_tags - set(in_wecom)) if reconcile_tags else []
    if gone:
        # A person removed these in the WeCom client (edit_external_contact): mirror it, and keep the
        # removal so the rule that added them does not re-add them before its cooldown.
        actions.append(RemoveTags(ext, tuple(TagRef.parse(t) for t in gone), source="wecom", mark_in_wecom=False,
                                  reason={"via": "edit_external_contact", "manual": True}))
    return actions


def _active_tags(services: Services, ext: str) -> set[str]:
    with services.transaction() as s:
        rows = s.execute(select(CustomerTag.group_name, CustomerTag.name).join(
            Customer, Customer.id == CustomerTag.customer_id).where(
            Customer.external_userid == ext, CustomerTag.removed_at.is_(None))).all()
    return {f"{g}:{n}" for g, n in rows}


@executor("fetch_contact")
def fetch_contact(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    ext = payload["external_userid"]
    detail = _call(services.wecom.get_external_contact, ext)  # 40096/84061 are final: GiveUp, recorded
    existing = _active_tags(services, ext)
    return Outcome(contact_actions(detail, reconcile_tags=bool(payload.get("reconcile_tags")),
                                   existing_tags=existing), {"follow_users": len(detail.get("follow_user") or [])})


def _render_welcome(services: Services, script_id: str | None, ext: str, userid: str) -> tuple[str, list[Any]]:
    """Render the channel's welcome script for this customer: (text, rendered non-text parts)."""
    from scripts_library import load_library
    from scripts_library.render import make_context, render_script

    library = load_library()
    script = library.get(script_id or "welcome.default")
    tags = sorted(_active_tags(services, ext))  # its own transaction: never nest them (SQLite write lock)
    with services.transaction() as s:
        customer = s.scalar(select(Customer).where(Customer.external_userid == ext))
        employee = s.get(Employee, userid)
        remark = s.scalar(select(FollowRelation.remark).join(Customer).where(
            Customer.external_userid == ext, FollowRelation.userid == userid))
        context = make_context(
            customer={"name": (customer.name if customer else "") or "您", "remark": remark or "",
                      "company": (customer.corp_name if customer else "") or "", "gender": customer.gender
                      if customer else 0, "tags": tags, "custom": dict(customer.custom_fields) if customer else {},
                      "stage": customer.stage if customer else "new", "score": customer.score if customer else 0},
            owner={"name": (employee.name if employee else "") or userid, "userid": userid},
            company={"name": services.settings.extra.get("SOPBOT_COMPANY_NAME", "") or "我们"},
            now=utcnow().astimezone(services.settings.tz),
        )
    rendered = render_script(script, context)
    text = "\n".join(p.text for p in rendered.parts if p.type == "text" and p.text)
    return text, [p for p in rendered.parts if p.type != "text"]


def media_id_for(services: Services, path: str, media_type: str) -> str:
    """Upload a library file as WeCom temporary media once, re-uploading before the 3-day expiry."""
    from scripts_library import CONTENT_ROOT
    from scripts_library.loader import materials_root

    file_path = Path(path) if Path(path).is_absolute() else materials_root(CONTENT_ROOT) / path
    if not file_path.is_file():
        file_path = CONTENT_ROOT / path
    key = f"media:{media_type}:{file_path.resolve()}:{file_path.stat().st_mtime_ns}"
    now = utcnow()
    with services.transaction() as s:
        cached = s.get(KV, key)
        if cached and now - datetime.fromisoformat(cached.value["uploaded_at"]) < MEDIA_TTL:
            return str(cached.value["media_id"])
    with file_path.open("rb") as fh:
        answer = _call(services.wecom.upload_media, media_type, (file_path.name, fh))
    media_id = str(answer["media_id"])
    with services.transaction() as s:
        s.merge(KV(key=key, value={"media_id": media_id, "uploaded_at": now.isoformat()}))
    return media_id


def attachments_for(services: Services, parts: list[Any]) -> list[dict[str, Any]]:
    """Rendered script parts -> WeCom attachments (send_welcome_msg / add_msg_template shape)."""
    out: list[dict[str, Any]] = []
    for p in parts:
        if p.type == "image" and p.media_path:
            out.append({"msgtype": "image", "image": {"media_id": media_id_for(services, p.media_path, "image")}})
        elif p.type == "link":
            out.append({"msgtype": "link", "link": {"title": p.title or "", "desc": p.desc or "", "url": p.url or "",
                                                    "picurl": p.cover_url or ""}})
        elif p.type in ("file", "video") and p.media_path:
            out.append({"msgtype": p.type, p.type: {"media_id": media_id_for(services, p.media_path, p.type)}})
        elif p.type == "miniprogram":
            cover = media_id_for(services, p.cover_path, "image") if p.cover_path else ""
            out.append({"msgtype": "miniprogram", "miniprogram": {"title": p.title or "", "pic_media_id": cover,
                                                                  "appid": p.appid or "", "page": p.page or ""}})
    return out[:9]  # WeCom takes at most 9 attachments


@executor("send_welcome")
def send_welcome(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    """欢迎语: once, within 20 s of the add event (the runner refuses a row past its deadline)."""
    ext, userid, code = payload["external_userid"], payload["userid"], payload["welcome_code"]
    actions: list[Action] = []
    with services.transaction() as s:
        named = s.scalar(select(Customer.name).where(Customer.external_userid == ext))
    if not named:
        # The profile job may not have run yet; the greeting needs the customer's name.
        try:
            detail = services.wecom.get_external_contact(ext)
            actions = contact_actions(detail, reconcile_tags=False, existing_tags=_active_tags(services, ext))
            with services.transaction() as s:
                from bot.apply import apply

                apply(actions[:1], s, context_key=f"outbox:{row.id}:profile")
        except WeComError as exc:
            log.info("welcome without profile (%s)", exc.errcode)
    text, extra = _render_welcome(services, payload.get("script"), ext, userid)
    attachments = attachments_for(services, extra)
    for attempt in (1, 2):
        try:
            services.wecom.send_welcome_msg(code, text=text, attachments=attachments)
            outcome = "sent"
            break
        except WeComError as exc:
            if exc.errcode == WELCOME_ALREADY_SENT:
                outcome = "already_sent"  # done: never send twice
                break
            if exc.errcode == WELCOME_BUSY and attempt == 1:
                continue  # another app is sending right now: retry once, at once (20 s window)
            raise _policy(exc) from exc
    actions.append(RecordTimeline(ext, "welcome_sent" if outcome == "sent" else "welcome_skipped", utcnow(),
                                  userid=userid, source="sopbot",
                                  detail={"script": payload.get("script"), "outcome": outcome, "text": text[:200]},
                                  dedupe_key=f"welcome:{code}"))
    return Outcome(actions, {"outcome": outcome})


def _resolve_tag_ids(services: Services, names: list[str]) -> dict[str, str]:
    """group:name -> corp tag id, creating the missing ones in WeCom (add_corp_tag) first."""
    wanted = {n: TagRef.parse(n) for n in names}
    with services.transaction() as s:
        rows = s.execute(select(CorpTag.group_name, CorpTag.name, CorpTag.id).where(
            CorpTag.is_group.is_(False), CorpTag.deleted.is_(False))).all()
    known = {f"{g}:{n}": i for g, n, i in rows}
    missing = [t for n, t in wanted.items() if n not in known]
    if missing:
        # The mirror may be stale: refresh once before creating anything.
        groups = _call(services.wecom.get_corp_tag_list)
        known.update({f"{g['group_name']}:{t['name']}": t["id"] for g in groups for t in g.get("tag", [])})
        by_group: dict[str, list[str]] = {}
        for t in missing:
            if str(t) not in known:
                by_group.setdefault(t.group, []).append(t.name)
        for group_name, tag_names in by_group.items():
            group_id = next((g["group_id"] for g in groups if g["group_name"] == group_name), None)
            created = _call(services.wecom.add_corp_tag, [{"name": n} for n in tag_names], group_id=group_id,
                            group_name=group_name)
            known.update({f"{created['group_name']}:{t['name']}": t["id"] for t in created.get("tag", [])})
            groups.append(created)
        with services.transaction() as s:
            from bot.apply import apply

            apply([SyncCorpTags(tuple(groups))], s, context_key="mark_tag:resolve")
    return {n: known[n] for n in names if n in known}


@executor("mark_tag")
def mark_tag(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    """编辑客户企业标签: one call per (customer, employee) pair with everything this change adds/removes."""
    ids = _resolve_tag_ids(services, list(payload.get("add", [])) + list(payload.get("remove", [])))
    unresolved = [n for n in payload.get("add", []) if n not in ids]
    if unresolved:  # never mark "done" with a tag silently left out (seen under API faults): try again later
        raise Retry(f"corp tag ids not resolved: {unresolved}")
    add = [ids[n] for n in payload.get("add", []) if n in ids]
    remove = [ids[n] for n in payload.get("remove", []) if n in ids]
    if not add and not remove:
        return Outcome(result={"skipped": "no tag ids"})
    try:
        services.wecom.mark_tag(payload["userid"], payload["external_userid"], add_tag=add, remove_tag=remove)
    except WeComNotFound as exc:
        # 84061: the relationship is gone (one side deleted the other) — nothing left to tag.
        return Outcome(result={"skipped": f"{exc.errcode}: relationship gone"})
    except WeComError as exc:
        raise _policy(exc) from exc
    return Outcome(result={"add": add, "remove": remove})


@executor("sync_corp_tags")
def sync_corp_tags(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    groups = _call(services.wecom.get_corp_tag_list)
    return Outcome([SyncCorpTags(tuple(groups))], {"groups": len(groups)})


@executor("fetch_group")
def fetch_group(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    chat = _call(services.wecom.groupchat_get, payload["chat_id"])
    members = tuple({**m, "join_time": _ts(m.get("join_time"))} for m in chat.get("member_list") or [])
    fields = {"name": chat.get("name"), "owner": chat.get("owner"), "notice": chat.get("notice"),
              "member_version": chat.get("member_version"), "created_at": _ts(chat.get("create_time"))}
    return Outcome([UpsertGroup(payload["chat_id"], fields, members)], {"members": len(members)})


@executor("fetch_user")
def fetch_user(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    user = _call(services.wecom.get_user, payload["userid"])
    leaders = user.get("direct_leader") or []
    return Outcome([UpsertEmployee(payload["userid"], {
        "name": user.get("name"), "department_ids": user.get("department"),
        "manager_userid": leaders[0] if leaders else None, "active": int(user.get("status") or 1) == 1,
    })])
