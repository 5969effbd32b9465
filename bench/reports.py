"""Dashboard reports at scale: every report over 1,000,000 customers and 10,000,000 timeline rows on PostgreSQL.

    createdb -h 127.0.0.1 -U postgres sopbot_reports
    .venv/bin/python bench/reports.py [--customers 1000000] [--timeline 10000000] [--skip-load]

Builds the schema from the models (with every report index), bulk-loads synthetic but realistically shaped data
with COPY (psycopg), ANALYZEs, then times each report (the same functions /dashboard and /api/v1/reports run)
for the last 30 and 90 days, three runs each, and prints a Markdown table (paste into docs/PERFORMANCE.md).
Uses its own database (SOPBOT_BENCH_DATABASE_URL, default sopbot_reports) — never the shared `test` database.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from sqlalchemy import Engine, create_engine, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

import bot.models  # noqa: E402,F401 - registers every table
from bot.dashboard import reports  # noqa: E402
from bot.db import Base  # noqa: E402

URL = os.environ.get("SOPBOT_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/sopbot_reports")
NOW = datetime(2025, 12, 31, 4, 0, tzinfo=UTC)
YEAR = 365 * 86400
CHANNELS = ["webinar", "expo2025_booth12", "website", "poster_qr_0412", "baidu_sem", "ocean_engine", "", "referral"]
EMPLOYEES = [f"emp{i:03d}" for i in range(200)]
KEYWORD_RULES = ["intent_pricing", "intent_trial", "stage_business", "risk_price_objection", "churn_not_interested"]
STEPS = [("welcome", "d0", "A"), ("welcome", "d0", "B"), ("welcome", "d1", None), ("welcome", "d7", "A"),
         ("welcome", "d7", "B"), ("nurture", "w1", None), ("nurture", "w3", None), ("reactivate", "r1", None)]
# Time-stamp strings are drawn from a pool: formatting 10M datetimes would dominate the load for no benefit.
POOL = 200_000


def _pool(rng: random.Random) -> list[tuple[int, str]]:
    out = []
    for _ in range(POOL):
        offset = rng.randrange(YEAR)
        out.append((offset, (NOW - timedelta(seconds=offset)).strftime("%Y-%m-%d %H:%M:%S+00")))
    out.sort()
    return out


def _ts(seconds_before_now: float) -> str:
    return (NOW - timedelta(seconds=seconds_before_now)).strftime("%Y-%m-%d %H:%M:%S+00")


def _copy(conn: psycopg.Connection, table: str, columns: str, rows: Iterator[str], label: str) -> None:
    started = time.perf_counter()
    n = 0
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        buf: list[str] = []
        for line in rows:
            buf.append(line)
            n += 1
            if len(buf) >= 50_000:
                copy.write("".join(buf))
                buf.clear()
        if buf:
            copy.write("".join(buf))
    conn.commit()
    print(f"  loaded {n:>11,} {label:<22} in {time.perf_counter() - started:6.1f} s", flush=True)


def load(customers: int, timeline: int) -> None:
    engine = create_engine(URL)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    big = [t for t in Base.metadata.sorted_tables if t.name in (
        "timeline_entries", "customers", "follow_relations", "sop_tasks", "score_ledger", "tagging_rule_hits",
        "lead_states", "lead_stage_changes", "lead_assignments", "sop_enrollments", "sop_step_outcomes")]
    with engine.begin() as c:  # indexes are built after the load: much faster than maintaining them row by row
        for table in big:
            for index in table.indexes:
                c.execute(text(f"DROP INDEX IF EXISTS {index.name}"))
    rng = random.Random(42)
    stamps = _pool(rng)
    offsets = [o for o, _ in stamps]
    created: list[int] = [rng.randrange(YEAR) for _ in range(customers)]  # seconds before NOW
    ranks = [0] * customers
    with psycopg.connect(URL.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute("SET synchronous_commit = off")
        # Foreign-key triggers per row would dominate the load; the generated data is consistent by construction.
        conn.execute("SET session_replication_role = replica")
        stage_names = ["new", "engaged", "mql", "sql", "won"]

        def customer_rows() -> Iterator[str]:
            for i in range(customers):
                r = rng.random()
                rank = 0 if r < .55 else 1 if r < .80 else 2 if r < .92 else 3 if r < .98 else 4
                ranks[i] = rank
                stage = "lost" if rank >= 1 and rng.random() < .05 else stage_names[rank]
                ts = _ts(created[i])
                yield (f"{i + 1}\twm{i + 1:09d}\t客户{i + 1}\t{{}}\t{{}}\t{stage}\t{rank * 20.5}\t{ts}\t{ts}\n")

        _copy(conn, "customers", "id, external_userid, name, profile, custom_fields, stage, score, created_at, "
              "updated_at", customer_rows(), "customers")

        def follow_rows() -> Iterator[str]:
            for i in range(customers):
                state = rng.choice(CHANNELS)
                yield (f"{i + 1}\t{i + 1}\t{rng.choice(EMPLOYEES)}\t{state or chr(92) + 'N'}\t{_ts(created[i])}\t"
                       "f\n")

        _copy(conn, "follow_relations", "id, customer_id, userid, state, added_at, half_added", follow_rows(),
              "follow_relations")

        def state_rows() -> Iterator[str]:
            for i in range(customers):
                yield f"{i + 1}\t{{}}\t0\t0\t{ranks[i]}\n"

        _copy(conn, "lead_states", "customer_id, armed, fit, engagement, reached_rank", state_rows(), "lead_states")

        def change_rows() -> Iterator[str]:
            n = 0
            for i in range(customers):
                at = created[i]
                for rank in range(1, ranks[i] + 1):
                    at = max(0, at - rng.randrange(1, 10 * 86400))
                    n += 1
                    yield (f"{n}\t{i + 1}\t{stage_names[rank - 1]}\t{stage_names[rank]}\tscore\tf\t{_ts(at)}\n")

        _copy(conn, "lead_stage_changes", "id, customer_id, from_stage, to_stage, reason, demotion, at",
              change_rows(), "lead_stage_changes")

        kinds = (["message_received"] * 35 + ["message_sent"] * 25 + ["tag_added"] * 15 + ["link_opened"] * 10
                 + ["sop_step_done"] * 5 + ["sop_enrolled"] * 10)

        def timeline_rows() -> Iterator[str]:
            for i in range(timeline):
                if i < customers:  # every customer has its customer_added entry
                    yield f"{i + 1}\t{i + 1}\tcustomer_added\t{_ts(created[i])}\twecom\t{{}}\n"
                    continue
                cid = rng.randrange(customers)
                # Activity happens after the customer was added: a stamp from [added, NOW].
                upto = bisect_right(offsets, created[cid])
                at = stamps[rng.randrange(upto)][1] if upto else _ts(created[cid])
                yield f"{i + 1}\t{cid + 1}\t{rng.choice(kinds)}\t{at}\twecom\t{{}}\n"

        _copy(conn, "timeline_entries", "id, customer_id, kind, at, source, detail", timeline_rows(),
              "timeline_entries")

        def enrollment_rows() -> Iterator[str]:
            for i in range(customers):
                ts = _ts(created[i])
                yield f"{i + 1}\twelcome\t{i + 1}\twm{i + 1:09d}\t1\t{ts}\tactive\t\t{ts}\n"

        _copy(conn, "sop_enrollments", "id, sop_id, customer_id, external_userid, rotation, started_at, state, "
              "reason, updated_at", enrollment_rows(), "sop_enrollments")

        tasks = customers * 2

        def task_rows() -> Iterator[str]:
            for n in range(tasks):
                cid = n % customers
                sop, step, variant = STEPS[(cid * 2 + 3 * (n // customers)) % len(STEPS)]  # two distinct steps each
                due = max(0, created[cid] - rng.randrange(0, 20 * 86400))
                r = rng.random()
                if due < 2 * 86400 and r < .5:
                    state, done = "due", None
                elif r < .62:
                    state, done = "done", due - rng.randrange(0, 20 * 3600)
                elif r < .75:
                    state, done = "done", due - rng.randrange(24 * 3600, 5 * 86400)
                elif r < .85:
                    state, done = "skipped", due - 3600
                else:
                    state, done = "overdue", None
                done_s = _ts(max(done, 0)) if done is not None else "\\N"
                yield (f"{n + 1}\t{cid + 1}\t{sop}\t{step}\t{n // customers}\t{cid + 1}\twm{cid + 1:09d}\t"
                       f"{EMPLOYEES[cid % len(EMPLOYEES)]}\t{variant or chr(92) + 'N'}\tscript\tchat\t{_ts(due)}\t"
                       f"{_ts(due)}\t{state}\t{done_s}\t{{}}\t0\t{_ts(created[cid])}\n")

        _copy(conn, "sop_tasks", "id, enrollment_id, sop_id, step_id, step_index, customer_id, external_userid, "
              "owner_userid, variant_id, script_id, touchpoint, planned_at, due_at, state, completed_at, detail, "
              "reminded_count, created_at", task_rows(), "sop_tasks")

        hits = customers * 2

        def hit_rows() -> Iterator[str]:
            for n in range(hits):
                cid = rng.randrange(customers)
                at = stamps[rng.randrange(POOL)][1]
                applied = "t" if rng.random() < .7 else "f"
                yield (f"{n + 1}\t{rng.choice(KEYWORD_RULES)}\tkeyword\t{cid + 1}\twm{cid + 1:09d}\t{at}\t{applied}\t"
                       f"apply\t{{}}\th{n}\n")

        _copy(conn, "tagging_rule_hits", "id, rule_id, rule_kind, customer_id, external_userid, at, applied, "
              "decision, evidence, hit_key", hit_rows(), "tagging_rule_hits")

        ledger = customers * 3

        def ledger_rows() -> Iterator[str]:
            kinds = ["keyword_rule_fired", "customer_replied", "tag_added", "link_opened"]
            for n in range(ledger):
                cid = rng.randrange(customers)
                kind = kinds[n % 4]
                points = 15 if kind == "keyword_rule_fired" else 2
                yield (f"{n + 1}\t{cid + 1}\tr{n % 4}\te{n}\t{kind}\t{points}\tengagement\t"
                       f"{stamps[rng.randrange(POOL)][1]}\t{_ts(0)}\n")

        _copy(conn, "score_ledger", "id, customer_id, rule_id, event_id, event_kind, points, dimension, at, "
              "created_at", ledger_rows(), "score_ledger")

        def assignment_rows() -> Iterator[str]:
            n = 0
            for i in range(customers):
                if ranks[i] < 3:
                    continue
                n += 1
                at = max(0, created[i] - rng.randrange(0, 30 * 86400))
                accept_by = at - 1800
                r = rng.random()
                if r < .7:
                    accepted = at - rng.randrange(60, 1700)
                    status, acc, touch = "accepted", _ts(accepted), _ts(accepted)
                elif r < .9:
                    status, acc, touch = "accepted", _ts(at - rng.randrange(1900, 86400)), "\\N"
                else:
                    status, acc, touch = "pending", "\\N", "\\N"
                yield (f"{n}\t{i + 1}\twm{i + 1:09d}\t{EMPLOYEES[i % 40]}\tround robin\tf\t{status}\t{_ts(at)}\t"
                       f"{_ts(max(accept_by, 0))}\t{acc}\t{touch}\n")

        _copy(conn, "lead_assignments", "id, customer_id, external_userid, userid, reason, over_capacity, status, "
              "assigned_at, accept_by, accepted_at, first_touch_at", assignment_rows(), "lead_assignments")

    started = time.perf_counter()
    with engine.begin() as c:
        c.execute(text("SET maintenance_work_mem = '512MB'"))
        for table in big:
            for index in table.indexes:
                index.create(c)
    print(f"  built indexes in {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE"))
    print(f"  vacuum analyze in {time.perf_counter() - started:.1f} s", flush=True)
    build_rollups(engine)


# The rollup the apply pipeline keeps as steps, messages and ledger rows are written (bot/scoring/outcomes.py),
# built here in one statement from the same definition: first customer message / positive intent keyword within
# 48 h after the step was done.
OUTCOMES_SQL = """
INSERT INTO sop_step_outcomes (task_id, customer_id, sop_id, step_id, variant_id, done_at, replied_at, inquired_at)
SELECT t.id, t.customer_id, t.sop_id, t.step_id, t.variant_id, t.completed_at,
  (SELECT min(e.at) FROM timeline_entries e WHERE e.customer_id = t.customer_id AND e.kind = 'message_received'
     AND e.at > t.completed_at AND e.at <= t.completed_at + interval '48 hours'),
  (SELECT min(l.at) FROM score_ledger l WHERE l.customer_id = t.customer_id AND l.event_kind = 'keyword_rule_fired'
     AND l.points > 0 AND l.at > t.completed_at AND l.at <= t.completed_at + interval '48 hours')
FROM sop_tasks t WHERE t.state = 'done' AND t.completed_at IS NOT NULL
"""


def build_rollups(engine: Engine) -> None:
    """Create missing tables/indexes of the current models and fill an empty `sop_step_outcomes` (so a data set
    loaded by an earlier version of this script is reused with --skip-load)."""
    Base.metadata.create_all(engine)  # only what is missing: a table added to the models since the load
    with engine.begin() as c:
        if c.execute(text("SELECT count(*) FROM sop_step_outcomes")).scalar_one():
            return
        started = time.perf_counter()
        c.execute(text("SET LOCAL work_mem = '256MB'"))
        n = c.execute(text(OUTCOMES_SQL)).rowcount
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE sop_step_outcomes"))
    print(f"  filled sop_step_outcomes ({n:,} done steps) in {time.perf_counter() - started:.1f} s", flush=True)


def measure(days: int, runs: int = 3) -> dict[str, tuple[float, int]]:
    engine = create_engine(URL)
    period = reports.Period(NOW - timedelta(days=days), NOW, NOW)
    out: dict[str, tuple[float, int]] = {}
    for name, fn in reports.REPORTS.items():
        timings, rows = [], 0
        for _ in range(runs):
            with Session(engine) as session:
                started = time.perf_counter()
                report = _call(fn, session, period)
                timings.append(time.perf_counter() - started)
                rows = len(report.rows)
        out[name] = (statistics.median(timings), rows)
    return out


def _call(fn: Callable[[Session, reports.Period], reports.Report], session: Session,
          period: reports.Period) -> reports.Report:
    return fn(session, period)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--timeline", type=int, default=10_000_000)
    parser.add_argument("--skip-load", action="store_true", help="measure the data already loaded")
    args = parser.parse_args()
    if URL.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] == "test":
        sys.exit("refusing to use the shared database `test`")
    if not args.skip_load:
        print(f"loading {args.customers:,} customers and {args.timeline:,} timeline rows into {URL}", flush=True)
        started = time.perf_counter()
        load(args.customers, args.timeline)
        print(f"load total {time.perf_counter() - started:.0f} s", flush=True)
    engine = create_engine(URL)
    if args.skip_load:
        build_rollups(engine)
    with engine.connect() as c:
        counts = {t: c.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in (  # noqa: S608
            "customers", "timeline_entries", "sop_tasks", "tagging_rule_hits", "score_ledger", "lead_assignments",
            "sop_step_outcomes")}
    print("rows: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
    results = {days: measure(days) for days in (30, 90)}
    print("\n| report | 30 days: median of 3 | rows | 90 days: median of 3 | rows |")
    print("|---|---:|---:|---:|---:|")
    for name in reports.REPORTS:
        (t30, r30), (t90, r90) = results[30][name], results[90][name]
        print(f"| {name} | {t30 * 1000:.0f} ms | {r30} | {t90 * 1000:.0f} ms | {r90} |")


if __name__ == "__main__":
    main()
