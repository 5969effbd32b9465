"""客户联系 · 客户群变更事件 (change_external_chat).

WeCom doc: 客户联系 → 回调通知 → 客户群事件 (https://developer.work.weixin.qq.com/document/path/92130).
PROTOCOL.md §2.2. The event only signals a change: details come from groupchat/get in a job.
"""

from __future__ import annotations

from bot.actions import Action, DismissGroup, EnqueueCall, GroupMembersChanged, RecordTimeline
from bot.events import Event
from bot.store import Store

EVENT = "change_external_chat"

# External contact ids start with wm (WeChat user) or wo (WeCom user of another corp).
_EXTERNAL_PREFIXES = ("wm", "wo")


def _fetch(event: Event) -> EnqueueCall:
    return EnqueueCall("fetch_group", {"chat_id": event.chat_id},
                       dedupe_key=f"fetch_group:inbox:{event.inbox_id}:{event.chat_id}")


def handle_create(event: Event, store: Store) -> list[Action]:
    """客户群创建事件."""
    return [_fetch(event)]


def handle_update(event: Event, store: Store) -> list[Action]:
    """客户群变更事件: members joined/left (UpdateDetail add_member/del_member), owner, name, notice."""
    detail = event.get("UpdateDetail")
    actions: list[Action] = []
    members = event.members_changed
    if detail in ("add_member", "del_member") and members:
        joined = tuple(members) if detail == "add_member" else ()
        left = tuple(members) if detail == "del_member" else ()
        actions.append(GroupMembersChanged(event.chat_id, joined=joined, left=left, at=event.created_at))
        kind = "joined_group" if detail == "add_member" else "left_group"
        scene = event.get("JoinScene") if detail == "add_member" else event.get("QuitScene")
        for member in members:
            if member.startswith(_EXTERNAL_PREFIXES):
                actions.append(RecordTimeline(
                    member, kind, event.created_at, source="wecom",
                    detail={"chat_id": event.chat_id, "scene": scene or None},
                    dedupe_key=f"inbox:{event.inbox_id}:{kind}:{member}"))
    actions.append(_fetch(event))
    return actions


def handle_dismiss(event: Event, store: Store) -> list[Action]:
    """客户群解散事件."""
    return [DismissGroup(event.chat_id, event.created_at)]


HANDLERS = {"create": handle_create, "update": handle_update, "dismiss": handle_dismiss}
IGNORED: frozenset[str] = frozenset()
