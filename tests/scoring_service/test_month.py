"""A simulated month through the service (customers added through the WeCom simulator, tags, keyword hits,
messages, SOP tasks, an SQL assignment; the clock advanced with explicit `now=`), then the dashboard numbers."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.actions import UpsertEmployee
from bot.apply import apply
from bot.db import utcnow
from bot.models import Customer
from bot.services import Services
from bot.sop.models import SopEnrollment, SopTask
from bot.sop.service import close_task
from bot.tagging.apply_tagging import FireRule
from tests.conftest import ADMIN, SimHarness, run_worker
from tests.scoring_service.helpers import assignments, event, run, tag
from tests.sop_service.helpers import make_library


@dataclass
class Month:
    base: datetime
    ext: dict[str, str]

    @property
    def query(self) -> dict[str, str]:
        return {"from": (self.base - timedelta(days=1)).isoformat(), "to": (self.base + timedelta(days=32)).isoformat(),
                "now": (self.base + timedelta(days=31)).isoformat()}


@pytest.fixture
def month(services: Services, sim: SimHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Month:
    monkeypatch.setenv("SOPBOT_CONTENT_DIR", str(make_library(tmp_path)))  # no shipped SOPs: our tasks only
    monkeypatch.setenv("SOPBOT_SALES_DEPARTMENTS", "2")
    with services.transaction() as s:
        apply([UpsertEmployee(u, {"name": n, "department_ids": d, "manager_userid": m})
               for u, n, d, m in (("LiMing", "李明", [2], None), ("WangFang", "王芳", [2], "LiMing"),
                                  ("LiuYang", "刘洋", [3], "ChenJing"))], s, context_key="test:employees")
    base = utcnow().replace(microsecond=0)
    ext: dict[str, str] = {}
    for key, owner, state in (("c1", "WangFang", "webinar"), ("c2", "WangFang", "webinar"),
                              ("c3", "LiuYang", "webinar"), ("c4", "LiuYang", "website"),
                              ("c5", "LiuYang", "website"), ("c6", "WangFang", "poster_qr_0412")):
        ext[key] = str(sim.control("actions/add_customer", {"userid": owner, "name": f"客户{key}",
                                                             "state": state})["external_userid"])
    run_worker(services)
    day = timedelta(days=1)
    hour = timedelta(hours=1)

    def fire(key: str, rule_id: str, at: datetime) -> None:
        run(services, at, [FireRule(rule_id, ext[key], at, f"kf:{key}:{rule_id}",
                                    {"message_source": "kf", "msgid": f"{key}-{rule_id}", "keyword": "价格"})],
            f"fire:{key}:{rule_id}")

    tag(services, ext["c1"], "规模:200人以上,角色:老板", base + day)  # 8 + 27 -> engaged
    tag(services, ext["c2"], "规模:200人以上", base + day)  # 23 -> engaged
    fire("c2", "intent_pricing", base + day + hour)  # 38, still engaged
    tag(services, ext["c5"], "规模:200人以上,行业:制造,角色:老板", base + day)  # 37 -> engaged
    fire("c5", "intent_pricing", base + day + hour)  # 52 -> MQL

    tasks = {}
    with services.transaction() as s:
        ids = dict((k, v) for k, v in s.execute(select(Customer.external_userid, Customer.id)).all())
        for name, key, owner, step, variant, due in (
                ("t1", "c1", "WangFang", "d1", "A", base + day + 2 * hour),
                ("t2", "c2", "WangFang", "d1", "B", base + day + 2 * hour),
                ("t3", "c3", "LiuYang", "d1", "A", base + day + 2 * hour),
                ("t4", "c4", "LiuYang", "d1", "B", base + day + 2 * hour),
                ("t5", "c1", "WangFang", "d7", None, base + 7 * day),
                ("t6", "c5", "LiuYang", "d1", "A", base + 40 * day)):
            enrollment = s.scalar(select(SopEnrollment).where(SopEnrollment.external_userid == ext[key]))
            if enrollment is None:
                enrollment = SopEnrollment(sop_id="month_test", customer_id=ids[ext[key]], external_userid=ext[key],
                                           rotation=1, owner_userid=owner, started_at=base, state="active")
                s.add(enrollment)
                s.flush()
            task = SopTask(enrollment_id=enrollment.id, sop_id="month_test", step_id=step,
                           step_index=0 if step == "d1" else 1, customer_id=ids[ext[key]], external_userid=ext[key],
                           owner_userid=owner, variant_id=variant, script_id="welcome.webinar", touchpoint="chat",
                           planned_at=due, due_at=due, state="pending")
            s.add(task)
            s.flush()
            tasks[name] = task.id

    def close(name: str, state: str, at: datetime, by: str) -> None:
        with services.transaction() as s:
            task = s.get(SopTask, tasks[name])
            assert task is not None
            apply(close_task(s, task, state, reason=None, by=by, now=at), s, now=at, context_key=f"test:close:{name}")

    close("t1", "done", base + day + 3 * hour, "WangFang")  # on time
    close("t4", "done", base + day + 4 * hour, "LiuYang")  # on time
    event(services, ext["c4"], "message_received", base + day + 9 * hour, {"source": "kf"})  # reply within 48 h
    event(services, ext["c1"], "message_received", base + 2 * day, {"source": "kf"})  # reply within 48 h …
    fire("c1", "intent_pricing", base + 2 * day)  # … and an inquiry: 52 -> MQL
    fire("c1", "intent_trial", base + 2 * day + 5 * timedelta(minutes=1))  # 72
    fire("c1", "stage_business", base + 2 * day + 10 * timedelta(minutes=1))  # 97 -> SQL, routed to the owner
    event(services, ext["c1"], "message_sent", base + 2 * day + 20 * timedelta(minutes=1), {"direction": "employee"},
          userid="WangFang")  # first touch 10 minutes after the assignment
    close("t2", "done", base + 3 * day + 3 * hour, "WangFang")  # late (> 24 h after due)
    close("t5", "skipped", base + 7 * day + hour, "WangFang")
    from jobs.scoring import tick

    for d in range(3, 32, 7):  # the scheduler through the month: decay recomputes, no SLA miss to escalate
        tick(services, base + d * day)
    return Month(base, ext)


def _rows(report: dict[str, Any], *keys: str) -> list[tuple[Any, ...]]:
    return [tuple(r[k] for k in keys) for r in report["rows"]]


def test_month_dashboard_numbers(services: Services, client: Any, month: Month) -> None:
    def report(name: str) -> dict[str, Any]:
        resp = client.get(f"/api/v1/reports/{name}", query_string=month.query, headers=ADMIN)
        assert resp.status_code == 200, resp.get_json()
        return dict(resp.get_json())

    funnel = report("funnel")
    assert _rows(funnel, "stage", "reached", "conversion_pct") == [
        ("new", 6, None), ("engaged", 3, 50.0), ("mql", 2, 66.7), ("sql", 1, 50.0), ("won", 0, 0.0)]
    assert _rows(report("channels"), "channel", "customers") == [
        ("9月直播报名页", 3), ("官网在线咨询", 2), ("4月数字化诊断海报", 1)]
    assert _rows(report("sop_execution"), "userid", "due", "done_on_time", "done_late", "overdue", "open",
                 "skipped") == [("WangFang", 3, 1, 1, 0, 0, 1), ("LiuYang", 2, 1, 0, 1, 0, 0)]
    assert _rows(report("sop_steps"), "sop", "step", "variant", "done", "replied", "reply_pct", "inquired",
                 "inquiry_pct") == [("month_test", "d1", "A", 1, 1, 100.0, 1, 100.0),
                                    ("month_test", "d1", "B", 2, 1, 50.0, 0, 0.0)]
    assert _rows(report("keyword_hits"), "rule_id", "hits", "applied") == [
        ("intent_pricing", 3, 3), ("intent_trial", 1, 1), ("stage_business", 1, 1)]
    touch = report("first_touch")
    assert _rows(touch, "userid", "assigned", "median_minutes") == [("WangFang", 1, 10.0)]
    [assignment] = assignments(services, month.ext["c1"])
    assert (assignment.userid, assignment.reason, assignment.first_touch_kind) == ("WangFang", "owner", "message")

    # The page: token once -> cookie -> charts; every chart has its CSV.
    assert client.get("/dashboard").status_code == 401
    assert client.get("/dashboard?token=wrong").status_code == 401
    login = client.get("/dashboard", query_string={"token": "test-admin-token", **month.query})
    assert login.status_code == 303 and "token" not in login.headers["Location"]
    page = client.get("/dashboard", query_string=month.query)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert html.count("<svg") == 6 and "阶段漏斗" in html and "9月直播报名页" in html and "<script" not in html
    for name in ("funnel", "channels", "sop_execution", "sop_steps", "keyword_hits", "first_touch"):
        assert f'href="/dashboard/{name}.csv?' in html
    resp = client.get("/dashboard/channels.csv", query_string=month.query)
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    table = list(csv.reader(io.StringIO(resp.get_data(as_text=True).lstrip("\ufeff"))))
    assert table == [["渠道", "state", "新增客户数"], ["9月直播报名页", "webinar", "3"],
                     ["官网在线咨询", "website", "2"], ["4月数字化诊断海报", "poster_qr_0412", "1"]]
    assert client.get("/dashboard/nope.csv", query_string=month.query).status_code == 404
    bearer = client.get("/dashboard/funnel.csv", query_string=month.query,
                        headers={"Authorization": "Bearer test-admin-token"})
    assert bearer.status_code == 200


# The dashboard in a real browser runs on the demo month seeded through the pipeline: tests/dashboard/.
