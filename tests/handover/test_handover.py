"""Customer handover (在职继承 / 离职继承) end to end against the WeCom simulator, plus its rules in isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.actions import UpsertCustomer, UpsertEmployee, UpsertFollow
from bot.apply import apply
from bot.handover.apply_handover import RecordTransferResults
from bot.handover.models import Handover, HandoverGroup, HandoverItem
from bot.handover.service import brief_token, read_brief_token, resolve_successor
from bot.models import Customer, Employee, FollowRelation, GroupChat, Outbox, TimelineEntry
from bot.services import Services
from bot.wecom.simulator import callbacks as cb
from jobs import handover as handover_jobs
from jobs.sweeper import sweep
from jobs.wecom_calls import LEASE, run_outbox_row
from tests.conftest import ADMIN, SimHarness, run_worker

TRANSFER = "externalcontact/transfer_customer"
DAY = 86400


def sim_now(sim: SimHarness) -> datetime:
    return datetime.fromtimestamp(sim.state.now(), UTC)


def seed(sim: SimHarness, services: Services, userid: str, count: int, prefix: str = "wmHandover") -> list[str]:
    """Customers of `userid` both in the simulator and in the local database (as the sync would leave them)."""
    ids = [f"{prefix}{i:03d}" for i in range(count)]
    added = sim_now(sim) - timedelta(days=30)
    for i, ext in enumerate(ids):
        sim.state.add_customer(f"客户{i:03d}", ext)
        sim.state.relate(userid, ext, state="", add_way=1)
    with services.transaction() as session:
        apply([a for i, ext in enumerate(ids) for a in (
            UpsertCustomer(ext, {"name": f"客户{i:03d}"}), UpsertFollow(ext, userid, added_at=added))],
            session, context_key="test:seed")
    return ids


def start(client: Any, **body: Any) -> dict[str, Any]:
    resp = client.post("/api/v1/handovers", json=body, headers=ADMIN)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def detail(client: Any, handover_id: int) -> dict[str, Any]:
    resp = client.get(f"/api/v1/handovers/{handover_id}", headers=ADMIN)
    assert resp.status_code == 200
    return resp.get_json()  # type: ignore[no-any-return]


def items(services: Services, handover_id: int) -> dict[str, HandoverItem]:
    with services.transaction() as session:
        return {i.external_userid: i for i in session.scalars(
            select(HandoverItem).where(HandoverItem.handover_id == handover_id)).all()}


def active_follows(services: Services, ext: str) -> set[str]:
    with services.transaction() as session:
        return set(session.scalars(select(FollowRelation.userid).join(Customer).where(
            Customer.external_userid == ext, FollowRelation.deleted_at.is_(None))).all())


def timeline_kinds(services: Services, ext: str) -> list[str]:
    with services.transaction() as session:
        return list(session.scalars(select(TimelineEntry.kind).join(Customer, Customer.id == TimelineEntry.customer_id)
                                    .where(Customer.external_userid == ext).order_by(TimelineEntry.id)).all())


def app_messages(sim: SimHarness) -> list[dict[str, Any]]:
    return [c["body"] for c in sim.ok_calls("message/send")]


def add_open_tasks(services: Services, owner: str, customers: list[str], due: datetime) -> None:
    """An active SOP enrollment with one due task per customer, owned by `owner` (as bot/sop plans them)."""
    from bot.sop.models import SopEnrollment, SopTask

    with services.transaction() as session:
        for ext in customers:
            customer = session.scalar(select(Customer).where(Customer.external_userid == ext))
            assert customer is not None
            enrollment = SopEnrollment(sop_id="new_lead", customer_id=customer.id, external_userid=ext, rotation=1,
                                       owner_userid=owner, started_at=due - timedelta(days=1), state="active")
            session.add(enrollment)
            session.flush()
            session.add(SopTask(enrollment_id=enrollment.id, sop_id="new_lead", step_id="day2_call", step_index=1,
                                customer_id=customer.id, external_userid=ext, owner_userid=owner,
                                script_id="followup.call", touchpoint="chat", planned_at=due, due_at=due,
                                state="due"))


def task_owners(services: Services, customers: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """external_userid -> (enrollment owner, task owner)."""
    from bot.sop.models import SopEnrollment, SopTask

    with services.transaction() as session:
        rows = session.execute(select(SopTask.external_userid, SopEnrollment.owner_userid, SopTask.owner_userid)
                               .join(SopEnrollment, SopEnrollment.id == SopTask.enrollment_id)
                               .where(SopTask.external_userid.in_(customers))).all()
    return {ext: (enrollment_owner, task_owner) for ext, enrollment_owner, task_owner in rows}


# -- acceptance: 250 customers on-job ------------------------------------------------------------------------
def test_onjob_handover_of_250_customers(sim: SimHarness, services: Services, client: Any) -> None:
    customers = seed(sim, services, "ZhaoLei", 250)
    refusing, limit_hit = customers[0], customers[150]
    with_tasks = [refusing, limit_hit, customers[1], customers[2], customers[249]]
    add_open_tasks(services, "ZhaoLei", with_tasks, sim_now(sim) + timedelta(days=2))
    sim.control("config", {"refusing_customers": [refusing]})
    created = start(client, kind="onjob", from_userid="ZhaoLei", to_userid="LiuYang", customers=customers,
                    message="您好，之后由刘洋为您服务", initiator_userid="LiMing")
    hid = created["id"]
    assert created["status"] == "planning"
    run_worker(services)

    calls = sim.ok_calls(TRANSFER)
    assert len(calls) == 3
    assert sorted(len(c["body"]["external_userid"]) for c in calls) == [50, 100, 100]
    assert sorted(e for c in calls for e in c["body"]["external_userid"]) == customers
    assert {c["body"]["transfer_success_msg"] for c in calls} == {"您好，之后由刘洋为您服务"}

    # The simulator's own transfer_fail for the refusing customer has been reconciled already.
    state = items(services, hid)
    assert state[refusing].status == "refused" and state[refusing].errcode == 0
    assert {i.status for e, i in state.items() if e != refusing} == {"started"}
    told = [m for m in app_messages(sim) if m["touser"] == "LiMing"]
    assert len(told) == 1 and "客户000" in told[0]["text"]["content"] and "客户拒绝" in told[0]["text"]["content"]

    # A transfer_fail callback for another customer (the taker hit the customer limit) reconciles that item.
    sim_handover = next(h for h in sim.state.handovers if h.external_userid == limit_hit)
    sim_handover.outcome, sim_handover.settled = 4, True
    sim.control("actions/emit", {"xml": cb.change_external_contact(
        sim.state.corp_id, sim.state.now(), "transfer_fail", "LiuYang", limit_hit,
        fail_reason="customer_limit_exceed")})
    run_worker(services)
    assert items(services, hid)[limit_hit].status == "taker_limit"
    assert "handover_refused" in timeline_kinds(services, limit_hit)

    # Nothing is moved before WeCom says done: a poll now sees only "waiting".
    handover_jobs.tick(services, sim_now(sim) + timedelta(hours=2))
    run_worker(services)
    assert {i.status for i in items(services, hid).values()} == {"waiting", "refused", "taker_limit"}
    assert set(task_owners(services, with_tasks).values()) == {("ZhaoLei", "ZhaoLei")}
    assert active_follows(services, customers[1]) == {"ZhaoLei"}

    sim.control("clock/advance", {"seconds": DAY})
    run_worker(services)  # WeCom's DELETE_BY_TRANSFER / add_external_contact callbacks
    handover_jobs.tick(services, sim_now(sim))
    run_worker(services)

    final = items(services, hid)
    done = {e for e, i in final.items() if i.status == "done"}
    assert done == set(customers) - {refusing, limit_hit}
    assert task_owners(services, with_tasks) == {
        e: ("ZhaoLei", "ZhaoLei") if e in (refusing, limit_hit) else ("LiuYang", "LiuYang") for e in with_tasks}
    assert all(final[e].work_moved for e in done)
    assert active_follows(services, customers[1]) == {"LiuYang"}
    assert active_follows(services, refusing) == {"ZhaoLei"} and active_follows(services, limit_hit) == {"ZhaoLei"}
    kinds = timeline_kinds(services, customers[1])
    assert kinds.index("handover_started") < kinds.index("handover_done")
    assert "handover_refused" in timeline_kinds(services, refusing)

    body = detail(client, hid)
    assert body["status"] == "partial"
    assert body["totals"] == {"done": 248, "refused": 1, "taker_limit": 1}
    assert {c["external_userid"]: c["status"] for c in body["customers"]}[refusing] == "refused"

    briefs = [m for m in app_messages(sim) if m["msgtype"] == "textcard"]
    assert len(briefs) == 1 and briefs[0]["touser"] == "LiuYang"
    told = [m for m in app_messages(sim) if m["touser"] == "LiMing"]
    assert len(told) == 2 and "客户150" in told[1]["text"]["content"]  # one message per reconciliation
    url = briefs[0]["textcard"]["url"]
    assert url.startswith(f"{services.settings.public_url}/sidebar/handover/{hid}?token=")

    page = client.get(url.removeprefix(services.settings.public_url))
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "客户交接简报" in html
    assert "客户001" in html and "已接手" in html and "new_lead · day2_call" in html and "客户拒绝" in html
    assert client.get(f"/sidebar/handover/{hid}").status_code == 403
    other = brief_token(services.settings.secret_key, hid + 1, "LiuYang")
    assert client.get(f"/sidebar/handover/{hid}?token={other}").status_code == 403
    wrong_user = brief_token(services.settings.secret_key, hid, "ZhaoLei")
    assert client.get(f"/sidebar/handover/{hid}?token={wrong_user}").status_code == 404

    listed = client.get("/api/v1/handovers", headers=ADMIN).get_json()
    assert [h["id"] for h in listed["items"]] == [hid] and listed["items"][0]["totals"]["done"] == 248


# -- acceptance: a third transfer within 90 days is refused locally ----------------------------------------
def test_third_transfer_within_90_days_is_refused_without_calling(sim: SimHarness, services: Services,
                                                                   client: Any) -> None:
    (ext,) = seed(sim, services, "ZhaoLei", 1, prefix="wmThrice")
    for giver, taker in (("ZhaoLei", "LiuYang"), ("LiuYang", "ZhaoLei")):
        hid = start(client, from_userid=giver, to_userid=taker, customers=[ext])["id"]
        run_worker(services)
        sim.control("clock/advance", {"seconds": DAY})
        run_worker(services)
        handover_jobs.tick(services, sim_now(sim))
        run_worker(services)
        assert items(services, hid)[ext].status == "done"
    assert len(sim.ok_calls(TRANSFER)) == 2

    third = start(client, from_userid="ZhaoLei", to_userid="LiuYang", customers=[ext], initiator_userid="LiMing")
    run_worker(services)
    assert len(sim.calls(TRANSFER)) == 2  # refused locally: WeCom is never asked
    item = items(services, third["id"])[ext]
    assert item.status == "refused_local" and "90天内已转接2次" in (item.reason or "")
    assert detail(client, third["id"])["status"] == "failed"
    assert any("90天内已转接2次" in m["text"]["content"] for m in app_messages(sim) if m["touser"] == "LiMing")
    assert "handover_refused" in timeline_kinds(services, ext)


# -- acceptance: a departed employee's customers and groups go to the successor --------------------------------
def test_delete_user_triggers_resigned_handover_to_manager(sim: SimHarness, services: Services,
                                                           client: Any) -> None:
    with services.transaction() as session:
        apply([UpsertEmployee("WangFang", {"name": "王芳", "manager_userid": "LiMing"}),
               UpsertEmployee("LiMing", {"name": "李明"})], session, context_key="test:employees")
    theirs = {e for (u, e) in sim.state.relations if u == "WangFang"}
    groups = {g["chat_id"] for g in sim.state.groups.values() if g["owner"] == "WangFang"}
    assert theirs and groups

    sim.control("actions/delete_user", {"userid": "WangFang"})
    run_worker(services)
    handover_jobs.tick(services, sim_now(sim))
    run_worker(services)
    handover_jobs.tick(services, sim_now(sim))  # a second tick does not start a second handover
    with services.transaction() as session:
        (h,) = session.scalars(select(Handover)).all()
        assert (h.kind, h.from_userid, h.to_userid, h.source) == ("resigned", "WangFang", "LiMing", "delete_user")
        assert {g.chat_id: g.status for g in session.scalars(select(HandoverGroup)).all()} == {
            g: "done" for g in groups}
        assert {session.get(GroupChat, g).owner for g in groups} == {"LiMing"}  # type: ignore[union-attr]
    assert len(sim.ok_calls("externalcontact/resigned/transfer_customer")) == 1
    assert len(sim.ok_calls("externalcontact/groupchat/transfer")) == 1
    assert {g["owner"] for c, g in sim.state.groups.items() if c in groups} == {"LiMing"}

    sim.control("clock/advance", {"seconds": DAY})
    run_worker(services)
    handover_jobs.tick(services, sim_now(sim))
    run_worker(services)
    assert {e: i.status for e, i in items(services, h.id).items()} == {e: "done" for e in theirs}
    assert all(("LiMing", e) in sim.state.relations and ("WangFang", e) not in sim.state.relations for e in theirs)
    for ext in theirs:  # some customers also follow another employee, who keeps them
        follows = active_follows(services, ext)
        assert "LiMing" in follows and "WangFang" not in follows
    assert detail(client, h.id)["status"] == "done"


# -- acceptance: a crash mid-batch never calls WeCom twice for a customer --------------------------------------
class WorkerDied(BaseException):
    """Escapes run_outbox's error handling like a killed process: the row stays `running`."""


def test_rerun_after_crash_mid_batch_does_not_call_twice(sim: SimHarness, services: Services, client: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    customers = seed(sim, services, "ZhaoLei", 150, prefix="wmCrash")
    hid = start(client, from_userid="ZhaoLei", to_userid="LiuYang", customers=customers)["id"]
    with services.transaction() as session:
        plan = session.scalar(select(Outbox.id).where(Outbox.kind == "handover_plan"))
    services.redis.flushdb()  # this test drives the rows by hand, as a worker would
    assert plan is not None and run_outbox_row(services, plan) == "done"
    with services.transaction() as session:
        batches = list(session.scalars(select(Outbox.id).where(Outbox.kind == "handover_batch").order_by(Outbox.id)))
    services.redis.flushdb()
    real = services.wecom.transfer_customer

    def dies_after_wecom_answered(*args: Any, **kwargs: Any) -> dict[str, int]:
        real(*args, **kwargs)
        raise WorkerDied

    monkeypatch.setattr(services.wecom, "transfer_customer", dies_after_wecom_answered)
    with pytest.raises(WorkerDied):
        run_outbox_row(services, batches[0])
    monkeypatch.setattr(services.wecom, "transfer_customer", real)
    assert {i.status for i in items(services, hid).values()} == {"calling", "pending"}

    sweep(services, datetime.now(UTC) + LEASE + timedelta(seconds=1))  # the lease ran out: row retried
    run_worker(services)
    calls = sim.ok_calls(TRANSFER)
    called = [e for c in calls for e in c["body"]["external_userid"]]
    assert len(calls) == 2 and sorted(called) == customers  # every customer exactly once
    with services.transaction() as session:
        assert session.get(Outbox, batches[0]).result == {"called": 0}  # type: ignore[union-attr]

    # The batch whose answer was lost is reconciled by polling transfer_result.
    sim.control("clock/advance", {"seconds": DAY})
    run_worker(services)
    handover_jobs.tick(services, sim_now(sim))
    run_worker(services)
    assert {i.status for i in items(services, hid).values()} == {"done"}


# -- the rules in isolation ---------------------------------------------------------------------------------
def test_bad_requests_are_400(client: Any, services: Services) -> None:
    cases = [
        {"from_userid": "ZhaoLei", "to_userid": "LiuYang", "message": "好" * 201},
        {"from_userid": "ZhaoLei"},
        {"from_userid": "ZhaoLei", "to_userid": "ZhaoLei"},
        {"from_userid": "ZhaoLei", "to_userid": "LiuYang", "customers": []},
        {"kind": "resigned", "from_userid": "WangFang", "to_userid": "LiMing", "message": "hi"},
        {"kind": "resigned", "from_userid": "WangFang"},  # no successor known
    ]
    for body in cases:
        resp = client.post("/api/v1/handovers", json=body, headers=ADMIN)
        assert resp.status_code == 400 and resp.get_json()["error"], body
    assert client.get("/api/v1/handovers/999", headers=ADMIN).status_code == 404
    assert client.get("/api/v1/handovers?status=bogus", headers=ADMIN).status_code == 400
    assert client.post("/api/v1/handovers", json={}).status_code == 401
    with services.transaction() as session:
        assert session.scalar(select(Handover.id)) is None


def test_idempotency_key_returns_the_same_handover(client: Any) -> None:
    body = {"from_userid": "ZhaoLei", "to_userid": "LiuYang", "customers": ["wmA"]}
    headers = {**ADMIN, "Idempotency-Key": "k-1"}
    first = client.post("/api/v1/handovers", json=body, headers=headers).get_json()
    second = client.post("/api/v1/handovers", json=body, headers=headers).get_json()
    assert first["id"] == second["id"]


def test_successor_mapping_then_manager_then_default(services: Services) -> None:
    with services.transaction() as session:
        apply([UpsertEmployee("WangFang", {"manager_userid": "LiMing"}), UpsertEmployee("ZhaoLei", {}),
               UpsertEmployee("ChenJing", {"active": False})], session, context_key="test")
        setting = {"SOPBOT_HANDOVER_SUCCESSOR": "ZhaoLei:LiuYang, *:ChenJing"}
        assert resolve_successor(session, "ZhaoLei", setting) == "LiuYang"
        assert resolve_successor(session, "WangFang", setting) == "LiMing"
        assert resolve_successor(session, "WangFang", {"SOPBOT_HANDOVER_SUCCESSOR": "WangFang=ZhaoLei"}) == "ZhaoLei"
        assert resolve_successor(session, "Nobody", {"SOPBOT_HANDOVER_SUCCESSOR": "LiuYang"}) == "LiuYang"
        assert resolve_successor(session, "Nobody", setting) is None  # ChenJing has left too
        assert session.get(Employee, "ChenJing") is not None


def test_departed_employee_without_successor_is_blocked_and_visible(services: Services, client: Any) -> None:
    from bot.actions import MarkEmployeeLeft

    now = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    with services.transaction() as session:
        apply([MarkEmployeeLeft("Ghost", now)], session, now=now, context_key="test")
    assert handover_jobs.tick(services, now + timedelta(minutes=1)) == {"started": 0, "polls": 0}
    handover_jobs.tick(services, now + timedelta(minutes=2))
    (h,) = client.get("/api/v1/handovers", headers=ADMIN).get_json()["items"]
    assert h["status"] == "blocked" and "SOPBOT_HANDOVER_SUCCESSOR" in h["status_reason"]
    with services.transaction() as session:
        assert session.scalar(select(Outbox.id)) is None


def test_unknown_status_keeps_waiting_then_is_closed_by_the_bound(services: Services) -> None:
    from bot.handover.apply_handover import CreateHandover, PlanHandover

    t0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    with services.transaction() as session:
        apply([CreateHandover("onjob", "ZhaoLei", "LiuYang", "test:1", customers=("wmX",))], session, now=t0,
              context_key="test")
        hid = session.scalar(select(Handover.id))
        assert hid is not None
        apply([PlanHandover(hid, ("wmX",), ())], session, now=t0, context_key="test")
        item = session.scalar(select(HandoverItem))
        assert item is not None
        item.status, item.errcode, item.called_at = "started", 0, t0
    with services.transaction() as session:
        apply([RecordTransferResults(hid, {"wmX": (6, None)}, t0 + timedelta(days=1))], session, now=t0,
              context_key="test")
        assert session.scalar(select(HandoverItem.status)) == "started"
        assert session.scalar(select(HandoverItem.wecom_status)) == 6
    with services.transaction() as session:
        apply([RecordTransferResults(hid, {"wmX": (6, None)}, t0 + timedelta(days=4))], session, now=t0,
              context_key="test")
        assert session.scalar(select(HandoverItem.status)) == "unknown"
        assert session.scalar(select(Handover.status)) == "failed"


def test_brief_token_expires() -> None:
    token = brief_token("s" * 20, 7, "LiuYang")
    assert read_brief_token("s" * 20, token, 7) == "LiuYang"
    assert read_brief_token("s" * 20, token, 8) is None
    assert read_brief_token("t" * 20, token, 7) is None
    assert read_brief_token("s" * 20, token, 7, max_age=-1) is None
