"""Pure handler tests for change_external_contact (no DB, Redis or network)."""

from __future__ import annotations

from datetime import timedelta

from bot.actions import AddTags, EndFollow, EnqueueCall, RecordTimeline, TagRef, UpsertCustomer, UpsertFollow
from bot.store import ChannelSnapshot, MemoryStore
from tests.handlers.helpers import of_type, run

EXT = "wmQ8xTCwAAb3fFp0Yk2nHs9LdE7uVr1w"
WEBINAR = ChannelSnapshot("webinar", "直播报名", "welcome_webinar", (TagRef("客户来源", "直播"),))


def test_add_external_contact_records_follow_with_state_fetches_tags_and_welcomes() -> None:
    event, actions = run("change_external_contact__add_external_contact", MemoryStore(channels={"webinar": WEBINAR}))
    assert of_type(actions, UpsertCustomer) == [UpsertCustomer(EXT)]
    follow = of_type(actions, UpsertFollow)[0]
    assert (follow.userid, follow.state, follow.added_at, follow.half_added) == ("LiMing", "webinar",
                                                                               event.created_at, False)
    timeline = of_type(actions, RecordTimeline)[0]
    assert timeline.kind == "customer_added" and timeline.detail["channel"] == "直播报名"
    calls = {c.kind: c for c in of_type(actions, EnqueueCall)}
    assert calls["fetch_contact"].payload == {"external_userid": EXT, "userid": "LiMing"}
    welcome = calls["send_welcome"]
    assert welcome.queue == "realtime"
    assert welcome.payload["welcome_code"] == "Wc_9f3a6b1e7d2c4a58b0e1f2a3c4d5e6f7"
    assert welcome.payload["script"] == "welcome_webinar"
    assert welcome.deadline_at == event.created_at + timedelta(seconds=20)
    assert welcome.dedupe_key == "welcome:Wc_9f3a6b1e7d2c4a58b0e1f2a3c4d5e6f7"
    tags = of_type(actions, AddTags)[0]
    assert tags.tags == (TagRef("客户来源", "直播"),) and tags.source == "channel" and tags.userid == "LiMing"


def test_add_without_state_or_code_neither_tags_nor_welcomes() -> None:
    _, actions = run("change_external_contact__add_external_contact__no_state")
    assert not of_type(actions, AddTags)
    assert [c.kind for c in of_type(actions, EnqueueCall)] == ["fetch_contact"]
    assert of_type(actions, UpsertFollow)[0].state is None


def test_add_half_external_contact_is_marked_half_added() -> None:
    _, actions = run("change_external_contact__add_half_external_contact")
    assert of_type(actions, UpsertFollow)[0].half_added is True
    assert of_type(actions, RecordTimeline)[0].kind == "customer_half_added"
    assert "send_welcome" in [c.kind for c in of_type(actions, EnqueueCall)]


def test_edit_refetches_and_reconciles_tags() -> None:
    _, actions = run("change_external_contact__edit_external_contact")
    call = of_type(actions, EnqueueCall)[0]
    assert call.kind == "fetch_contact" and call.payload["reconcile_tags"] is True
    assert of_type(actions, RecordTimeline)[0].kind == "customer_edited"


def test_del_external_contact_is_deleted_by_employee() -> None:
    event, actions = run("change_external_contact__del_external_contact")
    assert of_type(actions, EndFollow) == [EndFollow(EXT, "LiMing", event.created_at, by="employee")]
    assert of_type(actions, RecordTimeline)[0].kind == "employee_deleted_customer"


def test_del_external_contact_by_transfer_is_not_a_loss() -> None:
    _, actions = run("change_external_contact__del_external_contact__by_transfer")
    assert of_type(actions, EndFollow)[0].by == "transfer"
    assert of_type(actions, RecordTimeline)[0].kind == "transferred_away"


def test_del_follow_user_is_deleted_by_customer() -> None:
    _, actions = run("change_external_contact__del_follow_user")
    assert of_type(actions, EndFollow)[0].by == "customer"
    assert of_type(actions, RecordTimeline)[0].kind == "customer_deleted_employee"


def test_transfer_fail_records_reason_and_taker() -> None:
    _, actions = run("change_external_contact__transfer_fail")
    entry = of_type(actions, RecordTimeline)[0]
    assert entry.kind == "transfer_failed"
    assert entry.detail == {"takeover_userid": "WangFang", "fail_reason": "customer_refused"}


def test_msg_audit_approved_is_on_the_timeline() -> None:
    _, actions = run("change_external_contact__msg_audit_approved")
    assert [a.kind for a in of_type(actions, RecordTimeline)] == ["archive_approved"]
