"""run_outbox(outbox_id): execute one outbound row (a WeCom call) exactly once in effect.

1. claim: compare-and-set pending/retry -> running with a lease (committed), so a duplicate job
   or a second worker finds nothing to do;
2. call WeCom outside any transaction (the client retries transient errors with backoff and
   refreshes the token once on 40014/42001);
3. complete: in one transaction, apply the follow-up actions the call produced and mark the
   row done. A crash between 2 and 3 leaves the row `running`; when its lease ends the sweeper
   makes it `retry`. The calls chosen here are idempotent on WeCom's side (mark_tag sets state,
   a second send_welcome_msg answers 41051), so that window cannot double an effect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select, update

from bot.actions import Action
from bot.apply import apply
from bot.db import rowcount, utcnow
from bot.logs import job_context, log_context
from bot.models import Outbox
from bot.observability import JOB_FAILURES, JOBS, errcode_of
from bot.queues import enqueue_outbox
from bot.services import Services
from jobs.worker import get_services

log = logging.getLogger("sopbot.jobs.outbox")

__all__ = ["run_outbox", "run_outbox_row", "Outcome", "EXECUTORS", "executor", "LEASE", "MAX_ATTEMPTS", "lease"]

LEASE = timedelta(minutes=5)  # longer than any single call with its in-process retries
MAX_ATTEMPTS = 6
RETRY_BASE_SECONDS = 15


class Retry(Exception):  # noqa: N818 - reads as an instruction at the raise site
    """Raised by an executor for a transient failure: try the row again later."""


class GiveUp(Exception):  # noqa: N818
    """Raised by an executor for a permanent failure: record it, never retry."""


@dataclass
class Outcome:
    actions: list[Action] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


Executor = Callable[[Services, dict[str, Any], Outbox], Outcome]
EXECUTORS: dict[str, Executor] = {}


def executor(kind: str) -> Callable[[Executor], Executor]:
    def register(fn: Executor) -> Executor:
        if kind in EXECUTORS:
            raise ValueError(f"duplicate executor for {kind!r}")
        EXECUTORS[kind] = fn
        return fn
    return register


def run_outbox(outbox_id: int) -> str:
    """rq entry point."""
    with job_context("run_outbox"):
        return run_outbox_row(get_services(), outbox_id)


def run_outbox_row(services: Services, outbox_id: int, now: datetime | None = None) -> str:
    import jobs.executors  # noqa: F401 - these imports register the executors
    import jobs.handover  # noqa: F401
    import jobs.scoring  # noqa: F401
    import jobs.sop  # noqa: F401
    import jobs.tagging  # noqa: F401

    now = now or utcnow()
    with services.transaction() as session:
        claimed = rowcount(session.execute(
            update(Outbox)
            .where(Outbox.id == outbox_id, Outbox.status.in_(("pending", "retry")))
            .where((Outbox.not_before.is_(None)) | (Outbox.not_before <= now))
            .values(status="running", attempts=Outbox.attempts + 1, next_attempt_at=now + lease(services))
        ))
        if not claimed:
            return "noop"
        row = session.get(Outbox, outbox_id)
        assert row is not None  # noqa: S101
        session.expunge(row)
    with log_context(outbox_id=outbox_id, outbox_kind=row.kind):  # on every line logged during the call
        return _execute(services, row, now)


def _execute(services: Services, row: Outbox, now: datetime) -> str:
    outbox_id = row.id
    run = EXECUTORS.get(row.kind)
    try:
        if run is None:
            raise GiveUp(f"no executor for outbox kind {row.kind!r}")
        if row.deadline_at is not None and now > row.deadline_at:
            raise GiveUp(f"deadline {row.deadline_at.isoformat()} passed before the call")
        outcome = run(services, dict(row.payload), row)
    except GiveUp as exc:
        _finish(services, outbox_id, "failed", error=str(exc))
        JOBS.labels(kind=row.kind, outcome="failed").inc()
        JOB_FAILURES.labels(kind=row.kind, outcome="failed", errcode=errcode_of(exc)).inc()
        log.warning("outbox %s gave up: %s", row.kind, exc, extra={"outbox_id": outbox_id})
        return "failed"
    except Exception as exc:  # transient or unexpected: retried with backoff, bounded
        status = "failed" if row.attempts >= MAX_ATTEMPTS else "retry"
        delay = timedelta(seconds=RETRY_BASE_SECONDS * 2 ** (row.attempts - 1))
        _finish(services, outbox_id, status, error=f"{type(exc).__name__}: {exc}", next_at=now + delay)
        JOBS.labels(kind=row.kind, outcome=status).inc()
        JOB_FAILURES.labels(kind=row.kind, outcome=status, errcode=errcode_of(exc)).inc()
        log.warning("outbox %s -> %s: %s", row.kind, status, exc, extra={"outbox_id": outbox_id})
        return status
    follow_ups: list[tuple[int, str]] = []
    with services.transaction() as session:
        ids = apply(outcome.actions, session, now=utcnow(), context_key=f"outbox:{outbox_id}")
        session.execute(update(Outbox).where(Outbox.id == outbox_id).values(
            status="done", done_at=utcnow(), result=outcome.result, last_error=None, next_attempt_at=None))
        if ids:
            follow_ups = [(i, q) for i, q in session.execute(
                select(Outbox.id, Outbox.queue).where(Outbox.id.in_(ids))).all()]
    JOBS.labels(kind=row.kind, outcome="done").inc()
    if follow_ups:
        try:
            enqueue_outbox(services.redis, follow_ups)
        except RedisError:
            log.warning("follow-up enqueue failed; left for the sweeper", extra={"outbox_id": outbox_id})
    return "done"


def lease(services: Services) -> timedelta:
    """The claim's lease: LEASE, or SOPBOT_OUTBOX_LEASE_SECONDS (short in crash tests, so recovery is quick)."""
    raw = services.settings.extra.get("SOPBOT_OUTBOX_LEASE_SECONDS")
    return timedelta(seconds=float(raw)) if raw else LEASE


def _finish(services: Services, outbox_id: int, status: str, *, error: str,
            next_at: datetime | None = None) -> None:
    with services.transaction() as session:
        session.execute(update(Outbox).where(Outbox.id == outbox_id).values(
            status=status, last_error=error[:2000], next_attempt_at=next_at if status == "retry" else None))
