"""SOP planning benchmark: claim the due tasks and build the per-employee digests of one scheduler run.

    .venv/bin/python bench/sop_planning.py                      # PostgreSQL 1,000,000 + SQLite 100,000
    .venv/bin/python bench/sop_planning.py --only sqlite --enrollments 100000

Bulk-loads N enrollments (one customer, follow relation and open task each) over E employees, D of the
tasks due now (at step 3 of the shipped `nurture_webinar`, so every claim also plans step 4 against the
frequency budget), then runs `jobs.sop.tick(services, now, enqueue=False)` in a fresh process and reports
its wall time and peak RSS. WeCom is not called: digests are counted as outbox rows (`send_digest`).
Target (issue): PostgreSQL, 1,000,000 enrollments / 10,000 employees / 100,000 due -> <= 60 s, <= 512 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.schema import fresh_schema  # noqa: E402

NOW = datetime(2025, 9, 24, 2, 0, tzinfo=UTC)  # Wednesday 10:00 in Shanghai: open, a working day
PG_URL = os.environ.get("SOPBOT_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/sopbot_sopbench")
ENV = {"SOPBOT_SECRET_KEY": "bench-secret-key-0123456789", "SOPBOT_ADMIN_TOKEN": "bench-admin-token",
       "WECOM_CORP_ID": "wwbench", "WECOM_CALLBACK_TOKEN": "benchToken", "WECOM_AGENT_ID": "1000002",
       "WECOM_ENCODING_AES_KEY": "a" * 43, "WECOM_AGENT_SECRET": "bench", "SOPBOT_REDIS_URL": "redis://127.0.0.1:1/0"}


def _rows(n: int, employees: int, due: int):  # type: ignore[no-untyped-def]
    """Yield (table, columns, row generator) in dependency order."""
    start = NOW - timedelta(days=3)
    yield "employees", ("userid", "name", "department_ids", "active", "customer_contact", "updated_at"), (
        (f"u{e:05d}", f"员工{e}", "[]", True, True, NOW) for e in range(employees))
    yield "customers", ("id", "external_userid", "name", "profile", "custom_fields", "stage", "score", "created_at",
                        "updated_at"), (
        (i + 1, f"wm{i:08d}", f"客户{i}", "{}", "{}", "engaged", 10.0, start, start) for i in range(n))
    yield "follow_relations", ("id", "customer_id", "userid", "state", "added_at", "half_added"), (
        (i + 1, i + 1, f"u{i % employees:05d}", "webinar", start, False) for i in range(n))
    yield "sop_enrollments", ("id", "sop_id", "customer_id", "external_userid", "rotation", "owner_userid",
                              "started_at", "state", "reason", "updated_at"), (
        (i + 1, "nurture_webinar", i + 1, f"wm{i:08d}", 1, f"u{i % employees:05d}", start, "active", "bench", start)
        for i in range(n))
    # The first `due` tasks are due now (spread over every employee); the rest in a week.
    yield "sop_tasks", ("id", "enrollment_id", "sop_id", "step_id", "step_index", "customer_id", "external_userid",
                        "owner_userid", "script_id", "touchpoint", "planned_at", "due_at", "state", "reminded_count",
                        "detail", "created_at"), (
        (i + 1, i + 1, "nurture_webinar", "d3_pain_survey", 2, i + 1, f"wm{i:08d}", f"u{i % employees:05d}",
         "nurture.day3_survey", "chat", *( (NOW - timedelta(minutes=5),) * 2 if i < due
                                          else (NOW + timedelta(days=7),) * 2),
         "pending", 0, "{}", start) for i in range(n))


def load(url: str, n: int, employees: int, due: int) -> float:

    from bot.db import make_engine

    t0 = time.perf_counter()
    fresh_schema(url)
    engine = make_engine(url)
    if url.startswith("postgresql"):
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            for table, cols, rows in _rows(n, employees, due):
                with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            for table in ("customers", "follow_relations", "sop_enrollments", "sop_tasks"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {n + 1})")
            raw.commit()
            cur.execute("ANALYZE")
            raw.commit()
        finally:
            raw.close()
    else:
        from bot.db import UTCDateTime

        conv = UTCDateTime()
        with engine.begin() as conn:
            for table, cols, rows in _rows(n, employees, due):
                marks = ", ".join("?" for _ in cols)
                batch: list[tuple[object, ...]] = []
                for row in rows:
                    batch.append(tuple(conv.process_bind_param(v, conn.dialect) if isinstance(v, datetime) else v
                                       for v in row))
                    if len(batch) == 20000:
                        conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", batch)
                        batch = []
                if batch:
                    conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", batch)
    engine.dispose()
    return time.perf_counter() - t0


def measure(url: str) -> dict[str, float]:
    """Run in a fresh process: one tick, timed; peak RSS of this process."""
    from sqlalchemy import func, select

    from bot.config import load_settings
    from bot.models import Outbox
    from bot.services import Services
    from bot.sop.models import SopTask
    from jobs.sop import tick

    services = Services.from_settings(load_settings({**ENV, "SOPBOT_DATABASE_URL": url}))
    t0 = time.perf_counter()
    report = tick(services, now=NOW, enqueue=False)
    elapsed = time.perf_counter() - t0
    with services.transaction() as s:
        digests = s.scalar(select(func.count()).select_from(Outbox).where(Outbox.kind == "send_digest")) or 0
        reminded = s.scalar(select(func.count()).select_from(SopTask).where(SopTask.reminded_count == 1)) or 0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": round(elapsed, 2), "claimed": report.claimed, "planned": report.planned,
            "digests": digests, "reminded": reminded, "peak_rss_mb": round(rss_mb, 1)}


def run(label: str, url: str, n: int, employees: int, due: int) -> dict[str, object]:
    print(f"[{label}] loading {n:,} enrollments / {employees:,} employees / {due:,} due …", flush=True)
    loaded = load(url, n, employees, due)
    out = subprocess.run([sys.executable, __file__, "--measure", url], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    result = {"backend": label, "enrollments": n, "employees": employees, "due": due, "load_s": round(loaded, 1),
              **figures}
    print(f"[{label}] claim + digests: {figures['seconds']} s, peak RSS {figures['peak_rss_mb']} MB, "
          f"{figures['claimed']:,} claimed, {figures['planned']:,} next steps planned, "
          f"{figures['digests']:,} digests (load {loaded:.1f} s)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=("postgresql", "sqlite"))
    parser.add_argument("--enrollments", type=int)
    parser.add_argument("--employees", type=int, default=10_000)
    parser.add_argument("--due-ratio", type=float, default=0.1)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    results = []
    if args.only in (None, "postgresql"):
        n = args.enrollments or 1_000_000
        results.append(run("postgresql", PG_URL, n, args.employees, int(n * args.due_ratio)))
    if args.only in (None, "sqlite"):
        n = args.enrollments or 100_000
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run("sqlite", f"sqlite:///{tmp}/bench.db", n, args.employees, int(n * args.due_ratio)))
    print(json.dumps(results, ensure_ascii=False, indent=2))
    for r in results:
        if r["backend"] == "postgresql" and int(str(r["enrollments"])) >= 1_000_000:
            ok = float(str(r["seconds"])) <= 60 and float(str(r["peak_rss_mb"])) <= 512
            print(f"target (<= 60 s, <= 512 MB): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
