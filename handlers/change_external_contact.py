"""客户联系 · 外部联系人变更回调 (change_external_contact).

WeCom doc: 客户联系 → 回调通知 → 添加/编辑/删除企业客户事件
(https://developer.work.weixin.qq.com/document/path/92130). PROTOCOL.md §2.1.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from bot.actions import (
    Action,
    AddTags,
    EndFollow,
    EnqueueCall,
    RecordTimeline,
    UpsertCustomer,
    UpsertFollow,
)
from bot.events import Event
from bot.store import Store

EVENT = "change_external_contact"

# WeCom accepts send_welcome_msg only within 20 s of the event that carried the code.
WELCOME_WINDOW = timedelta(seconds=20)


def _dedupe(event: Event, kind: str) -> str:
    return f"inbox:{event.inbox_id}:{kind}" if event.inbox_id is not None else f"{event.key}:{kind}"


def _welcome_deadline(event: Event) -> datetime:
    received = event.received_at or event.created_at
    return min(event.created_at, received) + WELCOME_WINDOW


def _added(event: Event, store: Store, *, half: bool) -> list[Action]:
    ext, userid, state = event.external_userid, event.userid, event.state
    channel = store.channel(state)
    actions: list[Action] = [
        UpsertCustomer(ext),
        UpsertFollow(ext, userid, added_at=event.created_at, state=state, half_added=half),
        RecordTimeline(
            ext, "customer_half_added" if half else "customer_added", event.created_at, userid=userid,
            detail={"userid": userid, "state": state, "channel": channel.name if channel else None,
                    "welcome_code": bool(event.welcome_code)},
            dedupe_key=_dedupe(event, "added"),
        ),
        # The profile (name, avatar, remark, tags already on the pair) comes from externalcontact/get,
        # a network call, so it runs in a job, never in the handler.
        EnqueueCall("fetch_contact", {"external_userid": ext, "userid": userid},
                    dedupe_key=f"fetch_contact:{_dedupe(event, 'added')}"),
    ]
    if channel and channel.tags:
        actions.append(AddTags(ext, channel.tags, source="channel", userid=userid, at=event.created_at,
                               reason={"state": state, "channel": channel.name}))
    if event.welcome_code:
        actions.append(EnqueueCall(
            "send_welcome",
            {"welcome_code": event.welcome_code, "external_userid": ext, "userid": userid, "state": state,
             "script": channel.welcome_script if channel else None},
            dedupe_key=f"welcome:{event.welcome_code}", queue="realtime",
            deadline_at=_welcome_deadline(event),
        ))
    return actions


def handle_add_external_contact(event: Event, store: Store) -> list[Action]:
    """添加企业客户事件: record the follow relation with its channel, fetch the profile, tag, welcome."""
    return _added(event, store, half=False)


def handle_add_half_external_contact(event: Event, store: Store) -> list[Action]:
    """外部联系人免验证添加成员事件: same as an add, but the member has not confirmed yet."""
    return _added(event, store, half=True)


def handle_edit_external_contact(event: Event, store: Store) -> list[Action]:
    """编辑企业客户事件: a person changed remark/tags in the client; refresh and reconcile tags."""
    ext, userid = event.external_userid, event.userid
    return [
        UpsertCustomer(ext),
        RecordTimeline(ext, "customer_edited", event.created_at, userid=userid, detail={"userid": userid},
                       dedupe_key=_dedupe(event, "edited")),
        EnqueueCall("fetch_contact", {"external_userid": ext, "userid": userid, "reconcile_tags": True},
                    dedupe_key=f"fetch_contact:{_dedupe(event, 'edited')}"),
    ]


def handle_del_external_contact(event: Event, store: Store) -> list[Action]:
    """删除企业客户事件: the member deleted the customer (or a handover did: DELETE_BY_TRANSFER)."""
    ext, userid = event.external_userid, event.userid
    by_transfer = event.get("Source") == "DELETE_BY_TRANSFER"
    return [
        EndFollow(ext, userid, event.created_at, by="transfer" if by_transfer else "employee"),
        RecordTimeline(ext, "employee_deleted_customer" if not by_transfer else "transferred_away",
                       event.created_at, userid=userid,
                       detail={"userid": userid, "source": event.get("Source") or None},
                       dedupe_key=_dedupe(event, "deleted")),
    ]


def handle_del_follow_user(event: Event, store: Store) -> list[Action]:
    """删除跟进成员事件: the customer deleted the member. The customer is kept, the relation marked lost."""
    ext, userid = event.external_userid, event.userid
    return [
        EndFollow(ext, userid, event.created_at, by="customer"),
        RecordTimeline(ext, "customer_deleted_employee", event.created_at, userid=userid,
                       detail={"userid": userid}, dedupe_key=_dedupe(event, "deleted")),
    ]


def handle_transfer_fail(event: Event, store: Store) -> list[Action]:
    """客户接替失败事件: UserID is the takeover member (the original owner is not in the event)."""
    ext, taker = event.external_userid, event.userid
    reason = event.get("FailReason")
    return [
        RecordTimeline(ext, "transfer_failed", event.created_at, userid=taker,
                       detail={"takeover_userid": taker, "fail_reason": reason},
                       dedupe_key=_dedupe(event, "transfer_fail")),
    ]


def handle_msg_audit_approved(event: Event, store: Store) -> list[Action]:
    """客户同意进行聊天内容存档事件."""
    ext, userid = event.external_userid, event.userid
    return [RecordTimeline(ext, "archive_approved", event.created_at, userid=userid, detail={"userid": userid},
                           dedupe_key=_dedupe(event, "archive_approved"))]


HANDLERS = {
    "add_external_contact": handle_add_external_contact,
    "add_half_external_contact": handle_add_half_external_contact,
    "edit_external_contact": handle_edit_external_contact,
    "del_external_contact": handle_del_external_contact,
    "del_follow_user": handle_del_follow_user,
    "transfer_fail": handle_transfer_fail,
    "msg_audit_approved": handle_msg_audit_approved,
}
IGNORED: frozenset[str] = frozenset()
