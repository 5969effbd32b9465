"""A simulated month through the real pipeline, for `sopbot dev` (the demo's history) and the dashboard tests.

`DemoMonth.run()` winds the simulator's clock back `days` days and plays the demo corp forward one day at a
time: customers are added through channel QR codes (the simulator's `add_customer` action, so an encrypted
`change_external_contact` callback reaches `/wecom/callback`), chat through 微信客服 (keyword rules → tags →
lead score → stage), employees finish or skip their SOP tasks the way the sidebar does, a few friendships end,
and the scheduler ticks several times a day. Nothing is written around the pipeline: every row comes from the
callback view, the handlers, the outbox executors and the periodic jobs, each run with `now` = the simulated
time instead of by the rq worker (which would stamp everything with the wall clock). At the end the simulator's
clock is set back to real time, so the live demo carries on from "now".

The callbacks go into the app in-process (a Flask test client) and the outbox executors call the simulator
over real HTTP on a private port, so seeding needs no web server and no worker; jobs the callback view
enqueued in rq meanwhile find their rows already processed and end as no-ops (jobs are idempotent).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import Flask
from sqlalchemy import select

from bot.db import utcnow
from bot.models import Customer, InboxEvent, Outbox
from bot.queues import settle_event_jobs
from bot.services import Services

log = logging.getLogger("sopbot.demo")

__all__ = ["DemoMonth", "MonthResult", "database_is_empty"]

SHANGHAI = ZoneInfo("Asia/Shanghai")
# channel state -> the employees whose QR code it is (bot/wecom/simulator/scenarios/demo.yaml); webinar sign-ups
# dominate, as in the demo's story (and they enter the 直播线索培育 SOP with its A/B step).
CHANNEL_WEIGHTS = {"webinar": 5, "expo2025_booth12": 2, "website": 2, "poster_qr_0412": 1}
CHANNEL_OWNERS = {"webinar": ["WangFang", "ZhaoLei"], "expo2025_booth12": ["LiMing", "ZhaoLei"],
                  "website": ["WangFang"], "poster_qr_0412": ["WangFang"]}
SMALL_TALK = ["好的，我先看看资料", "谢谢，收到了", "我们公司30人左右，想了解一下", "最近比较忙，下周再聊",
              "资料挺有用的"]
INTENT_LINES = ["请问价格多少？", "你们有试用版吗", "可以约个演示吗", "报价单发我一下", "合同模板能先看看吗"]
NOT_INTERESTED = ["不需要了，谢谢"]
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@dataclass
class MonthResult:
    days: int
    customers: int = 0
    messages: int = 0
    tasks_done: int = 0
    tasks_skipped: int = 0
    deleted: int = 0
    inbox_rows: int = 0
    outbox_rows: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def database_is_empty(services: Services) -> bool:
    """No customer yet: a fresh demo database (seeding never runs over real or earlier data)."""
    with services.transaction() as session:
        return session.scalar(select(Customer.id).limit(1)) is None


class DemoMonth:
    """Play `days` simulated days of the demo corp through `app` (the sopbot app) and `sim` (the simulator app).

    `per_day` bounds the new customers a day; the seeded random generator makes a run reproducible.
    """

    def __init__(self, services: Services, app: Flask, sim: Flask, *, days: int = 30,
                 per_day: tuple[int, int] = (1, 3), seed: int = 2026) -> None:
        self.services, self.app, self.sim = services, app, sim
        self.state = sim.config["SIM_STATE"]
        self.emitter = sim.config["SIM_EMITTER"]
        self.days, self.per_day = days, per_day
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible demo, not security
        self.sim_client = sim.test_client()
        self.app_client = app.test_client()
        self.customers: list[tuple[str, str, str]] = []  # (owner, external_userid, channel)
        self.hot: list[str] = []  # leads that keep asking (price, trial, demo, contract): MQL and SQL in the funnel
        self.kf_account = sorted(self.state.kf_accounts)[0] if self.state.kf_accounts else None
        self.result = MonthResult(days)

    # -- the simulated clock ---------------------------------------------------------------------------------
    def now(self) -> datetime:
        return datetime.fromtimestamp(self.state.now(), UTC)

    def move_to(self, when: datetime) -> None:
        """Set the simulator's clock (never backwards within the run)."""
        delta = when.timestamp() - self.state.now()
        if delta > 0:
            self.state.advance(delta)

    # -- plumbing --------------------------------------------------------------------------------------------
    def _deliver(self, url: str, query: dict[str, str], body: bytes | str) -> None:
        resp = self.app_client.post("/wecom/callback", query_string=query, data=body, content_type="text/xml")
        settle_event_jobs(self.app_client.application.extensions["sopbot"].redis)  # its job is in Redis now
        if resp.status_code != 200:
            self.result.failures.append(f"callback answered {resp.status_code}")

    def _act(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.sim_client.post(f"/_sim/actions/{name}", json=body)
        if resp.status_code != 200:
            self.result.failures.append(f"{name}: {resp.status_code}")
            return {}
        return dict(resp.get_json() or {})

    @contextmanager
    def _wired(self) -> Iterator[None]:
        """Callbacks into the app in-process; WeCom API calls to the simulator on a private port, on its clock."""
        from bot.wecom.client import WeComClient
        from bot.wecom.simulator.server import SimulatorServer

        settings = self.services.settings
        previous_post = self.emitter.post
        had_client = "wecom" in self.services.__dict__
        previous_client = self.services.__dict__.get("wecom")
        self.emitter.post = self._deliver
        # Thousands of routine lines (each simulator request, each task done) would bury the start-up banner:
        # the pipeline logs warnings only while seeding, the demo logs its progress per day.
        quiet = {name: logging.getLogger(name).level for name in ("werkzeug", "sopbot")}
        demo_level = log.level
        for name in quiet:
            logging.getLogger(name).setLevel(logging.WARNING)
        log.setLevel(logging.INFO)
        with SimulatorServer(self.sim) as server:
            self.services.__dict__["wecom"] = WeComClient(
                settings.corp_id, settings.agent_secret, self.services.redis, api_base=server.api_base,
                agent_id=settings.agent_id, sleep=self.state.advance, clock=self.state.now)
            try:
                yield
            finally:
                for name, level in quiet.items():
                    logging.getLogger(name).setLevel(level)
                log.setLevel(demo_level)
                self.emitter.post = previous_post
                if had_client:
                    self.services.__dict__["wecom"] = previous_client
                else:
                    self.services.__dict__.pop("wecom", None)

    def drain(self, rounds: int = 20) -> None:
        """Process every open inbox and due outbox row at the simulated time, until nothing is left."""
        from jobs.events import process_inbox_row
        from jobs.wecom_calls import run_outbox_row

        for _ in range(rounds):
            now = self.now()
            with self.services.transaction() as session:
                inbox = list(session.scalars(select(InboxEvent.id).where(
                    InboxEvent.status.in_(("pending", "retry"))).order_by(InboxEvent.id)))
                outbox = list(session.scalars(select(Outbox.id).where(
                    Outbox.status.in_(("pending", "retry")),
                    (Outbox.not_before.is_(None)) | (Outbox.not_before <= now)).order_by(Outbox.id)))
            if not inbox and not outbox:
                return
            for inbox_id in inbox:
                try:
                    process_inbox_row(self.services, inbox_id, now)
                except Exception as exc:  # noqa: BLE001 - recorded on the row for retry; the month goes on
                    self.result.failures.append(f"inbox {inbox_id}: {exc}")
            for outbox_id in outbox:
                try:
                    run_outbox_row(self.services, outbox_id, now)
                except Exception as exc:  # noqa: BLE001 - the executor records retry/failure on the row
                    self.result.failures.append(f"outbox {outbox_id}: {exc}")
            self.result.inbox_rows += len(inbox)
            self.result.outbox_rows += len(outbox)

    def tick(self) -> None:
        from jobs.scheduler import tick

        tick(self.services, self.now())
        self.drain()

    # -- what happens in a day -------------------------------------------------------------------------------
    def add_customers(self) -> None:
        from bot.wecom.simulator.dev import COMPANIES, GIVEN, SURNAMES

        for _ in range(self.rng.randint(*self.per_day)):
            channel = self.rng.choices(list(CHANNEL_WEIGHTS), weights=list(CHANNEL_WEIGHTS.values()))[0]
            owner = self.rng.choice(CHANNEL_OWNERS[channel])
            name = self.rng.choice(SURNAMES) + self.rng.choice(GIVEN)
            # Ids from the seeded generator (WeCom's shape: "wm" + 30 characters) keep a run reproducible,
            # including the SOP's A/B split, which hashes the customer.
            ext = "wm" + "".join(self.rng.choices(ID_ALPHABET, k=30))
            added = self._act("add_customer", {"userid": owner, "name": name, "state": channel, "external_userid": ext,
                                               "profile": {"corp_name": self.rng.choice(COMPANIES)}})
            if added.get("external_userid"):
                self.customers.append((owner, str(added["external_userid"]), channel))
                self.result.customers += 1
                if self.rng.random() < .25:
                    self.hot.append(str(added["external_userid"]))
            self.drain()  # now: the welcome message has to go out within WeCom's 20 s window
            self.state.advance(self.rng.randint(60, 900))

    def say(self, ext: str, text: str) -> None:
        if self.kf_account is None:
            return
        self._act("kf_message", {"open_kfid": self.kf_account, "external_userid": ext, "text": text})
        self.result.messages += 1

    def chat(self) -> None:
        """Some customers write in: small talk, buying signals (keyword rules), the odd 'not interested'."""
        if not self.customers:
            return
        for _, ext, _ in self.rng.sample(self.customers, k=min(len(self.customers), self.rng.randint(1, 3))):
            roll = self.rng.random()
            line = (self.rng.choice(INTENT_LINES) if roll < .45 else
                    self.rng.choice(NOT_INTERESTED) if roll < .52 else self.rng.choice(SMALL_TALK))
            self.say(ext, line)
            self.state.advance(self.rng.randint(30, 600))
        active = {ext for _, ext, _ in self.customers}
        for ext in [e for e in self.hot if e in active and self.rng.random() < .3]:
            self.say(ext, self.rng.choice(INTENT_LINES))
            self.state.advance(self.rng.randint(30, 600))
        self.drain()

    def work_tasks(self) -> None:
        """Employees go through their due SOP tasks in the sidebar: most sent, some skipped, some left late."""
        from bot.sidebar.tasks import complete_task, skip_task
        from bot.sop.models import TASK_OPEN_STATES, SopTask

        now = self.now()
        with self.services.transaction() as session:
            due = list(session.execute(select(SopTask.id, SopTask.owner_userid, SopTask.external_userid)
                                       .where(SopTask.state.in_(TASK_OPEN_STATES), SopTask.due_at <= now)
                                       .order_by(SopTask.due_at, SopTask.id)).all())
        replies: list[str] = []
        for task_id, owner, ext in due:
            roll = self.rng.random()
            if roll < .22:
                continue  # not today: it goes overdue, or is done late on a later day
            with self.services.transaction() as session:
                if roll < .30:
                    outcome = skip_task(session, task_id, owner or "", is_admin=True, now=now)
                    self.result.tasks_skipped += outcome == "skipped"
                else:
                    outcome = complete_task(session, task_id, owner or "", is_admin=True, now=now)
                    self.result.tasks_done += outcome == "done"
                    if outcome == "done" and self.rng.random() < .45:
                        replies.append(ext)
        self.drain()
        # Replies land within the next hours (the sop_steps report counts those within 48 h).
        for ext in replies:
            self.state.advance(self.rng.randint(300, 3600))
            self.say(ext, self.rng.choice(INTENT_LINES) if self.rng.random() < .35 else self.rng.choice(SMALL_TALK))
        self.drain()

    def delete_some(self) -> None:
        if len(self.customers) > 8 and self.rng.random() < .35:
            owner, ext, _ = self.customers.pop(self.rng.randrange(len(self.customers)))
            action = "customer_deletes" if self.rng.random() < .6 else "delete_customer"
            self._act(action, {"userid": owner, "external_userid": ext})
            self.result.deleted += 1
            self.drain()

    def day(self, start: datetime) -> None:
        """One working day, local time: the morning tick and adds, chats, the afternoon tick and task round."""
        at = start.astimezone(SHANGHAI)
        self.move_to(at.replace(hour=9, minute=5))
        self.tick()
        self.add_customers()
        self.chat()
        self.move_to(at.replace(hour=15, minute=10))
        self.tick()
        self.work_tasks()
        self.delete_some()

    def run(self) -> MonthResult:
        started = time.perf_counter()
        today = utcnow().astimezone(SHANGHAI).replace(hour=0, minute=0, second=0, microsecond=0)
        first = today - timedelta(days=self.days)
        # Back to the first day; the live clock keeps running, so aim at 08:00 and let move_to go forward.
        self.state.advance(first.replace(hour=8).timestamp() - self.state.now())
        with self._wired():
            for n in range(self.days):
                self.day(first + timedelta(days=n))
                if (n + 1) % 5 == 0 or n + 1 == self.days:
                    log.info("demo month: day %d/%d, %d customers so far (%.0f s)", n + 1, self.days,
                             self.result.customers, time.perf_counter() - started)
            self.state.advance(time.time() - self.state.now())  # the live demo carries on from real time
            self.drain()
        self.result.seconds = time.perf_counter() - started
        log.info("demo month: %d days, %d customers, %d messages, %d SOP steps done, %d skipped, %d deleted "
                 "in %.1f s", self.days, self.result.customers, self.result.messages, self.result.tasks_done,
                 self.result.tasks_skipped, self.result.deleted, self.result.seconds)
        return self.result
