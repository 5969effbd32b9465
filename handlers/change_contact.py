"""通讯录变更事件 (change_contact): members joining, changing and leaving.

WeCom doc: 通讯录管理 → 通讯录回调通知 → 成员变更通知 (https://developer.work.weixin.qq.com/document/path/90970).
A deleted member is a departed employee: their customers await a resigned handover (离职继承).
"""

from __future__ import annotations

from typing import Any

from bot.actions import Action, EnqueueCall, MarkEmployeeLeft, UpsertEmployee
from bot.events import Event
from bot.store import Store

EVENT = "change_contact"


def _employee_fields(event: Event) -> dict[str, Any]:
    fields: dict[str, Any] = {"active": True}
    if event.get("Name"):
        fields["name"] = event.get("Name")
    departments = event.get("Department")
    if departments:
        fields["department_ids"] = [int(d) for d in departments.split(",") if d.strip().isdigit()]
    status = event.get("Status")
    if status in ("2", "5"):  # 2 disabled, 5 withdrawn: not an active employee
        fields["active"] = False
    return fields


def handle_create_user(event: Event, store: Store) -> list[Action]:
    """新增成员事件."""
    return [UpsertEmployee(event.userid, _employee_fields(event)),
            EnqueueCall("fetch_user", {"userid": event.userid}, dedupe_key=f"fetch_user:inbox:{event.inbox_id}")]


def handle_update_user(event: Event, store: Store) -> list[Action]:
    """更新成员事件 (a renamed userid arrives as NewUserID)."""
    userid = event.get("NewUserID") or event.userid
    return [UpsertEmployee(userid, _employee_fields(event)),
            EnqueueCall("fetch_user", {"userid": userid}, dedupe_key=f"fetch_user:inbox:{event.inbox_id}")]


def handle_delete_user(event: Event, store: Store) -> list[Action]:
    """删除成员事件: the employee left; their customers now await a resigned handover (离职继承)."""
    return [MarkEmployeeLeft(event.userid, event.created_at)]


HANDLERS = {"create_user": handle_create_user, "update_user": handle_update_user,
            "delete_user": handle_delete_user}
# Department and address-book tag changes carry nothing sopbot uses; acknowledged on purpose.
IGNORED = frozenset({"create_party", "update_party", "delete_party", "update_tag"})
