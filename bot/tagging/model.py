"""Value types of the tagging engines. All frozen: rules are compiled once and shared by workers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

Source = Literal["kf", "archive", "app"]
Direction = Literal["customer", "employee"]
ChatType = Literal["single", "group"]

SOURCES: frozenset[str] = frozenset({"kf", "archive", "app"})
DIRECTIONS: frozenset[str] = frozenset({"customer", "employee"})
CHAT_TYPES: frozenset[str] = frozenset({"single", "group"})


def _require_aware(name: str, value: datetime) -> None:
    # Naive datetimes silently shift by the server's zone; refuse them at the boundary.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message from a customer-text source (微信客服 kf, 会话存档 archive, app)."""

    msg_id: str
    source: Source
    customer_id: str | None
    employee_id: str | None
    group_id: str | None
    direction: Direction
    text: str
    at: datetime

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}")
        _require_aware("InboundMessage.at", self.at)

    @property
    def chat_type(self) -> ChatType:
        return "group" if self.group_id else "single"


class MatchMode(StrEnum):
    CONTAINS = "contains"
    EXACT = "exact"  # the whole normalised message equals the keyword
    PREFIX = "prefix"
    SUFFIX = "suffix"
    REGEX = "regex"  # `regex` module syntax, searched in the normalised text, time-bounded
    WORD = "word"  # no ASCII letter/digit glued to a Latin edge of the keyword


LITERAL_MODES: frozenset[MatchMode] = frozenset(MatchMode) - {MatchMode.REGEX}


@dataclass(frozen=True, slots=True)
class Keyword:
    text: str
    mode: MatchMode = MatchMode.CONTAINS


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a rule applies. Every empty set means "any".

    ``employees`` and ``departments`` together describe one set of people (WeCom's 适用成员 picker
    mixes both): the message's employee must be listed or belong to a listed department.
    """

    employees: frozenset[str] = frozenset()
    departments: frozenset[str] = frozenset()
    chat_types: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()

    def rejects(self, msg: InboundMessage, employee_departments: frozenset[str]) -> str | None:
        """The scope field that excludes ``msg`` ("employee", "department", "chat_type", "source"), or
        None when the rule applies."""
        if self.employees or self.departments:
            listed = msg.employee_id is not None and msg.employee_id in self.employees
            if not listed and self.departments.isdisjoint(employee_departments):
                return "employee" if self.employees else "department"
        if self.chat_types and msg.chat_type not in self.chat_types:
            return "chat_type"
        if self.sources and msg.source not in self.sources:
            return "source"
        return None


@dataclass(frozen=True, slots=True)
class Threshold:
    """Apply only once ``count`` hits (the current one included) fall within ``window``."""

    count: int
    window: timedelta


@dataclass(frozen=True, slots=True)
class KeywordRule:
    id: str
    name: str
    keywords: tuple[Keyword, ...]
    negatives: tuple[Keyword, ...] = ()
    scope: Scope = Scope()
    threshold: Threshold | None = None
    cooldown: timedelta | None = None
    add_tags: tuple[str, ...] = ()  # "group:name", e.g. "意向:询价"
    remove_tags: tuple[str, ...] = ()
    enabled: bool = True


class BehaviourKind(StrEnum):
    ADDED_VIA_CHANNEL = "added_via_channel"  # params: channel
    OPENED_LINK = "opened_link"  # params: material? (absent = any tracked link)
    JOINED_GROUP = "joined_group"  # params: group_id?
    LEFT_GROUP = "left_group"  # params: group_id?
    DELETED_EMPLOYEE = "deleted_employee"  # no params
    NO_REPLY_DAYS = "no_reply_days"  # params: days (time-based: scheduler tick)
    EVENT_COUNT = "event_count"  # params: event_kind, count, window


ParamValue = str | int | timedelta


@dataclass(frozen=True, slots=True)
class BehaviourRule:
    id: str
    name: str
    kind: BehaviourKind
    # Validated and typed by rules.parse_behaviour_rules (window is a timedelta, days/count ints).
    params: Mapping[str, ParamValue] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    add_tags: tuple[str, ...] = ()
    remove_tags: tuple[str, ...] = ()
    cooldown: timedelta | None = None
    enabled: bool = True


class EventKind(StrEnum):
    """Kinds of ``BehaviourEvent`` the service feeds to ``evaluate_event`` (and counts for event_count)."""

    ADDED = "added"  # attrs: channel (the channel code's name/state)
    LINK_OPENED = "link_opened"  # attrs: material
    JOINED_GROUP = "joined_group"  # attrs: group_id
    LEFT_GROUP = "left_group"  # attrs: group_id
    DELETED_EMPLOYEE = "deleted_employee"  # the customer deleted the employee
    CUSTOMER_MESSAGE = "customer_message"


@dataclass(frozen=True, slots=True)
class BehaviourEvent:
    kind: str
    customer_id: str
    employee_id: str | None
    at: datetime
    attrs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def __post_init__(self) -> None:
        _require_aware("BehaviourEvent.at", self.at)
