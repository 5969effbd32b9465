"""process_event(inbox_id): route one recorded callback to its handler and apply the actions.

Exactly-once in effect: the first statement of the transaction flips the row from pending/retry
to done with a compare-and-set UPDATE, which takes the row lock (PostgreSQL) or the write lock
(SQLite, BEGIN IMMEDIATE). The handler's actions are applied in the same transaction, so either
everything commits together or nothing does and the row stays claimable. A second run, or a
concurrent duplicate, finds nothing to claim and returns.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from redis.exceptions import RedisError
from sqlalchemy import select, update

import handlers
from bot.actions import Action, RecordUnknown
from bot.apply import apply
from bot.db import rowcount, utcnow
from bot.events import Event
from bot.logs import job_context, log_context
from bot.models import InboxEvent, Outbox
from bot.observability import JOB_FAILURES, JOBS, errcode_of
from bot.queues import enqueue_outbox
from bot.services import Services
from bot.store import SqlStore
from jobs.worker import get_services

log = logging.getLogger("sopbot.jobs.events")

__all__ = ["process_event", "process_inbox_row", "retry_delay"]

# Backoff for failed processing: 10 s, 40 s, 160 s, … capped at 1 h (named at the retry site).
RETRY_BASE_SECONDS = 10
RETRY_MAX_SECONDS = 3600


def retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(RETRY_BASE_SECONDS * 4 ** max(attempts - 1, 0), RETRY_MAX_SECONDS))


def process_event(inbox_id: int) -> str:
    """rq entry point."""
    with job_context("process_event"):
        return process_inbox_row(get_services(), inbox_id)


def process_inbox_row(services: Services, inbox_id: int, now: datetime | None = None) -> str:
    with log_context(inbox_id=inbox_id):  # every line logged while processing the row carries its id
        return _process(services, inbox_id, now or utcnow())


def _process(services: Services, inbox_id: int, now: datetime) -> str:
    outbox_ids: list[int] = []
    try:
        with services.transaction() as session:
            claimed = rowcount(session.execute(
                update(InboxEvent)
                .where(InboxEvent.id == inbox_id, InboxEvent.status.in_(("pending", "retry")))
                .values(status="done", processed_at=now, attempts=InboxEvent.attempts + 1, last_error=None)
            ))
            if not claimed:
                return "noop"
            row = session.get(InboxEvent, inbox_id)
            assert row is not None  # noqa: S101 - just claimed
            event = Event.from_fields(row.payload, row.corp_id, inbox_id=row.id, received_at=row.received_at)
            handler = handlers.lookup(event.key)
            actions: list[Action]
            if handler is not None:
                actions = handler(event, SqlStore(session, services.channels))
            else:
                if event.key not in handlers.IGNORED_KEYS:
                    log.info("no handler for %s; recorded and acknowledged", event.key,
                             extra={"inbox_id": inbox_id})
                row.status = "ignored"
                actions = [RecordUnknown(event.key)]
            outbox_ids = apply(actions, session, now=now, context_key=f"inbox:{inbox_id}", inbox_id=inbox_id)
            queued = session.execute(select(Outbox.id, Outbox.queue).where(Outbox.id.in_(outbox_ids))).all()
    except Exception as exc:
        outcome = _record_failure(services, inbox_id, exc, now)
        JOBS.labels(kind="process_event", outcome="error").inc()
        JOB_FAILURES.labels(kind="process_event", outcome=outcome, errcode=errcode_of(exc)).inc()
        raise
    JOBS.labels(kind="process_event", outcome="done").inc()
    if queued:
        try:
            enqueue_outbox(services.redis, [(i, q) for i, q in queued])
        except RedisError:
            log.warning("outbox enqueue failed; the sweeper will pick the rows up", extra={"inbox_id": inbox_id})
    return "done"


def _record_failure(services: Services, inbox_id: int, exc: BaseException, now: datetime) -> str:
    """Outside the failed transaction: count the attempt, keep the error, schedule the retry.

    Returns what became of the row: `retry`, `failed` (for good) or `noop` (no longer open)."""
    error = f"{type(exc).__name__}: {exc}"[:2000]
    with services.transaction() as session:
        row = session.get(InboxEvent, inbox_id)
        if row is None or row.status not in ("pending", "retry"):
            return "noop"
        row.attempts += 1
        row.last_error = error
        if row.attempts >= services.settings.inbox_max_attempts:
            row.status = "failed"
            row.next_attempt_at = None
            log.error("inbox row failed for good after %d attempts: %s", row.attempts, error,
                      extra={"inbox_id": inbox_id})
        else:
            row.status = "retry"
            row.next_attempt_at = now + retry_delay(row.attempts)
            log.warning("inbox row will be retried: %s", error, extra={"inbox_id": inbox_id})
        return str(row.status)
