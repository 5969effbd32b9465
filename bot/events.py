"""Event: the normalised form of any inbound WeCom callback.

The decrypted XML is parsed with expat hardened as defusedxml hardens it (DTDs and entities
refused: no XML bomb, no XXE) into a flat dict of element texts; repeated `<Item>` children
become lists. Every element is optional text, because WeCom adds fields over time
(PROTOCOL.md §2.0).

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
from typing import Any, NoReturn
from xml.parsers import expat

from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden

__all__ = ["Event", "EventParseError", "parse_xml", "dedupe_key", "event_key_of"]


class EventParseError(ValueError):
    """The payload is not WeCom XML we can read (HTTP 400)."""


# WeCom's documents are 3-4 levels deep (xml > list > Item > field); anything far deeper is not WeCom's.
MAX_XML_DEPTH = 32


def _refuse_dtd(name: str, sysid: str | None, pubid: str | None, _has_internal_subset: bool) -> NoReturn:
    raise DTDForbidden(name, sysid, pubid)


def _refuse_entity(name: str, _is_param: bool, value: str | None, base: str | None, sysid: str | None,
                   pubid: str | None, notation: str | None) -> NoReturn:
    raise EntitiesForbidden(name, value, base, sysid, pubid, notation)


def _refuse_unparsed_entity(name: str, base: str | None, sysid: str | None, pubid: str | None,
                            notation: str | None) -> NoReturn:
    raise EntitiesForbidden(name, None, base, sysid, pubid, notation)


def _refuse_external(context: str, base: str | None, sysid: str | None, pubid: str | None) -> NoReturn:
    raise ExternalReferenceForbidden(context, base, sysid, pubid)


class _Tree:
    """Builds the dict while expat reads, element by element (no ElementTree, no second walk).

    A frame is [tag, children as (tag, value) pairs, character data]. A leaf's value is its stripped text; an
    element whose children are all `<Item>` is their list; any other is a dict of its children (a repeated tag
    keeps the last). Text beside child elements, attributes and comments are ignored. Namespaced names read
    `{uri}local`, as in ElementTree.
    """

    __slots__ = ("stack", "value")

    def __init__(self) -> None:
        self.stack: list[list[Any]] = []
        self.value: tuple[str, Any] | None = None

    def start(self, tag: str, _attrs: Any) -> None:
        if len(self.stack) >= MAX_XML_DEPTH:
            raise EventParseError(f"XML nested deeper than {MAX_XML_DEPTH} levels")
        self.stack.append(["{" + tag if "}" in tag else tag, [], []])

    def data(self, text: str) -> None:
        self.stack[-1][2].append(text)

    def end(self, _tag: str) -> None:
        tag, children, text = self.stack.pop()
        value: Any
        if not children:
            value = "".join(text).strip()
        elif all(child == "Item" for child, _ in children):
            value = [v for _, v in children]
        else:
            value = dict(children)
        if self.stack:
            self.stack[-1][1].append((tag, value))
        else:
            self.value = (tag, value)


def _parse_tree(xml: str | bytes) -> tuple[str, Any]:
    """Parse with expat hardened the way defusedxml hardens it: its four handlers and its exceptions.

    defusedxml's ElementTree parser is expat driven through ElementTree's pure-Python XMLParser and TreeBuilder,
    then a walk of the tree: 3x the CPU of this on a WeCom payload, twice on every callback.
    `tests/test_events_xml.py` holds this equal to that parser on generated documents, refusals included.
    """
    parser = expat.ParserCreate(None, "}")
    parser.buffer_text = True
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_entity
    parser.UnparsedEntityDeclHandler = _refuse_unparsed_entity
    parser.ExternalEntityRefHandler = _refuse_external
    tree = _Tree()
    parser.StartElementHandler = tree.start
    parser.EndElementHandler = tree.end
    parser.CharacterDataHandler = tree.data
    parser.Parse(xml, True)
    if tree.value is None:  # expat itself reports a document without an element; kept for the type
        raise EventParseError("no element found")
    return tree.value


def parse_xml(xml: str | bytes) -> dict[str, Any]:
    """Parse a WeCom XML document (`<xml>…</xml>`) into a dict; refuses DTDs and entities."""
    try:
        tag, value = _parse_tree(xml)
    except DefusedXmlException as exc:
        raise EventParseError(f"XML refused: {type(exc).__name__} (DTDs and entities are not allowed)") from exc
    except EventParseError:
        raise
    except Exception as exc:  # ExpatError and friends: report, never crash the view
        raise EventParseError(f"not well-formed XML: {exc}") from exc
    if tag != "xml":
        raise EventParseError(f"root element is <{tag}>, expected <xml>")
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
