"""/metrics: counters moved by the pipeline, scrape-time gauges of rows and queues, workers' counters.

Counters are per process and only grow, so each test compares a scrape after the action with one
before it; the gauges describe the (emptied-per-test) database and Redis, so they are exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from bot.db import utcnow
from bot.models import InboxEvent, Outbox
from bot.services import Services
from jobs.sop import tick
from jobs.sweeper import sweep
from tests.conftest import SimHarness, env_for_tests, fixture_xml, post_event, run_worker
from tests.sop_service.helpers import tasks

ADD = "change_external_contact__add_external_contact"
UNKNOWN = ("<xml><ToUserName><![CDATA[ww59709431338c5fb3]]></ToUserName><FromUserName><![CDATA[sys]]>"
           "</FromUserName><CreateTime>1735690000</CreateTime><MsgType><![CDATA[event]]></MsgType>"
           "<Event><![CDATA[some_future_event]]></Event></xml>")
ROOT = Path(__file__).resolve().parents[1]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: Any) -> Samples:
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    out: Samples = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_callbacks_inbox_rows_lag_and_queue_depth(client: Any, services: Services, sim: SimHarness) -> None:
    before = scrape(client)
    assert post_event(client, fixture_xml(ADD)).status_code == 200
    assert post_event(client, fixture_xml("change_external_contact__del_follow_user")).status_code == 200
    assert post_event(client, fixture_xml(ADD), nonce="again").status_code == 200  # WeCom's redelivery
    after = scrape(client)
    assert delta(before, after, "sopbot_callbacks_total", result="accepted") == 2
    assert delta(before, after, "sopbot_callbacks_total", result="duplicate") == 1
    assert value(after, "sopbot_inbox_rows", status="pending") == 2
    assert value(after, "sopbot_inbox_rows", status="failed") == 0
    assert 0 <= value(after, "sopbot_inbox_lag_seconds") < 60
    assert value(after, "sopbot_queue_jobs", queue="default") == 2  # one process_event job per new row
    assert value(after, "sopbot_queue_jobs", queue="realtime") == 0
    assert value(after, "sopbot_scrape_errors", source="database") == 0
    assert value(after, "sopbot_scrape_errors", source="redis") == 0

    with services.transaction() as s:
        first, second = s.scalars(select(InboxEvent.id).order_by(InboxEvent.id)).all()
        s.execute(update(InboxEvent).where(InboxEvent.id == first).values(
            status="retry", received_at=utcnow() - timedelta(minutes=10)))
        s.execute(update(InboxEvent).where(InboxEvent.id == second).values(status="failed"))
    lagging = scrape(client)
    assert value(lagging, "sopbot_inbox_rows", status="retry") == 1
    assert value(lagging, "sopbot_inbox_rows", status="failed") == 1
    assert value(lagging, "sopbot_inbox_rows", status="pending") == 0
    assert 600 <= value(lagging, "sopbot_inbox_lag_seconds") < 660

    assert value(lagging, "sopbot_queue_jobs", queue="default") == 2
    run_worker(services)  # the retry row is done now (the failed one is left alone), the queues drained
    drained = scrape(client)
    assert value(drained, "sopbot_queue_jobs", queue="default") == 0
    assert value(drained, "sopbot_inbox_lag_seconds") == 0
    assert value(drained, "sopbot_inbox_rows", status="retry") == 0
    assert delta(lagging, drained, "sopbot_jobs_total", kind="process_event", outcome="done") == 1
    with services.transaction() as s:
        outbox = s.scalars(select(Outbox.status)).all()
    # all settled: the tag calls went through; the 2025 fixture's welcome is past its window, and the
    # simulator does not know the fixture's customer (40096), so those two are recorded as failed
    assert len(outbox) >= 3 and set(outbox) == {"done", "failed"}
    assert value(drained, "sopbot_outbox_rows", status="failed") == outbox.count("failed") == 2
    assert all(value(drained, "sopbot_outbox_rows", status=st) == 0 for st in ("pending", "retry", "running"))


def test_wecom_latency_and_job_failures_by_errcode(client: Any, services: Services, sim: SimHarness) -> None:
    before = scrape(client)
    # mark_tag answers -1 (busy) five times — the client's own retries, then the row's retry — then 60020.
    sim.control("faults", {"next": {"externalcontact/mark_tag": [-1, -1, -1, -1, -1, 60020]}})
    sim.control("actions/add_customer", {"userid": "WangFang", "name": "周杰", "state": "webinar"})
    run_worker(services)
    with services.transaction() as s:
        status = s.scalars(select(Outbox.status).where(Outbox.kind == "mark_tag")).one()
    assert status == "retry"
    middle = scrape(client)
    assert delta(before, middle, "sopbot_job_failures_total", kind="mark_tag", outcome="retry", errcode="-1") == 1
    sweep(services, utcnow() + timedelta(minutes=10))  # past the row's backoff
    run_worker(services)
    after = scrape(client)
    assert delta(middle, after, "sopbot_job_failures_total", kind="mark_tag", outcome="failed", errcode="60020") == 1
    assert delta(before, after, "sopbot_jobs_total", kind="mark_tag", outcome="failed") == 1
    assert value(after, "sopbot_outbox_rows", status="failed") == 1

    # one histogram sample per HTTP exchange, labelled by path and errcode, as the simulator saw them
    calls = sim.calls()
    for path, code in {("externalcontact/get", 0), ("externalcontact/mark_tag", -1),
                       ("externalcontact/mark_tag", 60020), ("gettoken", 0)}:
        seen = sum(1 for c in calls if c["path"] == path and c["errcode"] == code)
        assert seen >= 1, (path, code)
        assert delta(before, after, "sopbot_wecom_api_seconds_count", path=path, errcode=str(code)) == seen
    assert delta(before, after, "sopbot_wecom_api_seconds_sum", path="externalcontact/get", errcode="0") > 0


def test_reminder_digest_counted_when_queued_and_sent(client: Any, services: Services, sim: SimHarness) -> None:
    added = sim.control("actions/add_customer", {"userid": "WangFang", "name": "周杰", "state": "webinar"})
    run_worker(services)
    (d0,) = [t for t in tasks(services, added["external_userid"]) if t.step_id == "d0_materials"]
    gap = (d0.due_at + timedelta(minutes=1) - datetime.fromtimestamp(sim.state.now(), UTC)).total_seconds()
    sim.state.advance(max(gap, 0))
    before = scrape(client)
    report = tick(services, now=datetime.fromtimestamp(sim.state.now(), UTC))
    assert report.digests == 1
    queued = scrape(client)
    assert delta(before, queued, "sopbot_reminders_total", kind="remind", outcome="queued") == 1
    assert value(queued, "sopbot_queue_jobs", queue="reminders") == 1
    run_worker(services)
    after = scrape(client)
    assert delta(before, after, "sopbot_reminders_total", kind="remind", outcome="sent") == 1
    assert delta(before, after, "sopbot_reminders_total", kind="remind", outcome="error") == 0
    assert len(sim.ok_calls("message/send")) == 1


def test_reminder_send_error_is_counted(client: Any, services: Services, sim: SimHarness) -> None:
    added = sim.control("actions/add_customer", {"userid": "WangFang", "name": "周杰", "state": "webinar"})
    run_worker(services)
    (d0,) = [t for t in tasks(services, added["external_userid"]) if t.step_id == "d0_materials"]
    sim.state.advance(max((d0.due_at - datetime.fromtimestamp(sim.state.now(), UTC)).total_seconds() + 60, 0))
    sim.control("faults", {"next": {"message/send": [60020]}})
    before = scrape(client)
    tick(services, now=datetime.fromtimestamp(sim.state.now(), UTC))
    run_worker(services)
    after = scrape(client)
    assert delta(before, after, "sopbot_reminders_total", kind="remind", outcome="error") == 1
    assert delta(before, after, "sopbot_reminders_total", kind="remind", outcome="sent") == 0
    assert delta(before, after, "sopbot_job_failures_total", kind="send_digest", outcome="failed",
                 errcode="60020") == 1


def test_scrape_answers_when_database_and_redis_are_down(client: Any, services: Services,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import redis
    from sqlalchemy.exc import OperationalError

    def down() -> Any:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(services, "connect", down)
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    gone = redis.Redis(unix_socket_path="/nonexistent/redis.sock", retry=Retry(NoBackoff(), 0))
    monkeypatch.setitem(services.__dict__, "redis", gone)
    samples = scrape(client)
    assert value(samples, "sopbot_scrape_errors", source="database") == 1
    assert value(samples, "sopbot_scrape_errors", source="redis") == 1
    assert not any(name.startswith(("sopbot_inbox_", "sopbot_outbox_", "sopbot_queue_")) for name, _ in samples)


def test_worker_process_counters_show_on_the_web_metrics(client: Any, services: Services, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`sopbot worker` in its own process, sharing PROMETHEUS_MULTIPROC_DIR with the web app (as in `sopbot dev`)."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    assert post_event(client, UNKNOWN).status_code == 200  # ignored by the worker: no WeCom call needed
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPBOT_", "WECOM_"))}
    env.update(env_for_tests(services.settings.database_url, services.redis_url),
               PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), SOPBOT_LOG_FORMAT="json")
    done = subprocess.run([sys.executable, "-m", "bot.cli", "worker", "--burst"], cwd=ROOT, env=env,  # noqa: S603
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(metrics_dir.glob("counter_*.db")), "the worker wrote no counter file"

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))  # the web app reads every process's files
    samples = scrape(client)  # the worker has exited: its files are complete
    assert value(samples, "sopbot_jobs_total", kind="process_event", outcome="done") == 1
    assert value(samples, "sopbot_inbox_rows", status="pending") == 0  # the scrape-time state is there too
    with services.transaction() as s:
        assert s.scalars(select(InboxEvent.status)).one() == "ignored"


def test_metrics_port_serves_this_process_counters() -> None:
    """`sopbot worker --metrics-port`: for workers on hosts without the web app."""
    import urllib.request

    from bot.observability import JOBS, start_metrics_server

    JOBS.labels(kind="metrics_port_probe", outcome="done").inc(3)
    server = start_metrics_server(0, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10) as resp:  # noqa: S310
            body = resp.read().decode()
    finally:
        server.shutdown()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for f in text_string_to_metric_families(body) for s in f.samples}
    assert value(samples, "sopbot_jobs_total", kind="metrics_port_probe", outcome="done") == 3
