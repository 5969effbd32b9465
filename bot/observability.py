"""Prometheus metrics: `/metrics` on the web app, counters shared with the worker processes.

Counters and histograms are incremented where things happen (callback view, jobs, WeCom client).
Rows and queues are not counted as they change: `StateCollector` reads them at scrape time (a few
indexed queries and one Redis pipeline), so the numbers are right whichever process did the work.

Several processes (gunicorn workers, rq workers, the scheduler) each hold their own counters. When
PROMETHEUS_MULTIPROC_DIR is set — `sopbot dev` sets it to `var/metrics` — prometheus-client writes
them to files in that directory and `/metrics` adds up every process's files, so the web app shows
the workers' job counters too. It must be set before prometheus_client is first imported, and the
directory emptied before the processes start (docs/OPERATIONS.md "Metrics").
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from bot.services import Services

__all__ = [
    "CALLBACKS",
    "JOBS",
    "JOB_FAILURES",
    "REMINDERS",
    "WECOM_CALLS",
    "StateCollector",
    "errcode_of",
    "init_observability",
    "metrics_registry",
    "multiprocess_dir",
    "mark_process_dead",
    "start_metrics_server",
]

log = logging.getLogger("sopbot.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

CALLBACKS = Counter("sopbot_callbacks_total", "WeCom callbacks by result", ["result"])
JOBS = Counter("sopbot_jobs_total", "Jobs by kind and outcome", ["kind", "outcome"])
JOB_FAILURES = Counter(
    "sopbot_job_failures_total",
    "Failed job attempts by kind, outcome (retry: tried again later, failed: given up) and WeCom errcode "
    "(http: HTTP/network error, none: not a WeCom error)",
    ["kind", "outcome", "errcode"],
)
WECOM_CALLS = Histogram("sopbot_wecom_api_seconds", "WeCom API latency by path and errcode", ["path", "errcode"])
REMINDERS = Counter(
    "sopbot_reminders_total",
    "SOP reminder digests (kind=remind) and escalations to managers (kind=escalate): queued by the tick, "
    "sent to WeCom, or error (a send attempt failed; the outbox row retries it)",
    ["kind", "outcome"],
)

INBOX_OPEN = ("pending", "retry", "failed")
OUTBOX_OPEN = ("pending", "retry", "running", "failed")


def errcode_of(exc: BaseException | None) -> str:
    """The WeCom errcode behind an exception (following `raise … from`), as a label value."""
    seen = 0
    while exc is not None and seen < 8:
        if hasattr(exc, "errcode") and hasattr(exc, "path"):
            code = exc.errcode
            return "http" if code is None else str(code)
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return "none"


def api_path_label(path: str) -> str:
    """The API path as a bounded label: no query string, anything unexpected folded into `other`."""
    path = path.split("?", 1)[0].strip("/")
    if len(path) > 64 or not all(c.isalnum() or c in "_/" for c in path):
        return "other"
    return path


# ------------------------------------------------------------------------------------ scrape-time state
class StateCollector(Collector):
    """Inbox and outbox rows by status, their oldest waiting row, rq queue depths — read at scrape time.

    Never raises: a database or Redis that does not answer sets `sopbot_scrape_errors{source}` to 1
    and leaves that source's gauges out of this scrape.
    """

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        errors = GaugeMetricFamily("sopbot_scrape_errors", "1 when this scrape could not read the source",
                                   labels=["source"])
        for source, read in (("database", self._database), ("redis", self._redis)):
            try:
                metrics = list(read())
            except Exception:  # noqa: BLE001 - the scrape must answer whatever is down
                log.warning("metrics scrape could not read the %s", source, exc_info=True)
                errors.add_metric([source], 1)
                continue
            errors.add_metric([source], 0)
            yield from metrics
        yield errors

    def _database(self) -> Iterable[Metric]:
        from sqlalchemy import func, or_, select

        from bot.db import utcnow
        from bot.models import InboxEvent, Outbox

        now = utcnow()
        with self.services.connect() as conn:
            inbox = dict(conn.execute(select(InboxEvent.status, func.count()).where(
                InboxEvent.status.in_(INBOX_OPEN)).group_by(InboxEvent.status)).all())
            oldest_inbox = conn.scalar(select(func.min(InboxEvent.received_at)).where(
                InboxEvent.status.in_(("pending", "retry"))))
            outbox = dict(conn.execute(select(Outbox.status, func.count()).where(
                Outbox.status.in_(OUTBOX_OPEN)).group_by(Outbox.status)).all())
            oldest_outbox = conn.scalar(select(func.min(Outbox.created_at)).where(
                Outbox.status == "pending", or_(Outbox.not_before.is_(None), Outbox.not_before <= now)))
        yield _by_label("sopbot_inbox_rows", "Inbox rows (WeCom callbacks) not done, by status", "status",
                        {s: inbox.get(s, 0) for s in INBOX_OPEN})
        yield GaugeMetricFamily("sopbot_inbox_lag_seconds", "Age of the oldest pending or retry inbox row (0: none)",
                                value=_age(now, oldest_inbox))
        yield _by_label("sopbot_outbox_rows", "Outbox rows (WeCom calls) not done, by status", "status",
                        {s: outbox.get(s, 0) for s in OUTBOX_OPEN})
        yield GaugeMetricFamily("sopbot_outbox_lag_seconds", "Age of the oldest due pending outbox row (0: none)",
                                value=_age(now, oldest_outbox))

    def _redis(self) -> Iterable[Metric]:
        from rq import Worker

        from bot.queues import QUEUE_NAMES, get_queue

        conn = self.services.redis
        queues = [get_queue(conn, name) for name in QUEUE_NAMES]
        pipe = conn.pipeline(transaction=False)
        for q in queues:
            pipe.llen(q.key)
            pipe.zcard(q.started_job_registry.key)
            pipe.zcard(q.failed_job_registry.key)
        answers = [int(a) for a in pipe.execute()]
        yield _by_label("sopbot_queue_jobs", "Jobs waiting in each rq queue", "queue",
                        {q.name: answers[3 * i] for i, q in enumerate(queues)})
        yield _by_label("sopbot_queue_started_jobs", "Jobs running now (rq started registry)", "queue",
                        {q.name: answers[3 * i + 1] for i, q in enumerate(queues)})
        yield _by_label("sopbot_queue_failed_jobs", "Jobs in each queue's rq failed registry (crashed or timed out)",
                        "queue", {q.name: answers[3 * i + 2] for i, q in enumerate(queues)})
        yield GaugeMetricFamily("sopbot_rq_workers", "rq workers registered in Redis", value=Worker.count(conn))


def _by_label(name: str, doc: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def _age(now: datetime, oldest: datetime | None) -> float:
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:  # a raw Core read on SQLite may skip the column type's conversion
        oldest = oldest.replace(tzinfo=now.tzinfo)
    return max(0.0, (now - oldest).total_seconds())


# ----------------------------------------------------------------------------------- multiple processes
def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def mark_process_dead(pid: int) -> None:
    """Drop a finished process's live gauges (its counters stay: totals must not go down)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class _Combined(Collector):
    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def metrics_registry(services: Services | None = None) -> Collector:
    """What /metrics serves: this process's registry, or every process's files in multiprocess mode,
    plus the scrape-time state when `services` is given."""
    parts: list[Any] = []
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        parts.append(registry)
    else:
        parts.append(REGISTRY)
    if services is not None:
        parts.append(StateCollector(services))
    return _Combined(*parts)


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> Any:  # noqa: S104 - a metrics port
    """Serve this process's counters (or the shared directory's) on their own port: `--metrics-port`.

    Returns the (daemon-threaded) HTTP server; port 0 picks a free one (`server.server_port`)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr, registry=metrics_registry())
    return server


metrics_bp = Blueprint("metrics", __name__)


@metrics_bp.get("/metrics")
def metrics() -> Response:
    from bot import get_services

    started = time.perf_counter()
    body = generate_latest(metrics_registry(get_services(current_app)))
    log.debug("metrics scrape took %.3fs", time.perf_counter() - started)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


def init_observability(app: Flask) -> None:
    app.register_blueprint(metrics_bp)
    if not logging.getLogger().handlers:  # nobody set logging up (`gunicorn wsgi:app`): JSON lines, secrets masked
        from bot.logs import configure, secrets_of

        settings = app.extensions["sopbot"].settings
        configure(settings.log_format or "json", secrets=secrets_of(settings))
