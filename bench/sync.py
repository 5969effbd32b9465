"""`sopbot sync` of 100,000 simulated customers: customers/s, peak memory, interrupt + resume.

The simulator runs in a child process (its memory is not ours); sopbot's side runs here with the
real WeComClient over HTTP, the shared rate limiter, and the same database code as production.

    .venv/bin/python bench/sync.py [--customers 100000] [--database-url postgresql://…] [--redis-url redis://…]

Prints customers/s over the whole run (target >= 1,000/s), the peak RSS of this process, and checks
that an interrupted run resumes from its checkpoint and ends with no duplicate.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.schema import fresh_schema  # noqa: E402

CORP = "wwbenchsync0000001"
SECRET = "bench-secret"


def serve_simulator(customers: int, employees: int, port_queue: Any, stop: Any) -> None:
    import logging

    from bot.wecom.simulator import SimState, SimulatorServer, create_simulator_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request would dominate the output

    state = SimState(corp_id=CORP)
    state.apps["1000002"] = {"secret": SECRET, "agent_id": 1000002, "ip_trusted": True, "name": "bench"}
    state.tag_groups["etGROUPSIZE"] = {"group_id": "etGROUPSIZE", "group_name": "规模", "create_time": 0,
                                       "order": 0, "deleted": False, "tag": [
        {"id": f"etSIZE{i}", "name": n, "order": i, "create_time": 0, "deleted": False}
        for i, n in enumerate(["小", "中", "大"])]}
    for e in range(employees):
        state.add_employee(f"sales{e:04d}", f"销售{e:04d}", [1])
    now = int(state.now())
    for i in range(customers):
        ext = state.add_customer(f"客户{i:06d}", f"wmBENCH{i:025d}", corp_name="某某科技")
        state.relate(f"sales{i % employees:04d}", ext, createtime=now - i, state="webinar", remark=f"客户{i}",
                     tags=[f"etSIZE{i % 3}"])
    with SimulatorServer(create_simulator_app(state)) as server:
        port_queue.put(server.api_base)
        stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--employees", type=int, default=100)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    port_queue, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=serve_simulator, args=(args.customers, args.employees, port_queue, stop), daemon=True)
    child.start()
    api_base = port_queue.get(timeout=600)

    from sqlalchemy import func, select

    from bot.config import load_settings
    from bot.models import Customer, FollowRelation
    from bot.services import Services
    from bot.sync import run_sync
    from bot.wecom.client import WeComClient

    tmp = Path(tempfile.mkdtemp(prefix="sopbot-sync-"))
    db = args.database_url or f"sqlite:///{tmp / 'sync.db'}"
    fresh_schema(db)
    env = {"SOPBOT_DATABASE_URL": db, "SOPBOT_VAR_DIR": str(tmp), "SOPBOT_SECRET_KEY": "bench-secret-key-0123456",
           "SOPBOT_ADMIN_TOKEN": "bench-admin-token", "WECOM_CORP_ID": CORP, "WECOM_CALLBACK_TOKEN": "benchtoken",
           "WECOM_ENCODING_AES_KEY": "a" * 43, "WECOM_AGENT_ID": "1000002", "WECOM_AGENT_SECRET": SECRET,
           "WECOM_API_BASE": api_base}
    if args.redis_url:
        env["SOPBOT_REDIS_URL"] = args.redis_url
    services = Services.from_settings(load_settings(env))
    services.redis.delete(*services.redis.keys("sopbot:wecom:*") or ["none"])
    services.__dict__["wecom"] = WeComClient(CORP, SECRET, services.redis, api_base=api_base, agent_id=1000002,
                                             rate_limits={"externalcontact/batch/get_by_user": 100_000})
    half = args.customers // 2

    def interrupt_halfway(stage: str, done: int, total: int | None) -> None:
        if stage == "customers" and done >= half:
            raise KeyboardInterrupt

    start = time.perf_counter()
    try:
        run_sync(services, progress=interrupt_halfway, groups=False)
    except KeyboardInterrupt:
        pass
    first = time.perf_counter() - start
    report = run_sync(services, groups=False)
    total = time.perf_counter() - start
    stop.set()
    child.join(timeout=30)
    with services.transaction() as s:
        customers = s.scalar(select(func.count()).select_from(Customer))
        follows = s.scalar(select(func.count()).select_from(FollowRelation))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    backend = "PostgreSQL" if db.startswith("postgresql") else "SQLite"
    print(f"database {backend}; {args.customers} customers over {args.employees} employees; {os.cpu_count()} cores")
    print(f"interrupted after {first:.1f} s at >= {half} rows; resumed: {report.resumed}, "
          f"resumed run wrote {report.customer_rows} rows in {report.pages} pages")
    print(f"customers in database {customers}, follow relations {follows} "
          f"(expected {args.customers} each; duplicates: {customers - args.customers})")
    print(f"total {total:.1f} s -> {args.customers / total:.0f} customers/s (target >= 1,000/s); "
          f"peak RSS of sopbot's side {peak_mb:.0f} MB")
    return 0 if customers == follows == args.customers else 1


if __name__ == "__main__":
    raise SystemExit(main())
