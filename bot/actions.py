"""Actions: the vocabulary between pure handlers and bot/apply.py (the one executor of side effects).

Handlers return a list of these frozen dataclasses; nothing else in a handler writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "Action", "UpsertCustomer", "UpsertFollow", "EndFollow", "RecordTimeline", "EnqueueCall",
    "TagRef", "AddTags", "RemoveTags", "UpsertEmployee", "MarkEmployeeLeft", "SyncCorpTags",
    "UpsertGroup", "GroupMembersChanged", "DismissGroup", "RecordUnknown", "SyncContacts",
]


@dataclass(frozen=True)
class TagRef:
    """A corp tag by its group and name (`意向:询价`); WeCom ids are resolved at apply/call time."""

    group: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TagRef:
        group, sep, name = text.partition(":")
        if not sep or not group.strip() or not name.strip():
            raise ValueError(f"tag must be written 'group:name', got {text!r}")
        return cls(group.strip(), name.strip())

    def __str__(self) -> str:
        return f"{self.group}:{self.name}"


@dataclass(frozen=True)
class Action:
    pass


@dataclass(frozen=True)
class UpsertCustomer(Action):
    external_userid: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UpsertFollow(Action):
    external_userid: str
    userid: str
    added_at: datetime | None = None
    state: str | None = None
    half_added: bool = False
    fields: Mapping[str, Any] = field(default_factory=dict)  # remark, description, add_way, oper_userid


@dataclass(frozen=True)
class EndFollow(Action):
    """A side deleted the other: by = employee | customer | transfer. The customer is kept."""

    external_userid: str
    userid: str
    at: datetime
    by: str


@dataclass(frozen=True)
class RecordTimeline(Action):
    external_userid: str
    kind: str
    at: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)
    userid: str | None = None
    source: str = "wecom"
    dedupe_key: str | None = None


@dataclass(frozen=True)
class EnqueueCall(Action):
    """Outbound work: an outbox row (kind + JSON payload) and an rq job that executes it once."""

    kind: str
    payload: Mapping[str, Any]
    dedupe_key: str
    queue: str = "default"
    deadline_at: datetime | None = None
    not_before: datetime | None = None


@dataclass(frozen=True)
class AddTags(Action):
    external_userid: str
    tags: tuple[TagRef, ...]
    source: str  # channel | keyword_rule | behaviour_rule | manual | wecom
    reason: Mapping[str, Any] = field(default_factory=dict)
    at: datetime | None = None
    userid: str | None = None  # the follow user whose pair gets mark_tag; None = every active follow
    mark_in_wecom: bool = True


@dataclass(frozen=True)
class RemoveTags(Action):
    external_userid: str
    tags: tuple[TagRef, ...]
    source: str
    reason: Mapping[str, Any] = field(default_factory=dict)
    at: datetime | None = None
    userid: str | None = None
    mark_in_wecom: bool = True


@dataclass(frozen=True)
class UpsertEmployee(Action):
    userid: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MarkEmployeeLeft(Action):
    userid: str
    at: datetime


@dataclass(frozen=True)
class SyncCorpTags(Action):
    """Replace the local mirror of the corp tag library with WeCom's get_corp_tag_list answer."""

    tag_groups: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class UpsertGroup(Action):
    chat_id: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    members: tuple[Mapping[str, Any], ...] | None = None  # full member_list from groupchat/get


@dataclass(frozen=True)
class GroupMembersChanged(Action):
    chat_id: str
    joined: tuple[str, ...]
    left: tuple[str, ...]
    at: datetime


@dataclass(frozen=True)
class DismissGroup(Action):
    chat_id: str
    at: datetime


@dataclass(frozen=True)
class SyncContacts(Action):
    """A page of batch/get_by_user rows mirrored in bulk (initial sync): customers, follows, corp tags.

    Each row: {"external_contact": {...}, "follow_info": {...}, "tags": ["group:name", ...]}.
    Bulk upserts, no timeline entries and no domain events: a sync mirrors state, it is not news.
    """

    rows: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class RecordUnknown(Action):
    """An event no handler knows: kept in the inbox as `ignored`, logged, acknowledged."""

    event_key: str
