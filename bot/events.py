"""Event: the normalised form of any inbound WeCom callback.

The decrypted XML is parsed with defusedxml (DTDs and entities refused: no XML bomb, no
XXE) into a flat dict of element texts; repeated `<Item>` children become lists. Every
element is optional text, because WeCom adds fields over time (PROTOCOL.md §2.0).

wechatpy 2.0.0a26 models some of these events, but not change_contact, msgaudit_notify or
the newer chat fields, so routing does not depend on its message classes; if they are ever
needed, this module is the only place allowed to import them (a swap stays contained).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

__all__ = ["Event", "EventParseError", "parse_xml", "dedupe_key", "event_key_of"]


class EventParseError(ValueError):
    """The payload is not WeCom XML we can read (HTTP 400)."""


# WeCom's documents are 3-4 levels deep (xml > list > Item > field); anything far deeper is not WeCom's.
MAX_XML_DEPTH = 32


def _depth_exceeds(root: Element, limit: int) -> bool:
    stack = [(root, 1)]
    while stack:
        el, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in el)
    return False


def _element_value(el: Element) -> Any:
    children = list(el)
    if not children:
        return (el.text or "").strip()
    if all(c.tag == "Item" for c in children):
        return [_element_value(c) for c in children]
    out: dict[str, Any] = {}
    for c in children:
        out[c.tag] = _element_value(c)
    return out


def parse_xml(xml: str | bytes) -> dict[str, Any]:
    """Parse a WeCom XML document (`<xml>…</xml>`) into a dict; refuses DTDs and entities."""
    try:
        root = fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise EventParseError(f"XML refused: {type(exc).__name__} (DTDs and entities are not allowed)") from exc
    except Exception as exc:  # ParseError and friends: report, never crash the view
        raise EventParseError(f"not well-formed XML: {exc}") from exc
    if root.tag != "xml":
        raise EventParseError(f"root element is <{root.tag}>, expected <xml>")
    if _depth_exceeds(root, MAX_XML_DEPTH):  # _element_value recurses: a deep document must not reach it
        raise EventParseError(f"XML nested deeper than {MAX_XML_DEPTH} levels")
    value = _element_value(root)
    if not isinstance(value, dict):
        raise EventParseError("empty <xml> document")
    return value


EVENT_KEY_MAX = 128  # inbox_events.event_key is VARCHAR(128); no real key comes near it


def event_key_of(fields: Mapping[str, Any]) -> str:
    """Routing key: `Event:ChangeType` for events (switch on Event first), MsgType for messages."""
    msg_type = str(fields.get("MsgType") or "").strip()
    if msg_type == "event":
        name = str(fields.get("Event") or "").strip()
        change = str(fields.get("ChangeType") or "").strip()
        if not name:
            return "event:unknown"
        return (f"{name}:{change}" if change else name)[:EVENT_KEY_MAX]
    return (msg_type or "unknown")[:EVENT_KEY_MAX]


def dedupe_key(corp_id: str, fields: Mapping[str, Any]) -> str:
    """SHA-256 over the whole decrypted payload (canonical JSON).

    Never FromUserName+CreateTime: several add events for different customers arrive in
    the same second from `sys`. A WeCom retry carries the same plaintext, so the same key.
    """
    canonical = json.dumps({"corp": corp_id, "fields": fields}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Event:
    key: str
    corp_id: str
    created_at: datetime
    fields: Mapping[str, Any] = field(default_factory=dict)
    inbox_id: int | None = None
    received_at: datetime | None = None

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], corp_id: str, inbox_id: int | None = None,
                    received_at: datetime | None = None) -> Event:
        raw_time = str(fields.get("CreateTime") or "0").strip()
        try:
            created = datetime.fromtimestamp(int(raw_time), UTC)
        except (ValueError, OverflowError, OSError):
            created = datetime.fromtimestamp(0, UTC)
        return cls(key=event_key_of(fields), corp_id=corp_id, created_at=created, fields=dict(fields),
                   inbox_id=inbox_id, received_at=received_at)

    def get(self, name: str, default: str = "") -> str:
        value = self.fields.get(name, default)
        return value if isinstance(value, str) else default

    # Typed accessors for the common fields (PROTOCOL.md §2).
    @property
    def event(self) -> str:
        return self.get("Event")

    @property
    def change_type(self) -> str:
        return self.get("ChangeType")

    @property
    def userid(self) -> str:
        return self.get("UserID") or self.get("FromUserName")

    @property
    def external_userid(self) -> str:
        return self.get("ExternalUserID")

    @property
    def state(self) -> str | None:
        return self.get("State") or None

    @property
    def welcome_code(self) -> str | None:
        return self.get("WelcomeCode") or None

    @property
    def chat_id(self) -> str:
        return self.get("ChatId")

    @property
    def members_changed(self) -> list[str]:
        value = self.fields.get("MemChangeList")
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
