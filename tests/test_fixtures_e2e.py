"""Every handled event's fixture, end to end: encrypted and signed by the reference implementation,
POSTed to the callback, processed by a real worker, its inbox row `done` and its effects visible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import handlers
from bot.events import event_key_of, parse_xml
from bot.models import InboxEvent, TimelineEntry
from bot.services import Services
from tests.conftest import FIXTURES, SimHarness, post_event, run_worker

FIXTURE_FILES = sorted(FIXTURES.glob("*.xml"))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture_end_to_end(path: Path, client: Any, services: Services, sim: SimHarness) -> None:
    xml = path.read_text(encoding="utf-8")
    key = event_key_of(parse_xml(xml))
    assert key in handlers.REGISTRY
    resp = post_event(client, xml)
    assert (resp.status_code, resp.data) == (200, b"")
    run_worker(services)
    with services.transaction() as s:
        row = s.scalars(select(InboxEvent)).one()
        assert (row.event_key, row.status, row.last_error) == (key, "done", None)
        timeline = s.scalars(select(TimelineEntry.kind).where(TimelineEntry.inbox_id == row.id)).all()
    # events about a customer leave a trace on that customer's timeline
    if parse_xml(xml).get("ExternalUserID"):
        assert timeline, f"{path.stem} recorded nothing on the timeline"
