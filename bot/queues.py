"""rq queues named by latency budget, and the enqueue helpers for inbox and outbox rows.

Job ids are deterministic (`event-<inbox id>`, `outbox-<id>`), so a re-enqueue by the sweeper
of a job that is still queued is recognised and skipped; the jobs themselves are idempotent,
so even a duplicate that slips through does nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

log = logging.getLogger(__name__)

__all__ = ["QUEUE_NAMES", "get_queue", "enqueue_event", "enqueue_outbox", "job_is_live"]

# Priority order for workers: welcome messages have a 20 s window; handover batches can wait.
QUEUE_NAMES = ("realtime", "default", "bulk", "reminders")

# Retry policy lives in the database rows (next_attempt_at), not in Redis: nothing that must
# happen later lives only in Redis. These bound a single run.
EVENT_JOB_TIMEOUT = 120
OUTBOX_JOB_TIMEOUT = 300
RESULT_TTL = 60  # results live in the database; rq only needs them briefly
FAILURE_TTL = 7 * 24 * 3600


def get_queue(conn: redis.Redis, name: str) -> Queue:
    if name not in QUEUE_NAMES:
        raise ValueError(f"unknown queue {name!r}; one of {QUEUE_NAMES}")
    return Queue(name, connection=conn)


def job_is_live(conn: redis.Redis, job_id: str) -> bool:
    """True while a job with this id is queued, running or scheduled (so re-enqueuing would double it)."""
    try:
        status = Job.fetch(job_id, connection=conn).get_status(refresh=False)
    except NoSuchJobError:
        return False
    return status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)


def enqueue_event(conn: redis.Redis, inbox_id: int, *, check_live: bool = False) -> bool:
    job_id = f"event-{inbox_id}"
    if check_live and job_is_live(conn, job_id):
        return False
    # One pipelined round trip instead of rq's two: this runs inside every callback request.
    pipe = conn.pipeline()
    get_queue(conn, "default").enqueue_call(
        "jobs.events.process_event", args=(inbox_id,), job_id=job_id, timeout=EVENT_JOB_TIMEOUT,
        result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, pipeline=pipe,
    )
    pipe.execute()
    return True


def enqueue_outbox(conn: redis.Redis, rows: Iterable[tuple[int, str]], *, check_live: bool = False) -> int:
    """Enqueue `jobs.wecom_calls.run_outbox(id)` for (id, queue) pairs; returns how many were enqueued."""
    count = 0
    for outbox_id, queue in rows:
        job_id = f"outbox-{outbox_id}"
        if check_live and job_is_live(conn, job_id):
            continue
        get_queue(conn, queue).enqueue_call(
            "jobs.wecom_calls.run_outbox", args=(outbox_id,), job_id=job_id, timeout=OUTBOX_JOB_TIMEOUT,
            result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
        )
        count += 1
    return count
