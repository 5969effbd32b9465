"""应用 · 成员发给应用的文本消息 (MsgType=text).

WeCom doc: 应用 → 接收消息 → 文本消息 (https://developer.work.weixin.qq.com/document/path/90239).
PROTOCOL.md §2.6. Only members (employees) reach the app this way, never customers: the text is stored as
an employee message (source "app") and is never matched by keyword rules.
"""

from __future__ import annotations

from bot.actions import Action
from bot.events import Event
from bot.store import Store
from bot.tagging.apply_tagging import StoreMessages
from bot.tagging.service import MessageRecord

EVENT = "text"


def handle_text(event: Event, store: Store) -> list[Action]:
    """Store the member's text (deduplicated by MsgId, kept as a string: it is a 64-bit integer)."""
    msgid = event.get("MsgId") or (f"inbox-{event.inbox_id}" if event.inbox_id is not None else "")
    if not msgid:
        return []
    record = MessageRecord(source="app", msgid=msgid, direction="employee", sent_at=event.created_at,
                           msgtype="text", userid=event.get("FromUserName") or None, text=event.get("Content"),
                           raw={"agent_id": event.get("AgentID")})
    return [StoreMessages((record,))]


HANDLERS = {"": handle_text}
IGNORED: frozenset[str] = frozenset()
