"""End to end in the WeCom simulator: a webinar sign-up is nurtured, reminded, completed, and stops on exit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from bot.models import Outbox
from bot.services import Services
from jobs.sop import tick
from tests.conftest import ADMIN, SimHarness, run_worker
from tests.sop_service.helpers import add_tag, customer_event, enrollments, tasks


def _advance_to(sim: SimHarness, when: datetime) -> datetime:
    gap = (when - datetime.fromtimestamp(sim.state.now(), UTC)).total_seconds()
    if gap > 0:
        sim.state.advance(gap)
    return datetime.fromtimestamp(sim.state.now(), UTC)


def test_webinar_customer_enrolls_gets_one_digest_per_run_and_exits(client: Any, services: Services,
                                                                    sim: SimHarness) -> None:
    added = sim.control("actions/add_customer", {"userid": "WangFang", "name": "周杰", "state": "webinar"})
    ext = added["external_userid"]
    run_worker(services)

    assert "nurture_webinar" in {e.sop_id for e in enrollments(services, ext)}
    (d0,) = [t for t in tasks(services, ext) if t.step_id == "d0_materials"]
    assert d0.owner_userid == "WangFang" and d0.state == "pending"

    now = _advance_to(sim, d0.due_at + timedelta(minutes=1))
    report = tick(services, now=now)
    run_worker(services)
    sends = sim.ok_calls("message/send")
    assert len(sends) == 1  # one digest for the owner, however many of her tasks came due
    card = sends[0]["body"]
    assert card["touser"] == "WangFang" and card["msgtype"] == "textcard"
    assert "周杰" in card["textcard"]["description"] and "d0_materials" in card["textcard"]["description"]
    assert card["textcard"]["url"] == f"{services.settings.public_url}/sidebar/tasks"
    with services.transaction() as s:
        (digest,) = s.scalars(select(Outbox).where(Outbox.kind == "send_digest")).all()
    assert digest.status == "done" and digest.payload["run"] == report.run
    assert d0.id in [item["task_id"] for item in digest.payload["items"]]

    tick(services, now=now + timedelta(minutes=1))  # the next run: nothing newly due, nothing sent
    run_worker(services)
    assert len(sim.ok_calls("message/send")) == 1

    resp = client.post(f"/api/v1/tasks/{d0.id}/done", json={"by": "WangFang"}, headers=ADMIN)
    assert resp.status_code == 200 and resp.get_json()["state"] == "done"
    assert client.post(f"/api/v1/tasks/{d0.id}/done", headers=ADMIN).status_code == 409

    # The customer answers with a price question: the keyword rule's tag is the nurture's exit condition.
    reply_at = now + timedelta(hours=1)
    customer_event(services, ext, "message_received", reply_at, {"direction": "customer", "text": "这个多少钱？"},
                   userid="WangFang")
    add_tag(services, ext, "意向:询价", reply_at)
    nurture = next(e for e in enrollments(services, ext) if e.sop_id == "nurture_webinar")
    assert nurture.state == "exited" and nurture.exit_reason == "tag_added:意向:询价"
    remaining = [t for t in tasks(services, ext) if t.sop_id == "nurture_webinar" and t.step_id != "d0_materials"]
    assert remaining and all(t.state == "skipped" and t.reason == "退出：tag_added:意向:询价" for t in remaining)

    later = _advance_to(sim, now + timedelta(days=31))
    tick(services, now=later)
    run_worker(services)
    nurture_items = [c for c in sim.ok_calls("message/send") if "d1_replay" in c["body"]["textcard"]["description"]]
    assert nurture_items == []  # no nurture step reminded after the exit


def test_mass_send_step_completes_from_wecom_result(client: Any, services: Services, sim: SimHarness,
                                                    tmp_path: Any, monkeypatch: Any) -> None:
    from tests.sop_service.helpers import make_library, sop_doc

    root = make_library(tmp_path, sop_doc("mass", [
        {"id": "trial", "day": 0, "content": "nurture.day14_trial", "touchpoint": "mass_send"}],
        calendar={"timezone": "Asia/Shanghai"}))
    monkeypatch.setenv("SOPBOT_CONTENT_DIR", str(root))
    ext = sim.control("actions/add_customer", {"userid": "ZhaoLei", "name": "钱多多"})["external_userid"]
    run_worker(services)
    (task,) = tasks(services, ext)
    now = _advance_to(sim, task.due_at + timedelta(minutes=1))
    tick(services, now=now)
    run_worker(services)
    (created,) = sim.ok_calls("externalcontact/add_msg_template")
    assert created["body"]["sender"] == "ZhaoLei" and created["body"]["external_userid"] == [ext]
    assert "钱多多" in created["body"]["text"]["content"]
    msgid = tasks(services, ext)[0].msgid
    assert msgid

    sim.control("actions/confirm_mass_send", {"msgid": msgid, "userid": "ZhaoLei"})
    tick(services, now=now + timedelta(hours=1))
    run_worker(services)
    (done,) = tasks(services, ext)
    assert done.state == "done" and done.reason == "群发已发送"


def test_a_real_customer_reply_with_an_exit_keyword_stops_the_nurture(client: Any, services: Services,
                                                                       sim: SimHarness) -> None:
    """The whole path: the customer writes in WeChat customer service; kf_msg_or_event -> kf/sync_msg ->
    keyword rule 价格 -> tag 意向:询价 (the nurture's exit) -> the remaining steps are skipped."""
    ext = sim.control("actions/add_customer", {"userid": "WangFang", "name": "李雷", "state": "webinar"})[
        "external_userid"]
    run_worker(services)
    assert "nurture_webinar" in {e.sop_id for e in enrollments(services, ext)}

    kf = sorted(sim.state.kf_accounts)[0]
    sim.control("actions/kf_message", {"open_kfid": kf, "external_userid": ext, "text": "请问价格多少？"})
    run_worker(services)

    nurture = next(e for e in enrollments(services, ext) if e.sop_id == "nurture_webinar")
    assert nurture.state == "exited" and nurture.exit_reason == "tag_added:意向:询价"
    open_steps = [t for t in tasks(services, ext) if t.sop_id == "nurture_webinar" and t.state in ("pending", "due")]
    assert open_steps == []
    tags = client.get(f"/api/v1/customers/{ext}/tags", headers=ADMIN).get_json()["items"]
    (intent,) = [t for t in tags if (t["group"], t["name"]) == ("意向", "询价")]
    assert intent["source"] == "keyword_rule" and "价格" in str(intent["reason"])
