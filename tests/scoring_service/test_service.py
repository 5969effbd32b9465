"""Scoring service with the database: ledger (caps, repeat limits, idempotency), decay and re-arming,
stage changes and demotions, routing with capacity, the accept SLA in business hours and escalation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.services import Services
from jobs.scoring import tick
from tests.conftest import ADMIN
from tests.scoring_service.helpers import (
    add_customer,
    assignments,
    customer,
    employees,
    event,
    keyword,
    ledger,
    outbox,
    stage_changes,
    state_of,
    tag,
)

T0 = datetime(2025, 3, 3, 2, 0, tzinfo=UTC)  # Monday 10:00 Asia/Shanghai
FRIDAY_1750 = datetime(2025, 3, 14, 9, 50, tzinfo=UTC)  # Friday 17:50 Asia/Shanghai


@pytest.fixture(autouse=True)
def _sales_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPBOT_SALES_DEPARTMENTS", "2")
    monkeypatch.delenv("SOPBOT_SALES_CAPACITY", raising=False)


def test_ledger_caps_repeat_limits_and_idempotency(services: Services, client: Any) -> None:
    employees(services, [("A", [2], None)], T0)
    add_customer(services, "c1", "A", T0)
    for hours in (1, 2, 3):  # kw_pricing: repeat_limit 2 per 7 days, cap 30
        keyword(services, "c1", "intent_pricing", T0 + timedelta(hours=hours))
    keyword(services, "c1", "intent_pricing", T0 + timedelta(days=10))  # outside the window, but the cap is full
    tag(services, "c1", "行业:制造", T0)
    from bot.actions import RemoveTags, TagRef
    from tests.scoring_service.helpers import run

    run(services, T0 + timedelta(hours=4), [RemoveTags("c1", (TagRef("行业", "制造"),), source="manual",
                                                       mark_in_wecom=False)], "untag")
    tag(services, "c1", "行业:制造", T0 + timedelta(hours=5))  # fit cap 10: re-tagging adds nothing
    event(services, "c1", "message_received", T0 + timedelta(hours=6), {"source": "kf"})
    event(services, "c1", "message_received", T0 + timedelta(hours=6), {"source": "kf"})  # redelivered: no-op

    rows = ledger(services, "c1")
    assert [(r.rule_id, r.points) for r in rows] == [
        ("kw_pricing", 15), ("kw_pricing", 15), ("fit_target_industry", 10), ("replied", 2)]
    c1 = customer(services, "c1")
    assert c1.stage == "engaged"  # 10 + 30 + 2 (barely decayed) = 42 < 45
    assert 41.5 < c1.score < 42

    now = T0 + timedelta(hours=6)
    body = client.get(f"/api/v1/customers/c1/score?now={now.isoformat()}", headers=ADMIN).get_json()
    assert body["fit"] == 10
    assert [e["rule_id"] for e in body["entries"]] == ["fit_target_industry", "kw_pricing", "kw_pricing", "replied"]
    assert body["explanation"][-1].startswith("合计 41.")
    assert any("询价" in line and "半衰期" in line for line in body["explanation"])
    assert any("目标行业" in line and "不衰减" in line for line in body["explanation"])


def test_decay_tick_rearms_threshold_and_rising_again_fires_it(services: Services, client: Any) -> None:
    employees(services, [("A", [2], None)], T0)
    add_customer(services, "c2", "A", T0, state="webinar")  # src_webinar +8
    tag(services, "c2", "规模:200人以上,角色:老板", T0)  # +15 +12 fit
    keyword(services, "c2", "intent_pricing", T0)  # +15 -> 50: MQL
    c2 = customer(services, "c2")
    assert (c2.stage, c2.score) == ("mql", 50.0)
    assert state_of(services, "c2").armed == {"engaged": False, "mql": False, "sql": True}
    rows, timeline = stage_changes(services, "c2")
    assert [(r.from_stage, r.to_stage) for r in rows] == [("new", "engaged"), ("engaged", "mql")]
    assert timeline[-1].detail["to"] == "mql" and "越过" in timeline[-1].detail["reason"]

    # One half-life later the engagement (8 + 15) counts half: 27 + 11.5.
    later = T0 + timedelta(days=21)
    assert client.get(f"/api/v1/customers/c2/score?now={later.isoformat()}", headers=ADMIN).get_json()["total"] == 38.5

    # Three half-lives: 27 + 23/8 = 29.875 < 45 - 5 -> the MQL threshold re-arms; the stage stays (forward only).
    report = tick(services, T0 + timedelta(days=63))
    assert report.rescored == 1
    c2 = customer(services, "c2")
    assert (c2.stage, c2.score) == ("mql", 29.88)
    assert state_of(services, "c2").armed == {"engaged": False, "mql": True, "sql": True}
    assert tick(services, T0 + timedelta(days=63, hours=1)).rescored == 0  # not due again yet

    keyword(services, "c2", "intent_trial", T0 + timedelta(days=63), tag_name="意向:试用")  # +20 -> 49.9
    assert state_of(services, "c2").armed["mql"] is False  # fired again on the upward crossing
    assert customer(services, "c2").stage == "mql"
    assert len(stage_changes(services, "c2")[0]) == 2  # no change logged: already MQL


def _make_sql(services: Services, ext: str, owner: str, at: datetime) -> None:
    add_customer(services, ext, owner, at)
    tag(services, ext, "规模:200人以上,行业:制造,角色:老板", at)  # 37 fit -> engaged
    keyword(services, ext, "stage_business", at, tag_name="阶段:商务")  # +25 -> 62 -> MQL
    keyword(services, ext, "intent_trial", at, tag_name="意向:试用")  # +20 -> 82 -> SQL


def test_sql_goes_to_owner_with_business_hours_deadline_and_escalates_once(services: Services, client: Any) -> None:
    employees(services, [("boss", [9], None), ("A", [2], "boss"), ("B", [2], "boss")], FRIDAY_1750)
    _make_sql(services, "c3", "A", FRIDAY_1750)
    assert customer(services, "c3").stage == "sql"
    [row] = assignments(services, "c3")
    assert (row.userid, row.reason, row.status) == ("A", "owner", "pending")
    # 10 business minutes on Friday, 20 on Monday: 2025-03-17 09:20 Asia/Shanghai.
    assert row.accept_by == datetime(2025, 3, 17, 1, 20, tzinfo=UTC)
    [note] = outbox(services, "scoring_notify")
    assert note.payload["userids"] == ["A"] and note.queue == "realtime"
    assert note.payload["textcard"]["title"] == "新的销售线索：客户c3"
    assert "03-17 09:20" in note.payload["textcard"]["description"]

    assert tick(services, datetime(2025, 3, 14, 10, 30, tzinfo=UTC)).escalated == 0  # Friday 18:30: not late
    assert tick(services, datetime(2025, 3, 17, 1, 20, tzinfo=UTC)).escalated == 0  # at the deadline: still in time
    assert tick(services, datetime(2025, 3, 17, 1, 21, tzinfo=UTC)).escalated == 1
    assert tick(services, datetime(2025, 3, 17, 1, 30, tzinfo=UTC)).escalated == 0  # escalated once
    [row] = assignments(services, "c3")
    assert row.escalated_to == "boss"
    notes = outbox(services, "scoring_notify")
    assert [n.payload["userids"] for n in notes] == [["A"], ["boss"]]
    assert "未在 03-17 09:20 前接受" in notes[1].payload["textcard"]["description"]

    accepted_at = datetime(2025, 3, 17, 1, 40, tzinfo=UTC)
    resp = client.post(f"/api/v1/assignments/{row.id}/accept?now={accepted_at.isoformat()}", headers=ADMIN)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["first_touch_kind"] == "accepted"
    assert client.post(f"/api/v1/assignments/{row.id}/accept", headers=ADMIN).status_code == 409
    report = client.get("/api/v1/reports/first_touch?from=2025-03-01&to=2025-03-31"
                        f"&now={accepted_at.isoformat()}", headers=ADMIN).get_json()
    assert report["rows"] == [{"userid": "A", "assigned": 1, "accepted_in_sla": 0, "accepted_late": 1,
                               "missed_open": 0, "pending": 0, "touched_in_sla": 0, "in_sla_pct": 0.0,
                               "median_minutes": 3830.0, "p90_minutes": 3830.0}]


def test_round_robin_respects_capacity_and_overflows_to_least_loaded(
        services: Services, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPBOT_SALES_CAPACITY", "2")
    employees(services, [("owner", [1], None), ("A", [2], None), ("B", [2], None), ("C", [2], None)], T0)
    picks = []
    for i in range(7):
        ext = f"rr{i}"
        add_customer(services, ext, "owner", T0)  # the owner is not in sales: round-robin
        resp = client.post(f"/api/v1/customers/{ext}/stage?now={T0.isoformat()}", headers=ADMIN,
                           json={"stage": "sql", "reason": "电话确认了预算"})
        assert resp.status_code == 200, resp.get_json()
        a = resp.get_json()["assignment"]
        picks.append((a["userid"], a["reason"], a["over_capacity"]))
    assert picks[:6] == [(u, "round robin", False) for u in "ABCABC"]
    assert picks[6] == ("A", "over capacity", True)


def test_reject_reroutes_recycle_demotes_and_logs(services: Services, client: Any) -> None:
    employees(services, [("boss", [9], None), ("A", [2], "boss"), ("B", [2], "boss")], T0)
    _make_sql(services, "c4", "A", T0)
    [first] = assignments(services, "c4")
    at = (T0 + timedelta(minutes=5)).isoformat()
    assert client.post(f"/api/v1/assignments/{first.id}/reject?now={at}", headers=ADMIN, json={}).status_code == 400
    resp = client.post(f"/api/v1/assignments/{first.id}/reject?now={at}", headers=ADMIN,
                       json={"reason": "不是我负责的区域", "by": "A"})
    assert resp.status_code == 200
    again = resp.get_json()["reassigned"]
    assert (resp.get_json()["status"], again["userid"], again["previous_id"]) == ("rejected", "B", first.id)

    # B chats first: time-to-first-touch is the message, not the later accept.
    event(services, "c4", "message_sent", T0 + timedelta(minutes=7), {"direction": "employee"}, userid="B")
    resp = client.post(f"/api/v1/assignments/{again['id']}/recycle?now={(T0 + timedelta(hours=1)).isoformat()}",
                       headers=ADMIN, json={"reason": "预算明年才批", "by": "B"})
    assert resp.status_code == 200, resp.get_json()
    assert (resp.get_json()["first_touch_at"], resp.get_json()["first_touch_kind"]) == (
        (T0 + timedelta(minutes=7)).isoformat(), "message")
    c4 = customer(services, "c4")
    assert c4.stage == "engaged"
    rows, timeline = stage_changes(services, "c4")
    assert (rows[-1].from_stage, rows[-1].to_stage, rows[-1].demotion, rows[-1].by) == ("sql", "engaged", True, "B")
    assert timeline[-1].detail == {**timeline[-1].detail, "from": "sql", "to": "engaged", "demotion": True,
                                   "reason": "退回培育：预算明年才批"}
    # Thresholds stay disarmed: more engagement does not bounce the lead straight back to SQL.
    event(services, "c4", "message_received", T0 + timedelta(hours=2), {"source": "kf"})
    assert customer(services, "c4").stage == "engaged"

    resp = client.post("/api/v1/customers/c4/stage", headers=ADMIN, json={"stage": "lost", "reason": " "})
    assert resp.status_code == 400
    resp = client.post("/api/v1/customers/c4/stage", headers=ADMIN, json={"stage": "won", "reason": "签约"})
    assert resp.status_code == 200 and resp.get_json()["stage"] == "won"
    resp = client.post("/api/v1/customers/c4/stage", headers=ADMIN, json={"stage": "won", "reason": "再次"})
    assert resp.status_code == 409
    resp = client.post("/api/v1/customers/c4/stage", headers=ADMIN, json={"stage": "mql", "reason": "客户反悔"})
    assert resp.status_code == 200 and resp.get_json()["stage"] == "mql"  # reopen, logged as a demotion
    assert stage_changes(services, "c4")[0][-1].demotion is True
    assert client.get("/api/v1/customers/nobody/score", headers=ADMIN).status_code == 404
