from __future__ import annotations

from bot.actions import Action
from bot.events import Event, parse_xml
from bot.store import MemoryStore, Store
from tests.conftest import fixture_xml


def event_of(name: str, inbox_id: int = 7) -> Event:
    return Event.from_fields(parse_xml(fixture_xml(name)), "ww59709431338c5fb3", inbox_id=inbox_id)


def run(name: str, store: Store | None = None) -> tuple[Event, list[Action]]:
    import handlers

    event = event_of(name)
    handler = handlers.lookup(event.key)
    assert handler is not None, event.key
    return event, handler(event, store or MemoryStore())


def of_type(actions: list[Action], cls: type) -> list:
    return [a for a in actions if isinstance(a, cls)]
