"""The callback's enqueue writes exactly the job rq's own enqueue writes, once; the sweeper's replaces dead ones."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError
from rq.job import Job, JobStatus

from bot.queues import EVENT_FUNC, EVENT_JOB_TIMEOUT, FAILURE_TTL, RESULT_TTL, _NewEventJobs, enqueue_event, get_queue
from bot.services import Services
from tests.conftest import run_worker

VOLATILE = {b"created_at", b"enqueued_at"}  # timestamps of the moment each was enqueued


def test_new_event_job_is_the_job_rq_itself_enqueues(services: Services) -> None:
    conn = services.redis
    queue = get_queue(conn, "default")
    assert enqueue_event(conn, 7) is True
    ours = conn.hgetall("rq:job:event-7")
    assert queue.job_ids == ["event-7"]
    assert conn.sismember("rq:queues", queue.key)
    conn.delete("rq:job:event-7", queue.key)

    queue.enqueue_call(EVENT_FUNC, args=(7,), job_id="event-7", timeout=EVENT_JOB_TIMEOUT, result_ttl=RESULT_TTL,
                       failure_ttl=FAILURE_TTL)
    theirs = conn.hgetall("rq:job:event-7")
    assert set(ours) == set(theirs)
    assert {k: v for k, v in ours.items() if k not in VOLATILE} == {
        k: v for k, v in theirs.items() if k not in VOLATILE}
    for key in VOLATILE:
        assert len(ours[key]) == len(theirs[key])  # same format ...
    conn.hset("rq:job:event-7", mapping={k.decode(): ours[k] for k in VOLATILE})
    ours_parsed = Job.fetch("event-7", connection=conn)  # ... and rq reads ours back as times of this run
    assert ours_parsed.created_at is not None and ours_parsed.enqueued_at is not None
    assert abs((ours_parsed.enqueued_at - ours_parsed.created_at).total_seconds()) < 1
    assert abs((ours_parsed.created_at - Job.fetch("event-7", connection=conn).created_at).total_seconds()) < 60
    job = Job.fetch("event-7", connection=conn)
    assert (job.func_name, job.args, job.kwargs, job.origin) == (EVENT_FUNC, (7,), {}, "default")
    assert job.get_status() == JobStatus.QUEUED


def test_a_second_enqueue_of_the_same_new_row_writes_nothing(services: Services) -> None:
    conn = services.redis
    assert enqueue_event(conn, 8) is True
    before = conn.hgetall("rq:job:event-8")
    assert enqueue_event(conn, 8) is False
    assert get_queue(conn, "default").job_ids == ["event-8"]
    assert conn.hgetall("rq:job:event-8") == before


def test_the_sweeper_replaces_a_finished_job_but_not_a_queued_one(services: Services) -> None:
    conn = services.redis
    assert enqueue_event(conn, 9) is True
    assert enqueue_event(conn, 9, check_live=True) is False  # still queued: live
    job = Job.fetch("event-9", connection=conn)
    job.set_status(JobStatus.FAILED)
    conn.delete(get_queue(conn, "default").key)
    assert enqueue_event(conn, 9, check_live=True) is True
    assert get_queue(conn, "default").job_ids == ["event-9"]
    assert Job.fetch("event-9", connection=conn).get_status() == JobStatus.QUEUED


def test_an_rq_worker_runs_the_callbacks_job(services: Services) -> None:
    # No inbox row 10 exists: process_event treats a missing row as done, so the worker finishing is the check.
    conn = services.redis
    assert enqueue_event(conn, 10) is True
    assert run_worker(services) >= 1
    assert get_queue(conn, "default").count == 0
    assert Job.fetch("event-10", connection=conn).get_status() == JobStatus.FINISHED


def test_the_callbacks_enqueue_reloads_its_script_after_redis_forgot_it(services: Services) -> None:
    conn = services.redis
    assert enqueue_event(conn, 12) is True
    conn.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
    assert enqueue_event(conn, 13) is True
    assert get_queue(conn, "default").job_ids == ["event-12", "event-13"]


def test_the_callbacks_enqueue_keeps_its_connection_in_step_after_errors(services: Services) -> None:
    conn = services.redis
    queue = get_queue(conn, "default")
    conn.set(queue.key, "not a list")  # the script's RPUSH fails: an error reply, read whole
    with pytest.raises(ResponseError):
        enqueue_event(conn, 14)
    conn.delete(queue.key, "rq:job:event-14")
    assert enqueue_event(conn, 15) is True  # the same pooled connection answers its own command

    pool = conn.connection_pool
    other = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class,
                                                            **pool.connection_kwargs))
    assert other.client_kill_filter(_type="normal", skipme=True) >= 1  # the pooled connection the enqueue uses
    other.close()
    assert [enqueue_event(conn, 16), enqueue_event(conn, 16), enqueue_event(conn, 17)] == [True, False, True]
    assert queue.job_ids == ["event-15", "event-16", "event-17"]


class Interrupted(BaseException):
    """What a worker timeout or a signal raises between sending a command and reading its reply."""


def test_an_enqueue_interrupted_before_its_reply_does_not_leave_the_reply_to_the_next_one(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = services.redis

    def send_only(self: _NewEventJobs, connection: Any, job_key: str, args: list[Any]) -> Any:
        connection.send_command("EVALSHA", self.script.sha, 2, job_key, self.queue_key, *args)
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(_NewEventJobs, "_run", send_only)
        with pytest.raises(Interrupted):
            enqueue_event(conn, 18)
    assert conn.exists("rq:job:event-18")  # Redis ran it; its reply "1" was never read
    assert enqueue_event(conn, 18) is False  # this call's own reply, not the stale one
    assert enqueue_event(conn, 19) is True
    assert get_queue(conn, "default").job_ids == ["event-18", "event-19"]
