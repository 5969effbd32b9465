"""Every handled key has a fixture and a test; every fixture routes to a handler (rule 2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import handlers
from bot.events import event_key_of, parse_xml
from tests.conftest import FIXTURES

TESTS = Path(__file__).resolve().parent


def _fixture_key(path: Path) -> str:
    return event_key_of(parse_xml(path.read_text(encoding="utf-8")))


def _expected_key_from_name(path: Path) -> str:
    parts = path.stem.split("__")
    event = parts[0]
    module = next(m for m in handlers.MODULES if m.EVENT == event)
    change_types = set(module.HANDLERS) | set(module.IGNORED)
    if len(parts) > 1 and parts[1] in change_types:
        return handlers.key_for(event, parts[1])
    return handlers.key_for(event, "")


FIXTURE_FILES = sorted(FIXTURES.glob("*.xml"))


def test_there_are_fixtures() -> None:
    assert len(FIXTURE_FILES) >= len(handlers.REGISTRY)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture_routes_to_a_handler_and_matches_its_name(path: Path) -> None:
    key = _fixture_key(path)
    assert key in handlers.REGISTRY, f"orphan fixture {path.name}: {key} routes nowhere"
    assert key == _expected_key_from_name(path), f"{path.name} is named for another key than {key}"


@pytest.mark.parametrize("key", sorted(handlers.REGISTRY))
def test_every_handled_key_has_a_fixture(key: str) -> None:
    assert any(_fixture_key(p) == key for p in FIXTURE_FILES), f"no fixture for {key}"


@pytest.mark.parametrize("key", sorted(handlers.REGISTRY))
def test_every_handled_key_has_a_test(key: str) -> None:
    # A test names the fixture it drives (e.g. "change_external_contact__add_external_contact").
    stems = {p.stem for p in FIXTURE_FILES if _fixture_key(p) == key}
    sources = "\n".join(p.read_text(encoding="utf-8") for p in TESTS.rglob("test_*.py") if p.name != "test_registry.py")
    assert any(re.search(re.escape(stem) + r"\b", sources) for stem in stems), f"no test drives {key}"


def test_duplicate_key_raises() -> None:
    import types

    a = types.SimpleNamespace(EVENT="x", HANDLERS={"y": lambda e, s: []}, IGNORED=frozenset(), __name__="a")
    b = types.SimpleNamespace(EVENT="x", HANDLERS={}, IGNORED=frozenset({"y"}), __name__="b")
    with pytest.raises(ValueError, match="duplicate handler"):
        handlers.build_registry([a, b])  # type: ignore[list-item]
