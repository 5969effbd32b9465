"""Pure handler tests for kf_msg_or_event, msgaudit_notify and member text (MsgType=text)."""

from __future__ import annotations

from bot.actions import EnqueueCall
from bot.tagging.apply_tagging import RecordArchiveNotify, StoreMessages
from tests.handlers.helpers import of_type, run


def test_kf_msg_or_event_enqueues_a_pull_with_the_token() -> None:
    event, actions = run("kf_msg_or_event")
    (call,) = of_type(actions, EnqueueCall)
    assert call.kind == "kf_sync" and call.queue == "realtime"
    assert call.payload == {"open_kfid": "wkQ8xTCwAAk9Jh2Gf4Ds6Aq8Zw0Xe2Rc",
                            "token": "ENCkDpW3sN8yQ2vX6tR0bL4mZ7hC1fJ5gK9aE3uV8oI2nT6"}
    assert call.dedupe_key == f"kf_sync:inbox:{event.inbox_id}"


def test_msgaudit_notify_is_recorded() -> None:
    event, actions = run("msgaudit_notify")
    assert actions == [RecordArchiveNotify(event.created_at, "2000004")]


def test_member_text_is_stored_as_employee_text_never_customer() -> None:
    event, actions = run("text")
    (store,) = of_type(actions, StoreMessages)
    (message,) = store.messages
    assert (message.source, message.msgid, message.direction, message.userid) == (
        "app", "7455012345678901234", "employee", "LiMing")
    assert message.text == "你好，请把最新报价单发我 📄 <b>&amp;</b>" and not message.is_customer_text
    assert message.sent_at == event.created_at
