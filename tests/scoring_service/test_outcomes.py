"""The SOP step report's rollup (bot/scoring/outcomes.py) against the definition, whatever order events arrive in.

The oracle below recomputes reply / inquiry within 48 h per done step straight from sop_tasks, the timeline and
the ledger in Python; the report (read from `sop_step_outcomes`) must give the same numbers.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from bot.apply import apply
from bot.db import utcnow
from bot.models import Customer, TimelineEntry
from bot.scoring.models import ScoreLedgerEntry, SopStepOutcome
from bot.services import Services
from bot.sop.models import SopEnrollment, SopTask
from bot.sop.service import close_task
from bot.tagging.apply_tagging import FireRule
from tests.scoring_service.helpers import add_customer, employees, event, run

H = timedelta(hours=1)
WINDOW = timedelta(hours=48)


def _task(services: Services, ext: str, step: str, variant: str | None, at: datetime) -> int:
    with services.transaction() as s:
        cid = s.scalar(select(Customer.id).where(Customer.external_userid == ext))
        assert cid is not None
        enrollment = s.scalar(select(SopEnrollment).where(SopEnrollment.customer_id == cid))
        if enrollment is None:
            enrollment = SopEnrollment(sop_id="outcome_test", customer_id=cid, external_userid=ext, rotation=1,
                                       owner_userid="WangFang", started_at=at, state="active")
            s.add(enrollment)
            s.flush()
        task = SopTask(enrollment_id=enrollment.id, sop_id="outcome_test", step_id=step, step_index=0,
                       customer_id=cid, external_userid=ext, owner_userid="WangFang", variant_id=variant,
                       script_id="welcome.webinar", touchpoint="chat", planned_at=at, due_at=at, state="pending")
        s.add(task)
        s.flush()
        return int(task.id)


def _close(services: Services, task_id: int, at: datetime, state: str = "done") -> None:
    with services.transaction() as s:
        task = s.get(SopTask, task_id)
        assert task is not None
        apply(close_task(s, task, state, reason=None, by="WangFang", now=at), s, now=at,
              context_key=f"test:close:{task_id}")


def _fire(services: Services, ext: str, rule_id: str, at: datetime) -> None:
    run(services, at, [FireRule(rule_id, ext, at, f"kf:{ext}:{rule_id}:{at.isoformat()}",
                                {"message_source": "kf", "msgid": f"{ext}-{rule_id}-{at.timestamp()}",
                                 "keyword": "价格"})], f"fire:{ext}:{rule_id}")


def _oracle(services: Services) -> list[tuple[Any, ...]]:
    with services.transaction() as s:
        tasks = s.execute(select(SopTask.sop_id, SopTask.step_id, SopTask.variant_id, SopTask.customer_id,
                                 SopTask.completed_at).where(SopTask.state == "done")).all()
        messages = s.execute(select(TimelineEntry.customer_id, TimelineEntry.at)
                             .where(TimelineEntry.kind == "message_received")).all()
        inquiries = s.execute(select(ScoreLedgerEntry.customer_id, ScoreLedgerEntry.at).where(
            ScoreLedgerEntry.event_kind == "keyword_rule_fired", ScoreLedgerEntry.points > 0)).all()
    out: dict[tuple[str, str, str], list[int]] = {}
    for sop, step, variant, cid, done in tasks:
        row = out.setdefault((sop, step, variant or ""), [0, 0, 0])
        row[0] += 1
        row[1] += any(c == cid and done < at <= done + WINDOW for c, at in messages)
        row[2] += any(c == cid and done < at <= done + WINDOW for c, at in inquiries)
    return sorted((*k, *v) for k, v in out.items())


def _report(client: Any, base: datetime) -> list[tuple[Any, ...]]:
    resp = client.get("/api/v1/reports/sop_steps", headers={"Authorization": "Bearer test-admin-token"},
                      query_string={"from": (base - timedelta(days=1)).isoformat(),
                                    "to": (base + timedelta(days=20)).isoformat()})
    assert resp.status_code == 200, resp.get_json()
    return [(r["sop"], r["step"], r["variant"], r["done"], r["replied"], r["inquired"])
            for r in resp.get_json()["rows"]]


def test_rollup_equals_the_definition_in_any_event_order(services: Services, client: Any) -> None:
    base = utcnow().replace(microsecond=0) - timedelta(days=10)
    employees(services, [("WangFang", [2], None)], base)
    for ext in ("a", "b", "c", "d", "e"):
        add_customer(services, ext, "WangFang", base, state="webinar")
    t_a = _task(services, "a", "d1", "A", base)
    t_b = _task(services, "b", "d1", "B", base)
    t_c = _task(services, "c", "d1", "A", base)
    t_d = _task(services, "d", "d7", None, base)
    t_e = _task(services, "e", "d7", None, base)
    t_e2 = _task(services, "e", "d1", "B", base)

    # a: done, then a reply 47 h later and a pricing keyword 3 h later (both count).
    _close(services, t_a, base + H)
    event(services, "a", "message_received", base + 48 * H, {"source": "kf"})
    _fire(services, "a", "intent_pricing", base + 4 * H)
    # b: the reply was recorded before the step was closed (back-dated close): the insert's probe finds it.
    event(services, "b", "message_received", base + 30 * H, {"source": "kf"})
    _close(services, t_b, base + 2 * H)
    # c: a reply exactly at the done time (not after), one just past 48 h, and a negative keyword: none count.
    _close(services, t_c, base + 5 * H)
    event(services, "c", "message_received", base + 5 * H, {"source": "kf"})
    event(services, "c", "message_received", base + 5 * H + WINDOW + timedelta(seconds=1), {"source": "kf"})
    _fire(services, "c", "churn_not_interested", base + 6 * H)
    # d: skipped steps are not in the report, whatever follows.
    _close(services, t_d, base + H, state="skipped")
    event(services, "d", "message_received", base + 2 * H, {"source": "kf"})
    # e: two steps done; one message answers both, a later keyword only the second (the first is > 48 h old).
    _close(services, t_e, base + H)
    _close(services, t_e2, base + 40 * H)
    event(services, "e", "message_received", base + 41 * H, {"source": "kf"})
    _fire(services, "e", "intent_trial", base + 60 * H)

    expected = [("outcome_test", "d1", "A", 2, 1, 1), ("outcome_test", "d1", "B", 2, 2, 1),
                ("outcome_test", "d7", "", 1, 1, 0)]
    assert _oracle(services) == expected
    assert _report(client, base) == expected
    with services.transaction() as s:
        rows = {r.task_id: r for r in s.scalars(select(SopStepOutcome))}
    assert set(rows) == {t_a, t_b, t_c, t_e, t_e2}
    assert rows[t_a].replied_at == base + 48 * H and rows[t_a].inquired_at == base + 4 * H
    assert rows[t_b].replied_at == base + 30 * H and rows[t_c].replied_at is None
    assert rows[t_e].inquired_at is None and rows[t_e2].inquired_at == base + 60 * H
