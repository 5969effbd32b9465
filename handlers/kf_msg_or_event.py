"""微信客服 · 接收消息和事件 (kf_msg_or_event).

WeCom doc: 微信客服 → 接收消息和事件 (https://developer.work.weixin.qq.com/document/path/94670).
PROTOCOL.md §2.4, §3.9. The callback carries no content, only a Token (valid 10 minutes) and the
OpenKfId: the messages are pulled with kf/sync_msg from the saved cursor in a job (jobs/tagging.py).
"""

from __future__ import annotations

from bot.actions import Action, EnqueueCall
from bot.events import Event
from bot.store import Store

EVENT = "kf_msg_or_event"


def handle_kf_msg_or_event(event: Event, store: Store) -> list[Action]:
    """A KF account has new messages: pull them (one job per callback; the job serialises per account)."""
    open_kfid = event.get("OpenKfId")
    if not open_kfid:
        return []  # nothing to pull from; the inbox row keeps the payload for inspection
    return [EnqueueCall("kf_sync", {"open_kfid": open_kfid, "token": event.get("Token") or None},
                        dedupe_key=f"kf_sync:inbox:{event.inbox_id}" if event.inbox_id is not None
                        else f"kf_sync:{open_kfid}:{event.get('Token')}",
                        queue="realtime")]


HANDLERS = {"": handle_kf_msg_or_event}
IGNORED: frozenset[str] = frozenset()
