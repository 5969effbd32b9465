"""客户联系 · 企业客户标签变更事件 (change_external_tag).

WeCom doc: 客户联系 → 回调通知 → 企业客户标签事件 (https://developer.work.weixin.qq.com/document/path/92130).
PROTOCOL.md §2.3. Every change type means "the library changed": re-read get_corp_tag_list in a job
so the local mirror stays whole (a shuffle or a group delete touches many tags at once).
"""

from __future__ import annotations

from bot.actions import Action, EnqueueCall
from bot.events import Event
from bot.store import Store

EVENT = "change_external_tag"


def handle_tag_library_changed(event: Event, store: Store) -> list[Action]:
    """企业客户标签创建/变更/删除/重排事件: refresh the corp tag mirror."""
    return [EnqueueCall("sync_corp_tags",
                        {"reason": event.change_type, "id": event.get("Id"), "tag_type": event.get("TagType")},
                        dedupe_key=f"sync_corp_tags:inbox:{event.inbox_id}")]


HANDLERS = {
    "create": handle_tag_library_changed,
    "update": handle_tag_library_changed,
    "delete": handle_tag_library_changed,
    "shuffle": handle_tag_library_changed,
}
IGNORED: frozenset[str] = frozenset()
