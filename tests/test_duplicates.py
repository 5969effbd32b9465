"""Every event delivered 1-4 times, in random order, byte for byte as WeCom retries it: each processed once."""

from __future__ import annotations

import os
import random
from collections import Counter

from sqlalchemy import func, select

from bot.models import InboxEvent, TimelineEntry
from bot.services import Services
from tests.conftest import SimHarness, run_worker

# bench-sized runs (10,000 events) live in bench/; the suite runs the same check scaled down
EVENTS = int(os.environ.get("SOPBOT_DUPLICATE_EVENTS", "150" if os.environ.get("CI") else "60"))


def test_redelivered_events_are_processed_exactly_once(services: Services, sim: SimHarness) -> None:
    rng = random.Random(4242)
    sim.hold = True
    for i in range(EVENTS):
        sim.control("actions/add_customer", {"userid": "WangFang", "name": f"重复{i:04d}", "state": "webinar"})
    sim.hold = False
    deliveries = [d for d in sim.held for _ in range(rng.randint(1, 4))]
    rng.shuffle(deliveries)
    assert len(deliveries) > EVENTS * 2
    for n, (query, body) in enumerate(deliveries, 1):
        assert sim.deliver(query, body) == 200
        if n % 50 == 0:
            run_worker(services)  # retries arrive while earlier copies are being processed
    run_worker(services)

    with services.transaction() as s:
        assert s.scalar(select(func.count()).select_from(InboxEvent)) == EVENTS
        assert set(s.scalars(select(InboxEvent.status)).all()) == {"done"}
        added = Counter(s.scalars(select(TimelineEntry.customer_id).where(TimelineEntry.kind == "customer_added")))
        tags = Counter(s.scalars(select(TimelineEntry.customer_id).where(TimelineEntry.kind == "tag_added")))
    assert len(added) == EVENTS and set(added.values()) == {1}
    assert set(tags.values()) == {2}  # the webinar channel's two tags, once each
    ok = [c for c in sim.calls() if c["errcode"] == 0]
    marks = Counter((c["body"]["userid"], c["body"]["external_userid"]) for c in ok
                    if c["path"] == "externalcontact/mark_tag")
    welcomes = Counter(c["body"]["welcome_code"] for c in ok if c["path"] == "externalcontact/send_welcome_msg")
    assert len(marks) == EVENTS and set(marks.values()) == {1}
    assert set(welcomes.values()) == {1}
