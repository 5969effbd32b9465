"""End to end against the WeCom simulator: callbacks it emits -> inbox -> worker -> WeCom calls it logs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from bot.models import CorpTag, InboxEvent, Outbox
from bot.services import Services
from jobs.events import process_inbox_row
from tests.conftest import ADMIN, SimHarness, fixture_xml, post_event, run_worker


def _customer(client: Any, ext: str) -> dict[str, Any]:
    resp = client.get(f"/api/v1/customers/{ext}", headers=ADMIN)
    assert resp.status_code == 200, resp.data
    return resp.get_json()


def test_add_through_channel_fetches_profile_tags_and_welcomes_once(client: Any, services: Services,
                                                                    sim: SimHarness) -> None:
    added = sim.control("actions/add_customer", {"userid": "WangFang", "name": "周杰", "state": "webinar",
                                                "profile": {"corp_name": "宁波海纳电子"}})
    ext = added["external_userid"]
    assert sim.responses == [200]
    run_worker(services)

    body = _customer(client, ext)
    assert body["name"] == "周杰" and body["corp_name"] == "宁波海纳电子"  # from externalcontact/get
    assert [(f["userid"], f["state"]) for f in body["follow_users"]] == [("WangFang", "webinar")]
    local = {(t["group"], t["name"]): t for t in body["tags"]}
    assert set(local) == {("来源", "直播"), ("活动", "2025-09直播")}
    assert local[("来源", "直播")]["reason"]["state"] == "webinar"

    marks = sim.ok_calls("externalcontact/mark_tag")
    assert len(marks) == 1
    assert marks[0]["body"]["userid"] == "WangFang" and marks[0]["body"]["external_userid"] == ext
    with services.transaction() as s:
        tag_ids = dict(s.execute(select(CorpTag.name, CorpTag.id).where(CorpTag.is_group.is_(False))).all())
    assert sorted(marks[0]["body"]["add_tag"]) == sorted([tag_ids["直播"], tag_ids["2025-09直播"]])

    welcomes = sim.ok_calls("externalcontact/send_welcome_msg")
    assert len(welcomes) == 1
    assert "周杰" in welcomes[0]["body"]["text"]["content"]
    assert welcomes[0]["body"]["welcome_code"] == added["welcome_code"]
    # within WeCom's 20 s window, measured on the simulator's clock from the add event
    issued = sim.state.welcome_codes[added["welcome_code"]]["issued_at"]
    assert 0 <= welcomes[0]["time"] - issued <= 20
    kinds = [t["kind"] for t in body["timeline"]]
    assert kinds.count("customer_added") == 1 and kinds.count("welcome_sent") == 1


def test_redelivered_add_does_not_double_any_effect(client: Any, services: Services, sim: SimHarness) -> None:
    sim.control("faults", {"next": {}})
    added = sim.control("actions/add_customer", {"userid": "ZhaoLei", "name": "钱多多", "state": "expo2025_booth12"})
    run_worker(services)
    sim.control("actions/emit", {"xml": _add_xml(sim, "ZhaoLei", added["external_userid"], "expo2025_booth12")})
    run_worker(services)
    assert len(sim.ok_calls("externalcontact/mark_tag")) == 1
    assert len(sim.calls("externalcontact/send_welcome_msg")) == 1


def _add_xml(sim: SimHarness, userid: str, ext: str, state: str) -> str:
    # The same fact delivered again with another CreateTime is a new event for WeCom; it must not re-tag.
    return (f"<xml><ToUserName><![CDATA[{sim.state.corp_id}]]></ToUserName><FromUserName><![CDATA[sys]]>"
            f"</FromUserName><CreateTime>{int(sim.state.now()) + 1}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[change_external_contact]]></Event><ChangeType><![CDATA[add_external_contact]]>"
            f"</ChangeType><UserID><![CDATA[{userid}]]></UserID><ExternalUserID><![CDATA[{ext}]]></ExternalUserID>"
            f"<State><![CDATA[{state}]]></State></xml>")


def test_customer_deleting_the_employee_keeps_customer_as_lost(client: Any, services: Services,
                                                              sim: SimHarness) -> None:
    ext = sim.control("actions/add_customer", {"userid": "LiMing", "name": "孙悦"})["external_userid"]
    sim.control("actions/customer_deletes", {"userid": "LiMing", "external_userid": ext})
    run_worker(services)
    body = _customer(client, ext)
    assert body["follow_users"][0]["deleted_by"] == "customer" and body["lost_at"]


def test_group_events_mirror_groupchat_get(client: Any, services: Services, sim: SimHarness) -> None:
    chat = sim.control("actions/create_group", {"owner": "LiMing", "name": "云帆客户交流群"})
    run_worker(services)
    groups = client.get("/api/v1/groups", headers=ADMIN).get_json()["items"]
    (group,) = [g for g in groups if g["chat_id"] == chat["chat_id"]]
    assert group["name"] == "云帆客户交流群" and group["owner"] == "LiMing"


def test_tag_library_events_refresh_the_mirror(client: Any, services: Services, sim: SimHarness) -> None:
    post_event(client, fixture_xml("change_external_tag__create"))
    run_worker(services)
    names = {g["group_name"] for g in client.get("/api/v1/tags", headers=ADMIN).get_json()["items"]}
    assert {"客户来源", "意向程度", "行业"} <= names


def test_contact_events_keep_employees(client: Any, services: Services, sim: SimHarness) -> None:
    xml = fixture_xml("change_contact__update_user").replace("SunLi", "ChenJing").replace("孙丽丽", "陈静")
    post_event(client, xml)
    run_worker(services)
    employees = {e["userid"]: e for e in client.get("/api/v1/employees", headers=ADMIN).get_json()["items"]}
    assert employees["ChenJing"]["name"] == "陈静" and employees["ChenJing"]["active"] is True
    with services.transaction() as s:
        assert s.scalars(select(Outbox.status).where(Outbox.kind == "fetch_user")).all() == ["done"]


def test_welcome_after_the_window_is_not_sent(client: Any, services: Services, sim: SimHarness) -> None:
    added = sim.control("actions/add_customer", {"userid": "WangFang", "name": "迟到", "state": "webinar"})
    with services.transaction() as s:
        inbox_id = s.scalars(select(InboxEvent.id)).one()
    process_inbox_row(services, inbox_id)  # creates the outbox rows; their jobs wait in Redis
    with services.transaction() as s:
        row = s.scalars(select(Outbox).where(Outbox.kind == "send_welcome")).one()
        row.deadline_at = datetime.fromtimestamp(0, UTC)
    run_worker(services)
    assert sim.calls("externalcontact/send_welcome_msg") == []
    with services.transaction() as s:
        row = s.scalars(select(Outbox).where(Outbox.kind == "send_welcome")).one()
        assert row.status == "failed" and "deadline" in (row.last_error or "")
    assert added["welcome_code"]


def test_token_error_twice_in_a_row_is_retried_not_failed(client: Any, services: Services, sim: SimHarness) -> None:
    # 42001 on the call and again right after the refresh: the client gives up on this attempt, the row retries.
    sim.control("faults", {"next": {"externalcontact/mark_tag": [42001, 42001]}})
    ext = sim.control("actions/add_customer", {"userid": "WangFang", "name": "两次过期", "state": "webinar"})
    run_worker(services)
    with services.transaction() as s:
        row = s.scalars(select(Outbox).where(Outbox.kind == "mark_tag")).one()
        assert row.status == "retry" and "42001" in (row.last_error or "")
    from datetime import timedelta

    from bot.db import utcnow
    from jobs.sweeper import sweep

    sweep(services, utcnow() + timedelta(minutes=5))
    run_worker(services)
    ext_id = ext["external_userid"]
    marks = [c for c in sim.ok_calls("externalcontact/mark_tag") if c["body"]["external_userid"] == ext_id]
    assert len(marks) == 1
