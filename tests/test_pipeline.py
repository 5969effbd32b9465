"""Callback -> inbox -> rq worker -> handler -> apply -> admin API, on the real database and Redis."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from bot.db import utcnow
from bot.models import InboxEvent, TimelineEntry
from bot.queues import get_queue
from bot.services import Services
from jobs.events import process_inbox_row
from jobs.sweeper import PENDING_GRACE, sweep
from tests.conftest import ADMIN, fixture_xml, post_event, run_worker

EXT = "wmQ8xTCwAAb3fFp0Yk2nHs9LdE7uVr1w"
ADD = "change_external_contact__add_external_contact"


def _kinds(services: Services) -> list[str]:
    with services.transaction() as s:
        return list(s.scalars(select(TimelineEntry.kind).order_by(TimelineEntry.id)).all())


def _count(services: Services, model: Any) -> int:
    with services.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_event_is_processed_and_visible_on_the_customer(client: Any, services: Services, sim: Any) -> None:
    xml = fixture_xml(ADD)
    assert post_event(client, xml).status_code == 200
    run_worker(services)
    body = client.get(f"/api/v1/customers/{EXT}", headers=ADMIN).get_json()
    assert body["external_userid"] == EXT
    assert [(f["userid"], f["state"], f["deleted_at"]) for f in body["follow_users"]] == [("LiMing", "webinar", None)]
    assert body["follow_users"][0]["added_at"].startswith("2025-01-01T00:00:00")
    kinds = [t["kind"] for t in body["timeline"]]
    assert kinds.count("customer_added") == 1 and kinds.count("tag_added") == 2  # the webinar channel's tags
    entries = _count(services, TimelineEntry)
    # the same delivery three more times: still one inbox row and no new timeline entry
    for nonce in ("a", "b", "c"):
        assert post_event(client, xml, nonce=nonce).status_code == 200
    run_worker(services)
    assert _count(services, InboxEvent) == 1
    assert _count(services, TimelineEntry) == entries
    with services.transaction() as s:
        assert s.scalars(select(InboxEvent.status)).one() == "done"


def test_delete_keeps_the_customer_and_marks_it_lost(client: Any, services: Services, sim: Any) -> None:
    post_event(client, fixture_xml(ADD))
    post_event(client, fixture_xml("change_external_contact__del_follow_user"))
    run_worker(services)
    body = client.get(f"/api/v1/customers/{EXT}", headers=ADMIN).get_json()
    (follow,) = body["follow_users"]
    assert follow["deleted_at"] is not None and follow["deleted_by"] == "customer"
    assert body["lost_at"] is not None
    kinds = [t["kind"] for t in body["timeline"]]
    assert kinds.count("customer_added") == 1 and kinds.count("customer_deleted_employee") == 1
    assert kinds.index("customer_added") < kinds.index("customer_deleted_employee")


def test_redis_outage_is_recovered_by_the_sweeper(client: Any, services: Services, monkeypatch: Any,
                                                  sim: Any) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    def refuse(*_: Any, **__: Any) -> None:
        raise RedisConnectionError("down")

    monkeypatch.setattr("bot.wecom.callback.send_event", refuse)
    assert post_event(client, fixture_xml(ADD)).status_code == 200
    assert get_queue(services.redis, "default").count == 0
    monkeypatch.undo()
    assert sweep(services).inbox == 0  # within the grace period: its job may still be on its way
    report = sweep(services, utcnow() + PENDING_GRACE + timedelta(seconds=1))
    assert report.inbox == 1
    assert sweep(services, utcnow() + PENDING_GRACE + timedelta(seconds=2)).inbox == 0  # job is queued: no double
    run_worker(services)
    with services.transaction() as s:
        assert s.scalars(select(InboxEvent.status)).one() == "done"
    assert client.get(f"/api/v1/customers/{EXT}", headers=ADMIN).status_code == 200


def test_process_event_twice_is_a_noop(client: Any, services: Services) -> None:
    post_event(client, fixture_xml(ADD))
    with services.transaction() as s:
        inbox_id = s.scalars(select(InboxEvent.id)).one()
    assert process_inbox_row(services, inbox_id) == "done"
    entries = _count(services, TimelineEntry)
    assert process_inbox_row(services, inbox_id) == "noop"
    assert _count(services, TimelineEntry) == entries
    assert _kinds(services).count("customer_added") == 1


def test_concurrent_workers_process_a_row_once(client: Any, services: Services) -> None:
    post_event(client, fixture_xml(ADD))
    with services.transaction() as s:
        inbox_id = s.scalars(select(InboxEvent.id)).one()
    results: list[str] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        results.append(process_inbox_row(services, inbox_id))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["done", "noop", "noop", "noop"]
    kinds = _kinds(services)
    assert kinds.count("customer_added") == 1 and kinds.count("tag_added") == 2  # the channel's two tags


def test_failures_are_retried_with_backoff_then_failed_and_visible(client: Any, services: Services,
                                                                    monkeypatch: Any) -> None:
    import handlers

    def explode(event: Any, store: Any) -> list:
        raise RuntimeError("handler bug")

    monkeypatch.setitem(handlers.REGISTRY, "change_external_contact:add_external_contact", explode)
    post_event(client, fixture_xml(ADD))
    with services.transaction() as s:
        inbox_id = s.scalars(select(InboxEvent.id)).one()
    now = utcnow()
    for attempt in range(1, services.settings.inbox_max_attempts + 1):
        try:
            process_inbox_row(services, inbox_id, now=now)
        except RuntimeError:
            pass
        with services.transaction() as s:
            row = s.get(InboxEvent, inbox_id)
            assert row is not None and row.attempts == attempt and "handler bug" in (row.last_error or "")
            if attempt < services.settings.inbox_max_attempts:
                assert row.status == "retry" and row.next_attempt_at is not None and row.next_attempt_at > now
                now = row.next_attempt_at
            else:
                assert row.status == "failed"
    failed = client.get("/api/v1/inbox?status=failed", headers=ADMIN).get_json()["items"]
    assert [(i["id"], i["status"]) for i in failed] == [(inbox_id, "failed")]
    assert _count(services, TimelineEntry) == 0  # nothing half-written


def test_unknown_event_is_recorded_and_acknowledged(client: Any, services: Services) -> None:
    xml = ("<xml><ToUserName><![CDATA[ww59709431338c5fb3]]></ToUserName><FromUserName><![CDATA[sys]]>"
           "</FromUserName><CreateTime>1735690000</CreateTime><MsgType><![CDATA[event]]></MsgType>"
           "<Event><![CDATA[some_future_event]]></Event></xml>")
    assert post_event(client, xml).status_code == 200
    run_worker(services)
    items = client.get("/api/v1/inbox?status=ignored", headers=ADMIN).get_json()["items"]
    assert [i["event_key"] for i in items] == ["some_future_event"]
