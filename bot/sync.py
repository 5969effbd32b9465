"""Initial sync (`sopbot sync`, or the `initial_sync` bulk job): employees, corp tags, customers, groups.

Idempotent and resumable: every page of customers is written in the same transaction as the
checkpoint (the member chunk and WeCom's cursor) in the KV table, so an interrupted run continues
where the last committed page ended and re-writing a page is an upsert. Calls go through the
shared WeComClient, so the rate limiter and retries apply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from bot.actions import Action, SyncContacts, SyncCorpTags, UpsertEmployee, UpsertGroup
from bot.apply import apply
from bot.db import utcnow
from bot.models import KV, CorpTag
from bot.services import Services

log = logging.getLogger("sopbot.sync")

__all__ = ["SyncReport", "run_sync", "CHECKPOINT_KEY"]

CHECKPOINT_KEY = "sync:customers"
MEMBERS_PER_CALL = 100  # batch/get_by_user takes at most 100 userids
PAGE_LIMIT = 100  # and returns at most 100 rows per page

Progress = Callable[[str, int, int | None], None]  # (stage, done, total)


@dataclass
class SyncReport:
    employees: int = 0
    tags: int = 0
    customer_rows: int = 0
    pages: int = 0
    groups: int = 0
    resumed: bool = False


def _noop(stage: str, done: int, total: int | None) -> None:
    return None


def run_sync(services: Services, *, progress: Progress = _noop, reset: bool = False,
             groups: bool = True, page_limit: int = PAGE_LIMIT) -> SyncReport:
    report = SyncReport()
    client = services.wecom
    ts = utcnow()

    departments = client.list_departments()
    employees: dict[str, dict[str, Any]] = {}
    for dept in departments:
        for user in client.list_users(int(dept["id"])):
            employees[str(user["userid"])] = user
    contact_users = client.get_follow_user_list()
    actions: list[Action] = []
    for userid, user in sorted(employees.items()):
        leaders = user.get("direct_leader") or []
        actions.append(UpsertEmployee(userid, {
            "name": user.get("name"), "department_ids": user.get("department"),
            "active": int(user.get("status") or 1) == 1,
            "manager_userid": leaders[0] if leaders else None, "customer_contact": userid in contact_users}))
    tag_groups = client.get_corp_tag_list()
    actions.append(SyncCorpTags(tuple(tag_groups)))
    with services.transaction() as s:
        apply(actions, s, now=ts, context_key="sync:setup")
    report.employees, report.tags = len(employees), sum(len(g.get("tag", [])) for g in tag_groups)
    progress("employees", report.employees, report.employees)

    tag_names = _tag_names(services)
    userids = sorted(contact_users)
    chunks = [userids[i : i + MEMBERS_PER_CALL] for i in range(0, len(userids), MEMBERS_PER_CALL)]
    chunk_index, cursor, done_rows = 0, "", 0
    with services.transaction() as s:
        checkpoint = s.get(KV, CHECKPOINT_KEY)
        if checkpoint is not None and reset:
            s.delete(checkpoint)
        elif checkpoint is not None and not checkpoint.value.get("finished"):
            chunk_index, cursor = int(checkpoint.value["chunk"]), str(checkpoint.value["cursor"])
            done_rows = int(checkpoint.value.get("rows", 0))
            report.resumed = True
    while chunk_index < len(chunks):
        answer = client.call("POST", "externalcontact/batch/get_by_user",
                             body={"userid_list": chunks[chunk_index], "cursor": cursor, "limit": page_limit})
        rows = answer.get("external_contact_list") or []
        cursor = str(answer.get("next_cursor") or "")
        if not cursor:
            chunk_index, cursor = chunk_index + 1, ""
        page = tuple({**r, "tags": [tag_names[t] for t in (r.get("follow_info") or {}).get("tag_id") or []
                                    if t in tag_names]} for r in rows)
        done_rows += len(rows)
        with services.transaction() as s:
            apply([SyncContacts(page)], s, now=utcnow(), context_key="sync:page")
            s.merge(KV(key=CHECKPOINT_KEY, value={"chunk": chunk_index, "cursor": cursor, "rows": done_rows,
                                                  "finished": chunk_index >= len(chunks)}))
        report.pages += 1
        report.customer_rows += len(rows)
        progress("customers", done_rows, None)

    if groups:
        chat_ids = [g["chat_id"] for chunk in chunks for g in client.groupchat_list(owner_userids=chunk)]
        for n, chat_id in enumerate(chat_ids, 1):
            chat = client.groupchat_get(chat_id)
            members = tuple(chat.get("member_list") or [])
            with services.transaction() as s:
                apply([UpsertGroup(chat_id, {"name": chat.get("name"), "owner": chat.get("owner"),
                                             "notice": chat.get("notice"),
                                             "member_version": chat.get("member_version")}, members)],
                      s, now=utcnow(), context_key="sync:groups")
            progress("groups", n, len(chat_ids))
        report.groups = len(chat_ids)
    log.info("sync done: %s", report)
    return report


def _tag_names(services: Services) -> dict[str, str]:
    with services.transaction() as s:
        rows = s.execute(select(CorpTag.id, CorpTag.group_name, CorpTag.name).where(CorpTag.is_group.is_(False))).all()
    return {i: f"{g}:{n}" for i, g, n in rows}
