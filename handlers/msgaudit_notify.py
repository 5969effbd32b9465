"""会话内容存档 · 产生会话回调事件 (msgaudit_notify).

WeCom doc: 会话内容存档 → 产生会话回调事件 (https://developer.work.weixin.qq.com/document/path/91774).
PROTOCOL.md §2.5, §5. A hint that GetChatData has new records. Pulling them needs Tencent's proprietary
SDK (libWeWorkFinanceSdk_C.so), which sopbot does not ship: the notification is recorded (KV
``tagging:msgaudit_notify``: last time, count) and the records come in through ``POST /api/v1/messages``
or ``sopbot ingest`` from a puller the operator runs beside the SDK (docs/TAGGING.md).
"""

from __future__ import annotations

from bot.actions import Action
from bot.events import Event
from bot.store import Store
from bot.tagging.apply_tagging import RecordArchiveNotify

EVENT = "msgaudit_notify"


def handle_msgaudit_notify(event: Event, store: Store) -> list[Action]:
    """The archive has new data: record when (no puller is configured: the SDK is proprietary)."""
    return [RecordArchiveNotify(event.created_at, event.get("AgentID") or None)]


HANDLERS = {"": handle_msgaudit_notify}
IGNORED: frozenset[str] = frozenset()
