"""The callback's enqueue writes exactly the job rq's own enqueue writes, once; the sweeper's replaces dead ones."""

from __future__ import annotations

from rq.job import Job, JobStatus

from bot.queues import EVENT_FUNC, EVENT_JOB_TIMEOUT, FAILURE_TTL, RESULT_TTL, enqueue_event, get_queue
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
