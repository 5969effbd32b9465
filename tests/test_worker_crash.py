"""Workers SIGKILLed again and again under load: every event processed, no WeCom effect doubled.

Real `sopbot worker` processes (two, each replaced when killed) and a real `sopbot scheduler` (the sweeper)
work a stream of channel-code adds (profile fetch, welcome, mark_tag of the channel's tags) and archive
messages matching the pricing keyword rule (one more mark_tag), while a killer SIGKILLs a random worker
every 0.3-1 s. The outbox lease and the sweeper's grace are short here (SOPBOT_OUTBOX_LEASE_SECONDS,
SOPBOT_SWEEP_GRACE_SECONDS) so recovery takes seconds instead of minutes.

What a SIGKILL between a WeCom call and its commit can do, and what bounds it:
- mark_tag is re-sent when its row's lease runs out: WeCom sets tag state, so the effect is the same; the
  repeated *calls* are counted and bounded by the kills (one job in flight per worker);
- send_welcome_msg is re-sent the same way, but WeCom's welcome_code is single-use: the second call answers
  41051 and the row records `already_sent`; if the lease ran out after the 20 s window the row is `failed`
  with "deadline" (the message itself went out once). The heavy variant is `bench/reliability.py crash`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from rq.job import Job, JobStatus
from sqlalchemy import func, select

from bench.workers import Killer, ProcessPool, wait_for
from bot.db import utcnow
from bot.models import Customer, FollowRelation, InboxEvent, Outbox, TimelineEntry
from bot.queues import get_queue
from bot.services import Services
from bot.tagging.models import TaggingMessage
from jobs.sweeper import PENDING_GRACE, sweep
from tests.conftest import ADMIN, SimHarness, env_for_tests, fixture_xml, post_event, run_worker

CUSTOMERS = int(os.environ.get("SOPBOT_CRASH_CUSTOMERS", "48" if os.environ.get("CI") else "16"))
KILLS = 10 if os.environ.get("CI") else 5
LAG = 4  # a customer's pricing question is posted once its add is processed, while later adds stream in
PRICING = "请问价格多少？"  # the file rule intent_pricing: tag 意向:询价


def _followed(services: Services, ext: str) -> bool:
    with services.transaction() as s:
        return bool(s.scalar(select(func.count()).select_from(FollowRelation).join(Customer).where(
            Customer.external_userid == ext, FollowRelation.userid == "WangFang")))


def _open_work(services: Services) -> int:
    with services.transaction() as s:
        inbox = s.scalar(select(func.count()).select_from(InboxEvent).where(InboxEvent.status != "done")) or 0
        outbox = s.scalar(select(func.count()).select_from(Outbox).where(
            Outbox.status.in_(("pending", "retry", "running")))) or 0
        messages = s.scalar(select(func.count()).select_from(TaggingMessage).where(
            TaggingMessage.status.in_(("pending", "retry")))) or 0
    return int(inbox + outbox + messages)


def _open_rows(services: Services) -> str:
    """The rows still open, with their jobs' rq state: what a settle timeout reports."""
    conn = services.redis
    with services.transaction() as s:
        inbox = s.execute(select(InboxEvent.id, InboxEvent.status, InboxEvent.attempts, InboxEvent.last_error)
                          .where(InboxEvent.status != "done")).all()
        outbox = s.execute(select(Outbox.id, Outbox.kind, Outbox.status, Outbox.attempts, Outbox.next_attempt_at,
                                  Outbox.last_error).where(Outbox.status.in_(("pending", "retry", "running")))).all()
        messages = s.execute(select(TaggingMessage.id, TaggingMessage.status).where(
            TaggingMessage.status.in_(("pending", "retry")))).all()

    def job(job_id: str) -> str:
        try:
            return str(Job.fetch(job_id, connection=conn).get_status())
        except Exception as exc:  # noqa: BLE001 - a diagnostic, never the failure itself
            return type(exc).__name__

    return (f"now={utcnow().isoformat()} inbox={[(*r, job(f'event-{r[0]}')) for r in inbox]} "
            f"outbox={[(*r, job(f'outbox-{r[0]}')) for r in outbox]} messages={messages} "
            f"queues={ {q: get_queue(conn, q).count for q in ('realtime', 'default', 'bulk', 'reminders')} }")


def _post_question(api: Any, ext: str, n: int) -> None:
    record = {"msgid": f"crash-{n}", "action": "send", "from": ext, "tolist": ["WangFang"], "roomid": "",
              "msgtime": int(time.time() * 1000), "msgtype": "text", "text": {"content": PRICING}}
    assert api.post("/api/v1/messages", json=[record], headers=ADMIN).status_code == 202


def test_workers_sigkilled_under_load_lose_and_double_nothing(services: Services, sim: SimHarness, app: Any,
                                                              database_url: str, tmp_path: Path) -> None:
    env = env_for_tests(database_url, services.redis_url, WECOM_API_BASE=sim.server.api_base,
                        SOPBOT_OUTBOX_LEASE_SECONDS="10", SOPBOT_SWEEP_GRACE_SECONDS="3")
    pool = ProcessPool(env, 2, tmp_path / "processes.log", scheduler_interval=1.0).start()
    killer = Killer(pool, services.redis, seed=20261130, limit=KILLS)
    api = app.test_client()  # messages go in on their own client; the simulator posts callbacks on `sim`'s
    exts: list[str] = []
    started = time.monotonic()
    try:
        killer.start()
        for i in range(CUSTOMERS + LAG):
            if i < CUSTOMERS:
                answer = sim.control("actions/add_customer",
                                     {"userid": "WangFang", "name": f"崩溃{i:03d}", "state": "webinar"})
                exts.append(answer["external_userid"])
            if i >= LAG:
                ext = exts[i - LAG]
                wait_for(lambda e=ext: _followed(services, e), time.monotonic() + 180,  # type: ignore[misc]
                         f"customer {i - LAG} added")
                _post_question(api, ext, i - LAG)
        wait_for(lambda: not killer.is_alive(), time.monotonic() + 180, f"{KILLS} kills")
        kills = killer.stop()
        try:
            wait_for(lambda: _open_work(services) == 0, time.monotonic() + 240, "every row to settle")
        except AssertionError as exc:  # say what is stuck, and the jobs' state in Redis
            raise AssertionError(f"{exc}: {_open_rows(services)}") from None
        assert pool.unexpected_exits() == []  # the only deaths were the ones we injected
    finally:
        killer.stop()
        pool.stop()
    seconds = time.monotonic() - started

    with services.transaction() as s:
        inbox = Counter(s.scalars(select(InboxEvent.status)))
        added = Counter(s.scalars(select(Customer.external_userid).join(
            TimelineEntry, TimelineEntry.customer_id == Customer.id).where(TimelineEntry.kind == "customer_added")))
        tag_entries = Counter(s.scalars(select(Customer.external_userid).join(
            TimelineEntry, TimelineEntry.customer_id == Customer.id).where(TimelineEntry.kind == "tag_added")))
        welcome_entries = Counter(s.scalars(select(Customer.external_userid).join(
            TimelineEntry, TimelineEntry.customer_id == Customer.id).where(
            TimelineEntry.kind.in_(("welcome_sent", "welcome_skipped")))))
        messages = Counter(s.scalars(select(TaggingMessage.status)))
        failed = s.execute(select(Outbox.kind, Outbox.last_error).where(Outbox.status == "failed")).all()
        lease_recoveries = s.scalar(select(func.count()).select_from(Outbox).where(Outbox.attempts > 1)) or 0

    ok = [c for c in sim.calls() if c["errcode"] == 0]
    mark_calls = Counter((c["body"]["userid"], c["body"]["external_userid"], tuple(sorted(c["body"]["add_tag"])))
                         for c in ok if c["path"] == "externalcontact/mark_tag")
    tagged = Counter((ext, tag) for (_, ext, tags), n in mark_calls.items() for tag in tags)
    welcomes = Counter(c["body"]["welcome_code"] for c in ok if c["path"] == "externalcontact/send_welcome_msg")
    resent_marks = sum(n - 1 for n in mark_calls.values())
    failed_welcomes = [e for k, e in failed if k == "send_welcome" and "deadline" in (e or "")]
    print(f"\nworker crash: {CUSTOMERS} customers + {CUSTOMERS} keyword messages, {kills} SIGKILLs "
          f"({pool.started} worker processes started), {lease_recoveries} outbox rows run more than once, "
          f"{resent_marks} mark_tag calls re-sent (idempotent), {len(welcomes)} welcomes sent, "
          f"{len(failed_welcomes)} welcome rows past their 20 s window, {seconds:.1f} s")

    # every event processed exactly once
    assert inbox == Counter({"done": CUSTOMERS})
    assert messages == Counter({"done": CUSTOMERS})
    assert set(added) == set(exts) and set(added.values()) == {1}
    assert set(tag_entries) == set(exts) and set(tag_entries.values()) == {3}  # webinar's 2 tags + 意向:询价
    assert max(welcome_entries.values(), default=0) <= 1
    # every tag reached WeCom: each customer's relation carries the channel's two tags and the keyword tag
    for ext in exts:
        relation_tags = set(sim.state.relations[("WangFang", ext)].tags)
        assert len(relation_tags) == 3 and {t for (e, t) in tagged if e == ext} == relation_tags
    # a mark_tag re-sent after a kill sets the same state again; re-sends are bounded by the kills
    assert resent_marks <= kills
    # WeCom's single-use welcome_code: never two welcomes for one customer
    assert set(welcomes.values()) <= {1}
    # nothing failed except welcomes whose row outlived WeCom's 20 s window (recorded, never sent late): a
    # killed worker's row waits for its lease, and its replacement needs seconds to start
    assert len(failed) == len(failed_welcomes), failed[:5]
    with services.transaction() as s:
        welcome_rows = Counter(s.scalars(select(Outbox.status).where(Outbox.kind == "send_welcome")))
    expected = Counter({"done": CUSTOMERS - len(failed_welcomes), "failed": len(failed_welcomes)})
    assert welcome_rows == +expected  # one welcome row per customer, each settled (unary + drops zeros)
    assert kills == KILLS


def test_a_job_a_killed_worker_left_behind_does_not_block_the_sweeper(client: Any, services: Services,
                                                                      sim: SimHarness) -> None:
    """What SIGKILL leaves in Redis: the job `queued` in rq's intermediate list (killed between taking it and
    starting it) or `started`, never finished. rq notices only after the job timeout plus its 10-minute
    maintenance; the sweeper re-enqueues once the row is still pending after the grace (a live job is left)."""
    assert post_event(client, fixture_xml("change_external_contact__add_external_contact")).status_code == 200
    with services.transaction() as s:
        inbox_id = s.scalars(select(InboxEvent.id)).one()
    queue, conn = get_queue(services.redis, "default"), services.redis
    later = utcnow() + PENDING_GRACE + timedelta(seconds=1)
    assert sweep(services, later).inbox == 0  # queued and waiting for a worker: live
    conn.lmove(queue.key, queue.intermediate_queue_key)  # taken by a worker that died before starting it
    assert sweep(services, later).inbox == 1

    job = Job.fetch(f"event-{inbox_id}", connection=conn)
    queue.remove(job)  # taken again, started, and the worker killed mid-job
    job.set_status(JobStatus.STARTED)
    job.started_at = utcnow()
    job.save()
    assert sweep(services, later).inbox == 0  # started just now: its worker may still be on it
    job.started_at = utcnow() - PENDING_GRACE - timedelta(seconds=1)
    job.save()
    assert sweep(services, later).inbox == 1  # started long ago and the row is still pending: the worker died
    run_worker(services)
    with services.transaction() as s:
        assert s.scalars(select(InboxEvent.status)).one() == "done"
