"""The callback's enqueue writes exactly the job rq's own enqueue writes, once; the sweeper's replaces dead ones.

`send_event` (the callback's) does not wait for Redis's answer: it is read at the next send or by
`settle_event_jobs`. The tests below hold that every answer is read by the send it belongs to, whatever Redis
answered or did to the connection meanwhile.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError
from rq.job import Job, JobStatus

from bot.queues import (
    _NEW_EVENT_JOBS,
    EVENT_FUNC,
    EVENT_JOB_TIMEOUT,
    FAILURE_TTL,
    RESULT_TTL,
    _NewEventJobs,
    enqueue_event,
    get_queue,
    send_event,
    settle_event_jobs,
)
from bot.services import Services
from tests.conftest import in_forked_child, run_worker

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

    def send_only(connection: Any, command: list[Any]) -> Any:
        connection.send_command(*command)
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(_NewEventJobs, "_run", staticmethod(send_only))
        with pytest.raises(Interrupted):
            enqueue_event(conn, 18)
    assert conn.exists("rq:job:event-18")  # Redis ran it; its reply "1" was never read
    assert enqueue_event(conn, 18) is False  # this call's own reply, not the stale one
    assert enqueue_event(conn, 19) is True
    assert get_queue(conn, "default").job_ids == ["event-18", "event-19"]


def _unread(conn: redis.Redis) -> int | None:
    return _NEW_EVENT_JOBS[conn]._unread


def test_a_sent_job_is_the_enqueued_job_and_its_answer_is_read_by_the_next_send(services: Services) -> None:
    conn = services.redis
    assert enqueue_event(conn, 40) is True
    enqueued = conn.hgetall("rq:job:event-40")
    send_event(conn, 41)
    assert _unread(conn) == 41
    send_event(conn, 42)
    assert _unread(conn) == 42  # 41's answer was read first
    settle_event_jobs(conn)
    assert _unread(conn) is None
    assert get_queue(conn, "default").job_ids == ["event-40", "event-41", "event-42"]
    sent = conn.hgetall("rq:job:event-41")
    differs = {k for k in set(sent) | set(enqueued) if sent.get(k) != enqueued.get(k)}
    assert differs == VOLATILE | {b"data", b"description"}  # the timestamps and the inbox id
    job = Job.fetch("event-41", connection=conn)
    assert (job.func_name, job.args, job.origin, job.get_status()) == (EVENT_FUNC, (41,), "default", JobStatus.QUEUED)


def test_a_sent_duplicate_writes_nothing_and_is_logged_when_its_answer_is_read(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    conn = services.redis
    send_event(conn, 43)
    settle_event_jobs(conn)
    before = conn.hgetall("rq:job:event-43")
    with caplog.at_level(logging.INFO, logger="bot.queues"):
        send_event(conn, 43)
        settle_event_jobs(conn)
    assert "job event-43 exists already" in caplog.text
    assert conn.hgetall("rq:job:event-43") == before
    assert get_queue(conn, "default").job_ids == ["event-43"]


def test_a_sent_job_that_redis_answered_noscript_is_run_once_more(services: Services) -> None:
    conn = services.redis
    send_event(conn, 44)
    settle_event_jobs(conn)
    conn.script_flush()  # as after a Redis restart
    send_event(conn, 45)
    settle_event_jobs(conn)
    send_event(conn, 46)
    settle_event_jobs(conn)
    assert get_queue(conn, "default").job_ids == ["event-44", "event-45", "event-46"]


def _no_late_rerun(monkeypatch: pytest.MonkeyPatch) -> None:
    def rerun(self: object, inbox_id: int) -> bool:
        raise AssertionError(f"event-{inbox_id} was answered NOSCRIPT and waited for the next send")
    monkeypatch.setattr(_NewEventJobs, "enqueue", rerun)


def test_a_processs_first_send_finds_its_script_loaded(services: Services,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh Redis (`make demo` starts one) knows no script: the first delivery's job must not wait for the next.
    conn = services.redis
    conn.script_flush()
    _no_late_rerun(monkeypatch)
    send_event(conn, 60)
    settle_event_jobs(conn)
    assert get_queue(conn, "default").job_ids == ["event-60"]


def test_the_first_send_after_a_redis_restart_loads_the_script_again(services: Services,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    conn = services.redis
    send_event(conn, 61)
    settle_event_jobs(conn)
    conn.script_flush()  # a restart: the script cache is empty and every connection is gone
    _kill_normal_clients(conn)
    _no_late_rerun(monkeypatch)
    send_event(conn, 62)
    settle_event_jobs(conn)
    assert get_queue(conn, "default").job_ids == ["event-61", "event-62"]


def test_an_error_answer_is_logged_for_its_own_row_and_the_connection_stays_in_step(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    conn = services.redis
    queue = get_queue(conn, "default")
    conn.set(queue.key, "not a list")  # the script's RPUSH fails
    with caplog.at_level(logging.WARNING, logger="bot.queues"):
        send_event(conn, 47)
        conn.delete(queue.key, "rq:job:event-47")
        send_event(conn, 48)  # reads 47's error answer first
    assert "inbox row 47 not confirmed, left for the sweeper: ResponseError" in caplog.text
    settle_event_jobs(conn)
    assert queue.job_ids == ["event-48"]


def _kill_normal_clients(conn: redis.Redis) -> None:
    pool = conn.connection_pool
    other = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class,
                                                            **pool.connection_kwargs))
    assert other.client_kill_filter(_type="normal", skipme=True) >= 1
    other.close()


def test_a_send_on_a_connection_the_server_closed_goes_out_on_a_new_one(services: Services) -> None:
    conn = services.redis
    send_event(conn, 49)
    settle_event_jobs(conn)
    _kill_normal_clients(conn)  # a Redis restart or idle timeout while no callback came
    send_event(conn, 50)  # written on the dead socket it would be lost without an error
    settle_event_jobs(conn)
    assert get_queue(conn, "default").job_ids == ["event-49", "event-50"]


def test_a_connection_closed_with_an_answer_unread_loses_nothing_after_it(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    conn = services.redis
    send_event(conn, 51)
    _kill_normal_clients(conn)
    with caplog.at_level(logging.WARNING, logger="bot.queues"):
        send_event(conn, 52)
        settle_event_jobs(conn)
    # 51 ran before the kill (its answer may have been read or lost with the socket: logged for the sweeper)
    assert get_queue(conn, "default").job_ids == ["event-51", "event-52"]
    assert "row 52" not in caplog.text


def test_a_send_with_redis_down_raises_for_the_callback_to_leave_the_row_to_the_sweeper(services: Services) -> None:
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)  # nothing listens on port 1
    with pytest.raises(redis.ConnectionError):
        send_event(down, 53)


def test_a_forked_child_sends_on_its_own_connection_and_leaves_the_parents_answer_alone(services: Services) -> None:
    conn = services.redis
    send_event(conn, 54)  # the parent's answer stays unread across the fork

    def child() -> bool:  # an answer read off the parent's socket would be 54's, and 55 would be unconfirmed
        send_event(conn, 55)
        jobs = _NEW_EVENT_JOBS[conn]
        return bool(jobs._unread == 55 and jobs._connection.read_response() == 1)

    assert in_forked_child(child) == 0
    assert _unread(conn) == 54
    assert _NEW_EVENT_JOBS[conn]._connection.read_response() == 1  # still the parent's own answer, unread
    _NEW_EVENT_JOBS[conn]._unread = None
    assert get_queue(conn, "default").job_ids == ["event-54", "event-55"]


def test_threads_sending_at_once_each_get_their_answer_read_once(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    import threading

    conn = services.redis
    ids = [[1000 + t * 100 + i for i in range(60)] for t in range(6)]  # `sopbot dev` serves with threads
    with caplog.at_level(logging.INFO, logger="bot.queues"):
        threads = [threading.Thread(target=lambda mine=mine: [send_event(conn, i) for i in mine]) for mine in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        settle_event_jobs(conn)
    assert sorted(get_queue(conn, "default").job_ids) == sorted(f"event-{i}" for mine in ids for i in mine)
    assert caplog.text == ""  # no answer misread as a duplicate or an error
