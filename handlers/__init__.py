"""Handler registry: event key -> pure handler `(event, store) -> list[Action]`.

Each module under handlers/ names its WeCom `EVENT` (or MsgType), and exports `HANDLERS`
(change type -> function; "" for events without a change type) and `IGNORED` (change
types we acknowledge on purpose without work). A key claimed twice raises at import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType

from bot.actions import Action
from bot.events import Event
from bot.store import Store

from . import (
    change_contact,
    change_external_chat,
    change_external_contact,
    change_external_tag,
    kf_msg_or_event,
    msgaudit_notify,
    text,
)

Handler = Callable[[Event, Store], list[Action]]

__all__ = ["Handler", "MODULES", "REGISTRY", "IGNORED_KEYS", "build_registry", "lookup", "key_for"]

MODULES: tuple[ModuleType, ...] = (
    change_external_contact,
    change_external_chat,
    change_external_tag,
    change_contact,
    kf_msg_or_event,
    msgaudit_notify,
    text,
)


def key_for(event: str, change_type: str) -> str:
    return f"{event}:{change_type}" if change_type else event


def build_registry(modules: Iterable[ModuleType]) -> tuple[dict[str, Handler], frozenset[str]]:
    registry: dict[str, Handler] = {}
    ignored: set[str] = set()
    for module in modules:
        event = module.EVENT
        for change_type, fn in module.HANDLERS.items():
            key = key_for(event, change_type)
            if key in registry or key in ignored:
                raise ValueError(f"duplicate handler for {key!r} in {module.__name__}")
            registry[key] = fn
        for change_type in module.IGNORED:
            key = key_for(event, change_type)
            if key in registry or key in ignored:
                raise ValueError(f"duplicate handler for {key!r} in {module.__name__}")
            ignored.add(key)
    return registry, frozenset(ignored)


REGISTRY, IGNORED_KEYS = build_registry(MODULES)


def lookup(key: str) -> Handler | None:
    return REGISTRY.get(key)
