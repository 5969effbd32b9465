"""End to end in the simulator: kf callback -> kf/sync_msg -> stored -> matched -> tag locally and in WeCom."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from bot.models import KV, CorpTag, Customer, TimelineEntry
from bot.services import Services
from bot.tagging.models import RuleHit, TaggingMessage
from tests.conftest import ADMIN, SimHarness, run_worker


def _customer(sim: SimHarness, services: Services, userid: str = "WangFang") -> str:
    ext = sim.control("actions/add_customer", {"userid": userid, "name": "周杰", "state": "website"})
    run_worker(services)
    return str(ext["external_userid"])


def _kf(sim: SimHarness, ext: str, text: str, **extra: Any) -> dict[str, Any]:
    kf = sorted(sim.state.kf_accounts)[0]
    return sim.control("actions/kf_message", {"open_kfid": kf, "external_userid": ext, "text": text, **extra})


def _tags(client: Any, ext: str) -> dict[str, dict[str, Any]]:
    items = client.get(f"/api/v1/customers/{ext}/tags", headers=ADMIN).get_json()["items"]
    return {f"{t['group']}:{t['name']}": t for t in items}


def test_kf_price_question_tags_locally_and_in_wecom(client: Any, services: Services, sim: SimHarness) -> None:
    ext = _customer(sim, services)
    sent = _kf(sim, ext, "请问价格多少？")
    run_worker(services)

    tags = _tags(client, ext)
    assert "意向:询价" in tags
    reason = tags["意向:询价"]["reason"]
    assert tags["意向:询价"]["source"] == "keyword_rule"
    assert reason["rule_id"] == "intent_pricing" and reason["keyword"] == "价格"
    assert reason["msgid"] == sent["msgid"] and reason["message_source"] == "kf"
    assert "价格" in reason["excerpt"] and reason["at"]

    with services.transaction() as s:
        cid = s.scalar(select(Customer.id).where(Customer.external_userid == ext))
        entries = s.scalars(select(TimelineEntry).where(TimelineEntry.customer_id == cid,
                                                        TimelineEntry.kind == "message_received")).all()
    assert [e.detail for e in entries] == [{"direction": "customer", "source": "kf", "msgid": sent["msgid"],
                                            "excerpt": "请问价格多少？"}]
    marks = sim.ok_calls("externalcontact/mark_tag")
    tag_marks = [c for c in marks if c["body"]["external_userid"] == ext and c["body"].get("add_tag")]
    with services.transaction() as s:
        # mark_tag resolved (created) the tag in WeCom and mirrored the library: the id WeCom knows it by.
        tag_id = s.scalar(select(CorpTag.id).where(CorpTag.group_name == "意向", CorpTag.name == "询价",
                                                   CorpTag.is_group.is_(False)))
    assert tag_id
    assert len([c for c in tag_marks if tag_id in c["body"]["add_tag"]]) == 1
    assert tag_marks[-1]["body"]["userid"] == "WangFang"


def test_negative_keyword_blocks_the_rule(client: Any, services: Services, sim: SimHarness) -> None:
    ext = _customer(sim, services)
    _kf(sim, ext, "不需要价格表")
    run_worker(services)
    assert "意向:询价" not in _tags(client, ext)
    with services.transaction() as s:
        assert s.scalar(select(func.count()).select_from(RuleHit).where(RuleHit.rule_id == "intent_pricing")) == 0
        assert s.scalar(select(func.count()).select_from(TaggingMessage)) == 1


def test_servicer_and_event_messages_are_stored_not_matched(client: Any, services: Services, sim: SimHarness) -> None:
    ext = _customer(sim, services)
    _kf(sim, ext, "价格表已经发您了", origin=5, servicer_userid="WangFang")
    kf = sorted(sim.state.kf_accounts)[0]
    sim.control("actions/kf_message", {"open_kfid": kf, "external_userid": ext, "origin": 4})
    run_worker(services)
    assert "意向:询价" not in _tags(client, ext)
    with services.transaction() as s:
        rows = {m.direction: m for m in s.scalars(select(TaggingMessage)).all()}
        kinds = s.scalars(select(TimelineEntry.kind).join(Customer).where(Customer.external_userid == ext)).all()
    assert set(rows) == {"employee", "event"} and rows["employee"].userid == "WangFang"
    assert "message_sent" in kinds and "message_received" not in kinds


def test_kf_cursor_no_duplicate_no_gap_across_restarts(client: Any, services: Services, sim: SimHarness,
                                                       settings: Any) -> None:
    from jobs.tagging import pull_kf

    ext = _customer(sim, services)
    kf = sorted(sim.state.kf_accounts)[0]
    for i in range(3):
        _kf(sim, ext, f"第{i}条")
    run_worker(services)
    # A fresh process: new Services (new engine, no in-memory state), same database.
    fresh = Services.from_settings(settings)
    fresh.__dict__["wecom"] = services.wecom
    assert pull_kf(fresh, kf) == 0  # nothing new: the saved cursor is past all three
    for i in range(3, 5):
        sim.control("actions/kf_message", {"open_kfid": kf, "external_userid": ext, "text": f"第{i}条"})
    assert pull_kf(fresh, kf) == 2
    assert pull_kf(fresh, kf) == 0
    fresh.engine.dispose()
    run_worker(services)  # the callbacks of messages 3 and 4 pull nothing new
    with services.transaction() as s:
        texts = s.scalars(select(TaggingMessage.text).order_by(TaggingMessage.sent_at, TaggingMessage.id)).all()
        cursor = s.get(KV, f"kf_cursor:{kf}")
        timeline = s.scalar(select(func.count()).select_from(TimelineEntry).where(
            TimelineEntry.kind == "message_received"))
    assert texts == [f"第{i}条" for i in range(5)]
    assert cursor is not None and cursor.value["cursor"] == "c4"
    assert timeline == 5
