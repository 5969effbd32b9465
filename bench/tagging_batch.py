"""Worker CPU and SQL statements per message of the archive batch job, in-process (no web, no rq, no WeCom HTTP).

    .venv/bin/python bench/tagging_batch.py [--messages 500] [--batch 10] [--database-url postgresql://…]
                                            [--text 好的，谢谢] [--statements] [--profile FILE]

The same workload as bench/tagging_e2e.py (one customer per message, each following WangFang, text "请问价格多少？",
so the file rule intent_pricing fires once per message; ``--text`` changes what they say, e.g. to a line that fires
nothing): the batches are stored through ``ingest_archive``, then
every batch's ``process_messages`` job runs here, one after the other, with a fake WeCom answering mark_tag. CPU is
``time.process_time`` (not wall clock: the figure holds on a shared machine); the first batch warms up and is not
counted. ``--statements`` prints, for one more batch, every statement per message with the code that issued it.
Default: SQLite in a temp dir. Redis is not used (enqueues are no-ops here).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.schema import fresh_schema  # noqa: E402


class FakeWeCom:
    calls = 0

    def mark_tag(self, *args: Any, **kwargs: Any) -> None:
        FakeWeCom.calls += 1


class Row:  # process_messages reads only the outbox row's id
    def __init__(self, row_id: int) -> None:
        self.id = row_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--database-url")
    parser.add_argument("--text", default="请问价格多少？",
                        help="what every message says (default fires intent_pricing; '好的，谢谢' fires nothing)")
    parser.add_argument("--statements", action="store_true", help="per-statement breakdown of one batch")
    parser.add_argument("--profile", help="write a cProfile of the measured jobs to this file")
    args = parser.parse_args()

    from bot.config import DEMO_WECOM

    var = tempfile.mkdtemp(prefix="sopbot-tagbatch-")
    os.environ.update(DEMO_WECOM)
    os.environ.update({"SOPBOT_SECRET_KEY": "bench-secret-key-0123456789", "SOPBOT_ADMIN_TOKEN": "bench-admin-token",
                       "SOPBOT_VAR_DIR": var, "SOPBOT_DATABASE_URL": args.database_url or f"sqlite:///{var}/sopbot.db",
                       "SOPBOT_REDIS_URL": "redis://127.0.0.1:6379/15"})  # never connected: enqueues are stubbed

    from sqlalchemy import event, insert, select

    import jobs.tagging as jt
    from bot.config import load_settings
    from bot.db import utcnow
    from bot.models import CorpTag, Customer, FollowRelation, Outbox
    from bot.services import Services

    url = os.environ["SOPBOT_DATABASE_URL"]
    fresh_schema(url)
    services = Services.from_settings(load_settings())
    services.__dict__["wecom"] = FakeWeCom()
    jt.enqueue_outbox = lambda redis, rows: None  # type: ignore[assignment]
    now = utcnow()
    base = time.time() - 3600  # messages in the past: lead scores count them at job time

    def customers(prefix: str, n: int) -> list[str]:
        exts = [f"wm{prefix}{i:08d}" for i in range(n)]
        with services.transaction() as s:
            s.execute(insert(Customer), [{"external_userid": e, "name": "客户", "profile": {}, "custom_fields": {},
                                          "stage": "new", "score": 0.0, "created_at": now, "updated_at": now}
                                         for e in exts])
            ids = dict(s.execute(select(Customer.external_userid, Customer.id)
                                 .where(Customer.external_userid.in_(exts))).all())
            s.execute(insert(FollowRelation), [{"customer_id": ids[e], "userid": "WangFang", "added_at": now,
                                                "half_added": False} for e in exts])
        return exts

    def store(prefix: str, exts: list[str]) -> list[tuple[int, dict[str, Any]]]:
        with services.transaction() as s:
            after = s.scalar(select(Outbox.id).order_by(Outbox.id.desc()).limit(1)) or 0
        for start in range(0, len(exts), args.batch):
            records = [{"msgid": f"{prefix}-{i}", "action": "send", "from": exts[i], "tolist": ["WangFang"],
                        "roomid": "", "msgtime": int((base + i / 100) * 1000), "msgtype": "text",
                        "text": {"content": args.text}}
                       for i in range(start, min(start + args.batch, len(exts)))]
            jt.ingest_archive(services, jt.parse_archive(records)[0])
        with services.transaction() as s:
            return [(i, p) for i, p in s.execute(select(Outbox.id, Outbox.payload).where(
                Outbox.kind == "process_messages", Outbox.id > after).order_by(Outbox.id)).all()]

    with services.transaction() as s:  # the tag is in the local mirror, as after the first real call
        s.add(CorpTag(id="bench-tag", is_group=False, group_id="g", group_name="意向", name="询价", order=0,
                      deleted=False))
    jobs = store("p", customers("P", args.messages))
    statements = [0]

    @event.listens_for(services.engine, "before_cursor_execute")
    def _count(*_: Any) -> None:
        statements[0] += 1

    jt.process_messages(services, jobs[0][1], Row(jobs[0][0]))  # warm-up (imports, rules, statement caches)
    statements[0] = 0
    profiler = cProfile.Profile() if args.profile else None
    started = time.process_time()
    if profiler:
        profiler.enable()
    for job_id, payload in jobs[1:]:
        jt.process_messages(services, payload, Row(job_id))
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    cpu = time.process_time() - started
    n = sum(len(p["ids"]) for _, p in jobs[1:])
    print(f"{'PostgreSQL' if url.startswith('postgresql') else 'SQLite'}: {n} messages in {len(jobs) - 1} batches of "
          f"{args.batch}: {1000 * cpu / n:.2f} ms CPU per message, {statements[0] / n:.1f} SQL statements per message, "
          f"{FakeWeCom.calls} mark_tag calls")
    if args.statements:
        where: collections.Counter[tuple[str, str]] = collections.Counter()
        [(job_id, payload)] = store("q", customers("Q", args.batch))

        @event.listens_for(services.engine, "before_cursor_execute")
        def _where(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            frames = [f for f in traceback.extract_stack() if f.filename.startswith(str(ROOT))
                      and "/bench/" not in f.filename and "/.venv/" not in f.filename]
            at = " <- ".join(f"{Path(f.filename).relative_to(ROOT)}:{f.lineno}" for f in frames[-3:][::-1])
            where[(" ".join(statement.split())[:60], at)] += 1

        jt.process_messages(services, payload, Row(job_id))
        for (statement, at), count in sorted(where.items(), key=lambda x: -x[1]):
            print(f"{count / args.batch:5.1f}  {statement:60s}  {at}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
