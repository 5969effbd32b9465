"""rq queues named by latency budget, and the enqueue helpers for inbox and outbox rows.

Job ids are deterministic (`event-<inbox id>`, `outbox-<id>`), so a re-enqueue by the sweeper
of a job that is still queued is recognised and skipped; the jobs themselves are idempotent,
so even a duplicate that slips through does nothing twice.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.scripts import get_unique_enqueue_script
from rq.utils import now, utcformat

log = logging.getLogger(__name__)

__all__ = ["QUEUE_NAMES", "get_queue", "enqueue_event", "send_event", "settle_event_jobs", "enqueue_outbox",
           "job_is_live", "DeadJobCheck"]

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


@dataclass
class DeadJobCheck:
    """For the sweeper's rows still not done after its grace: which of their jobs died with a worker.

    A SIGKILLed worker leaves its job `started`, or, killed between taking it off the queue and starting it,
    `queued` but in no queue (rq's intermediate list, later dropped by rq's cleanup); rq itself notices only
    after the job timeout plus its 10-minute maintenance. So a job `started` longer ago than `after` seconds,
    or `queued` but not in its queue's list, counts as dead. The jobs are idempotent: re-enqueuing one that
    was in fact still running costs one no-op. Each queue's list is read once per check object (one sweep).
    """

    after: float
    queued: dict[str, set[str]] = field(default_factory=dict)

    def dead(self, conn: redis.Redis, job: Job, status: JobStatus | None) -> bool:
        if status == JobStatus.STARTED and job.started_at is not None:
            started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC)
            return (datetime.now(UTC) - started).total_seconds() > self.after
        if status == JobStatus.QUEUED and job.origin in QUEUE_NAMES:
            key = get_queue(conn, job.origin).key
            if key not in self.queued:
                self.queued[key] = {i.decode() if isinstance(i, bytes) else str(i) for i in conn.lrange(key, 0, -1)}
            return job.id not in self.queued[key]
        return False


def job_is_live(conn: redis.Redis, job_id: str, *, dead: DeadJobCheck | None = None) -> bool:
    """True while a job with this id is queued, running or scheduled (so re-enqueuing would double it)."""
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return False
    status = job.get_status(refresh=False)
    if dead is not None and dead.dead(conn, job, status):
        return False
    return status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)


EVENT_FUNC = "jobs.events.process_event"


class _NewEventJobs:
    """`process_event(inbox_id)` jobs for brand-new inbox rows: the callback's hot path, one Redis command.

    rq's own unique enqueue (`Queue.enqueue_call(..., unique=True)`) runs rq's atomic Lua script (save the job
    hash and push its id unless a job with that id exists), but around it spends more CPU than the rest of the
    request's Redis work: a Job object, nine timeout parses, serializer resolution, and a second round trip to
    add the queue to `rq:queues`. Here rq builds the job hash once, for inbox id 0, and each enqueue changes only
    what differs per job (data, description, timestamps) and runs the same rq script; `rq:queues` is added once.
    `tests/test_queues.py` checks that the hash equals the one rq's own enqueue writes and that an rq worker runs
    it. (rq is pinned; that test is what an upgrade must pass.)

    `enqueue` runs the script on a connection taken from the client's pool and waits for the answer, without
    redis-py's per-command layers (its retry loop, operation metrics and response callbacks: about a quarter of
    this call's CPU in redis-py 8.1). NOSCRIPT (Redis restarted or flushed since) loads the script and runs it
    once more. Nothing else is retried: a failed enqueue is the sweeper's (the row is committed already).

    `send` is the callback's way: it writes the command on a connection this process keeps for it and does not
    wait for the answer, which is read before the process's next `send` (or by `settle`). A gunicorn sync worker
    otherwise sat idle for the round trip on every delivery; see docs/PERFORMANCE.md. Answers are handled as
    `enqueue` handles them, one delivery late: NOSCRIPT runs that job once more at once, anything else is logged
    and left to the sweeper, like a failed `enqueue`.
    """

    def __init__(self, conn: redis.Redis) -> None:
        template = Job.create(EVENT_FUNC, args=(0,), id="event-0", connection=conn, timeout=EVENT_JOB_TIMEOUT,
                              result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, origin="default",
                              status=JobStatus.QUEUED)
        template.enqueued_at = now()
        self.fields = template.to_dict()
        self.dumps = template.serializer.dumps
        self.conn = conn
        self.script = get_unique_enqueue_script(conn)
        queue = get_queue(conn, "default")
        self.queue_key = queue.key
        self.job_prefix = Job.redis_job_namespace_prefix
        conn.sadd(queue.redis_queues_keys, queue.key)
        # `send`'s own connection, per process (a forked child opens its own), and the inbox id whose answer is
        # still unread on it.
        self._lock = threading.Lock()
        self._pid = 0
        self._connection: Any = None
        self._unread: int | None = None

    def _command(self, inbox_id: int) -> list[Any]:
        fields = dict(self.fields)
        fields["data"] = zlib.compress(self.dumps((EVENT_FUNC, None, (inbox_id,), {})))
        fields["description"] = f"{EVENT_FUNC}({inbox_id!r})"
        fields["created_at"] = fields["enqueued_at"] = utcformat(now())
        job_id = f"event-{inbox_id}"
        args: list[Any] = ["EVALSHA", self.script.sha, 2, self.job_prefix + job_id, self.queue_key, job_id, "R", -1]
        for item in fields.items():
            args.extend(item)
        return args

    def enqueue(self, inbox_id: int) -> bool:
        """False when a job with this id exists already (nothing written)."""
        created = bool(self._evalsha(self._command(inbox_id)))
        if not created:
            self._existed(inbox_id)
        return created

    @staticmethod
    def _existed(inbox_id: int) -> None:
        log.info("job event-%s exists already; not enqueued twice", inbox_id)

    def _evalsha(self, command: list[Any]) -> Any:
        pool = self.conn.connection_pool
        connection = pool.get_connection()
        try:
            try:
                return self._run(connection, command)
            except NoScriptError:  # Redis restarted or flushed since the script was loaded
                self._load_script(connection)
                return self._run(connection, command)
        except ResponseError:
            raise  # the reply was read whole: the connection is still in step
        except BaseException:
            connection.disconnect()  # a reply may be left unread on it
            raise
        finally:
            pool.release(connection)

    @staticmethod
    def _run(connection: Any, command: list[Any]) -> Any:
        connection.send_command(*command)
        return connection.read_response()

    def send(self, inbox_id: int) -> None:
        """Write this job's command without waiting for the answer. RedisError when it cannot be written."""
        with self._lock:
            connection = self._own_connection()
            self._collect(connection)
            if connection._sock is not None and self._closed_by_server(connection):
                connection.disconnect()  # a restart or an idle timeout: a command written there would be lost
            try:
                if connection._sock is None:
                    self._load_script(connection)
                connection.send_command(*self._command(inbox_id))
            except BaseException:
                connection.disconnect()
                raise
            self._unread = inbox_id

    def _load_script(self, connection: Any) -> None:
        """SCRIPT LOAD on this connection: after a NOSCRIPT, and by `send` on a new connection before its first
        command (a new connection is the process's first delivery, or follows a restart, which empties Redis's
        script cache; its EVALSHA would be answered NOSCRIPT, read only at the next delivery, its job waiting)."""
        connection.send_command("SCRIPT", "LOAD", self.script.script)
        connection.read_response()

    @staticmethod
    def _closed_by_server(connection: Any) -> bool:
        try:
            return bool(connection.can_read(timeout=0))  # nothing is due on it, so anything readable is EOF
        except redis.ConnectionError:
            return True

    def settle(self) -> None:
        """Read the answer still due on this process's connection, if any (so its job is surely in Redis now)."""
        with self._lock:
            self._collect(self._own_connection())

    def _own_connection(self) -> Any:
        if self._pid != os.getpid():  # first use, or a forked child: the parent's socket and answer are not ours
            pool = self.conn.connection_pool
            self._connection = pool.connection_class(**pool.connection_kwargs)
            self._pid, self._unread = os.getpid(), None
        return self._connection

    def _collect(self, connection: Any) -> None:
        inbox_id, self._unread = self._unread, None
        if inbox_id is None:
            return
        try:
            created = connection.read_response()
        except NoScriptError:  # Redis restarted or flushed since: that job was not written; run it again now
            try:
                self.enqueue(inbox_id)  # loads the script itself
            except redis.RedisError as exc:
                self._unconfirmed(inbox_id, exc)
            return
        except ResponseError as exc:  # read whole: the connection is still in step
            self._unconfirmed(inbox_id, exc)
            return
        except BaseException as exc:
            connection.disconnect()  # whether the job was written is unknown; the sweeper's (jobs are unique)
            if not isinstance(exc, (redis.RedisError, OSError)):
                raise
            self._unconfirmed(inbox_id, exc)
            return
        if not created:
            self._existed(inbox_id)

    @staticmethod
    def _unconfirmed(inbox_id: int, exc: BaseException) -> None:
        log.warning("enqueue of inbox row %s not confirmed, left for the sweeper: %s", inbox_id,
                    type(exc).__name__, extra={"inbox_id": inbox_id})


_NEW_EVENT_JOBS: weakref.WeakKeyDictionary[redis.Redis, _NewEventJobs] = weakref.WeakKeyDictionary()


def _new_event_jobs(conn: redis.Redis) -> _NewEventJobs:
    jobs = _NEW_EVENT_JOBS.get(conn)
    if jobs is None:
        jobs = _NEW_EVENT_JOBS[conn] = _NewEventJobs(conn)
    return jobs


def send_event(conn: redis.Redis, inbox_id: int) -> None:
    """The callback's enqueue of a just-inserted row: written now, Redis's answer read at this process's next
    `send_event` (see `_NewEventJobs`). RedisError when it cannot be written: the sweeper's row."""
    _new_event_jobs(conn).send(inbox_id)


def settle_event_jobs(conn: redis.Redis) -> None:
    """Read the answer `send_event` left due in this process, so that its job is surely in Redis now."""
    jobs = _NEW_EVENT_JOBS.get(conn)
    if jobs is not None:
        jobs.settle()


def enqueue_event(conn: redis.Redis, inbox_id: int, *, check_live: bool = False,
                  dead: DeadJobCheck | None = None) -> bool:
    """Enqueue `jobs.events.process_event(inbox_id)` on `default`; False if not enqueued.

    Without `check_live` (the callback: a row just inserted) an existing job with this id is left alone. With it
    (the sweeper) a job that is live is left alone and anything else (finished, failed, dead with its worker) is
    replaced.
    """
    if not check_live:
        return _new_event_jobs(conn).enqueue(inbox_id)
    job_id = f"event-{inbox_id}"
    if job_is_live(conn, job_id, dead=dead):
        return False
    pipe = conn.pipeline()
    get_queue(conn, "default").enqueue_call(
        EVENT_FUNC, args=(inbox_id,), job_id=job_id, timeout=EVENT_JOB_TIMEOUT,
        result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, pipeline=pipe,
    )
    pipe.execute()
    return True


def enqueue_outbox(conn: redis.Redis, rows: Iterable[tuple[int, str]], *, check_live: bool = False,
                   dead: DeadJobCheck | None = None) -> int:
    """Enqueue `jobs.wecom_calls.run_outbox(id)` for (id, queue) pairs; returns how many were enqueued."""
    count = 0
    for outbox_id, queue in rows:
        job_id = f"outbox-{outbox_id}"
        if check_live and job_is_live(conn, job_id, dead=dead):
            continue
        get_queue(conn, queue).enqueue_call(
            "jobs.wecom_calls.run_outbox", args=(outbox_id,), job_id=job_id, timeout=OUTBOX_JOB_TIMEOUT,
            result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
        )
        count += 1
    return count
