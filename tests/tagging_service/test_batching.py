"""Archive batches: one stored batch = one process_messages job that matches every message, applies all the tag
decisions in one transaction and makes the batch's mark_tag calls itself (no job per customer)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from bot.models import Customer, Outbox
from bot.services import Services
from bot.tagging.models import RuleHit, TaggingMessage
from jobs.wecom_calls import run_outbox_row
from tests.conftest import ADMIN, SimHarness, run_worker

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)

RULES = """
keyword_rules:
  - id: pricing
    name: 询价
    keywords: [价格]
    add_tags: ["意向:询价"]
  - id: objection
    name: 嫌贵
    keywords: [太贵]
    threshold: {count: 3, window: 7d}
    add_tags: ["风险:价格敏感"]
"""


@pytest.fixture
def rules(rules_dir: Callable[[str], Path]) -> Path:
    return rules_dir(RULES)


def _customer(sim: SimHarness, services: Services) -> str:
    ext = sim.control("actions/add_customer", {"userid": "WangFang", "name": "周杰", "state": "website"})
    run_worker(services)
    return str(ext["external_userid"])


def _record(msgid: str, ext: str, text: str, at: datetime) -> dict[str, Any]:
    return {"msgid": msgid, "action": "send", "from": ext, "tolist": ["WangFang"], "roomid": "",
            "msgtime": int(at.timestamp() * 1000), "msgtype": "text", "text": {"content": text}}


def _post(client: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    resp = client.post("/api/v1/messages", json=records, headers=ADMIN)
    assert resp.status_code == 202, resp.get_json()
    return dict(resp.get_json())


def _mark_calls(sim: SimHarness) -> int:
    return len(sim.calls("externalcontact/mark_tag"))


def _marks(sim: SimHarness, ext: str, since: int) -> list[dict[str, Any]]:
    """Successful mark_tag calls for ``ext`` among those WeCom received after the first ``since`` (the calls
    before are the channel welcome tags of the customer's add)."""
    return [c["body"] for c in sim.calls("externalcontact/mark_tag")[since:]
            if c["errcode"] == 0 and c["body"]["external_userid"] == ext]


def _outbox(services: Services, kind: str) -> list[tuple[int, str]]:
    with services.transaction() as s:
        return [(i, st) for i, st in s.execute(select(Outbox.id, Outbox.status).where(Outbox.kind == kind)
                                               .order_by(Outbox.id)).all()]


def _batch_marks(services: Services, job_id: int) -> list[tuple[str, int, str | None]]:
    """(status, attempts, last_error) of the mark_tag rows the batch job created."""
    with services.transaction() as s:
        return [(st, a, e) for st, a, e in s.execute(
            select(Outbox.status, Outbox.attempts, Outbox.last_error).where(
                Outbox.kind == "mark_tag", Outbox.dedupe_key.like(f"mark_tag:outbox:{job_id}:%"))
            .order_by(Outbox.id)).all()]


def test_one_job_per_batch_with_duplicates_and_mark_tag_inline(client: Any, services: Services, sim: SimHarness,
                                                              rules: Path) -> None:
    a, b = _customer(sim, services), _customer(sim, services)
    since = _mark_calls(sim)
    answer = _post(client, [_record("m1", a, "价格多少", T0), _record("m1", a, "价格多少", T0),
                            _record("m2", b, "请问价格", T0 + timedelta(seconds=1))])
    assert answer == {"accepted": 2, "duplicates": 1, "errors": []}
    assert len(_outbox(services, "process_messages")) == 1  # one job for the batch
    run_worker(services)
    [(job_id, status)] = _outbox(services, "process_messages")
    assert status == "done"
    # One mark_tag row per customer, already done by the batch job: no job of their own was needed.
    assert _batch_marks(services, job_id) == [("done", 1, None), ("done", 1, None)]
    assert len(_marks(sim, a, since)) == 1 and len(_marks(sim, b, since)) == 1
    with services.transaction() as s:
        assert s.scalar(select(func.count()).select_from(TaggingMessage)) == 2
        assert s.scalars(select(TaggingMessage.status)).all() == ["done", "done"]
        assert sorted(s.scalars(select(RuleHit.hit_key)).all()) == ["pricing:archive:m1", "pricing:archive:m2"]


def test_rerun_of_a_batch_job_is_a_no_op(client: Any, services: Services, sim: SimHarness, rules: Path) -> None:
    ext = _customer(sim, services)
    since = _mark_calls(sim)
    _post(client, [_record("r1", ext, "价格", T0), _record("r2", ext, "太贵", T0 + timedelta(minutes=1))])
    run_worker(services)
    [(job_id, _)] = _outbox(services, "process_messages")
    with services.transaction() as s:
        hits_before = s.scalar(select(func.count()).select_from(RuleHit))
        outbox_before = s.scalar(select(func.count()).select_from(Outbox))
        # As after a crash between the batch's commit and the job's completion: the row is run again.
        s.execute(update(Outbox).where(Outbox.id == job_id).values(status="retry"))
    marks_before = len(_marks(sim, ext, since))
    assert run_outbox_row(services, job_id) == "done"
    with services.transaction() as s:
        assert s.scalar(select(func.count()).select_from(RuleHit)) == hits_before == 2
        assert s.scalar(select(func.count()).select_from(Outbox)) == outbox_before
        result = s.scalar(select(Outbox.result).where(Outbox.id == job_id))
    assert result == {"messages": 2, "outbox": 0}
    assert len(_marks(sim, ext, since)) == marks_before == 1


def test_threshold_counts_hits_within_one_batch(client: Any, services: Services, sim: SimHarness,
                                               rules: Path) -> None:
    ext = _customer(sim, services)
    since = _mark_calls(sim)
    # Posted out of order: the batch is matched in message time order.
    _post(client, [_record("t3", ext, "真的太贵", T0 + timedelta(minutes=2)), _record("t1", ext, "太贵了", T0),
                   _record("t2", ext, "还是太贵", T0 + timedelta(minutes=1))])
    run_worker(services)
    with services.transaction() as s:
        rows = s.execute(select(RuleHit.hit_key, RuleHit.decision).where(RuleHit.rule_id == "objection")
                         .order_by(RuleHit.at)).all()
        cid = s.scalar(select(Customer.id).where(Customer.external_userid == ext))
    assert cid is not None
    assert [tuple(r) for r in rows] == [("objection:archive:t1", "threshold:1/3"),
                                        ("objection:archive:t2", "threshold:2/3"),
                                        ("objection:archive:t3", "apply:threshold:3/3")]
    marks = _marks(sim, ext, since)
    assert len(marks) == 1 and marks[0]["userid"] == "WangFang"


def test_a_failed_inline_call_is_recorded_and_the_batch_completes(client: Any, services: Services,
                                                                   sim: SimHarness, rules: Path) -> None:
    a, b = _customer(sim, services), _customer(sim, services)
    since = _mark_calls(sim)
    sim.control("faults", {"next": {"externalcontact/mark_tag": [60011]}})  # permanent: no privilege
    _post(client, [_record("f1", a, "价格", T0), _record("f2", b, "价格", T0 + timedelta(seconds=1))])
    run_worker(services)
    [(job_id, status)] = _outbox(services, "process_messages")
    assert status == "done"  # the batch itself is complete
    rows = _batch_marks(services, job_id)  # called in id order: the first one met the fault
    assert [(st, attempts) for st, attempts, _ in rows] == [("failed", 1), ("done", 1)]
    assert rows[0][2] is not None and "60011" in rows[0][2]
    with services.transaction() as s:
        order = [p["external_userid"] for p in s.scalars(select(Outbox.payload).where(
            Outbox.dedupe_key.like(f"mark_tag:outbox:{job_id}:%")).order_by(Outbox.id)).all()]
    assert sorted(order) == sorted([a, b])
    assert _marks(sim, order[0], since) == [] and len(_marks(sim, order[1], since)) == 1
