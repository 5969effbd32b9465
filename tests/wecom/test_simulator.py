"""The simulator itself: protocol shapes, token checks, callbacks that decrypt, scenario loading."""

from __future__ import annotations

import xml.etree.ElementTree as ET  # noqa: S405 - parsing our own output
from typing import Any

import pytest
import requests
from flask import Flask, request

from bot.wecom.crypto import WeComCrypto
from bot.wecom.simulator import CallbackEmitter, SimState, create_simulator_app, load_scenario
from bot.wecom.simulator import callbacks as cb
from bot.wecom.simulator.app import DEFAULT_CALLBACK
from bot.wecom.simulator.scenario import stable_id
from tests.wecom.conftest import APP_SECRET, Sim, demo_data

CORP = "ww59709431338c5fb3"
T, KEY = DEFAULT_CALLBACK["token"], DEFAULT_CALLBACK["encoding_aes_key"]

# Element order of the decrypted samples in PROTOCOL.md §2.
SAMPLE_TAGS = {
    "add": [
        "ToUserName",
        "FromUserName",
        "CreateTime",
        "MsgType",
        "Event",
        "ChangeType",
        "UserID",
        "ExternalUserID",
        "State",
        "WelcomeCode",
    ],
    "del_by_transfer": [
        "ToUserName",
        "FromUserName",
        "CreateTime",
        "MsgType",
        "Event",
        "ChangeType",
        "UserID",
        "ExternalUserID",
        "Source",
    ],
    "transfer_fail": [
        "ToUserName",
        "FromUserName",
        "CreateTime",
        "MsgType",
        "Event",
        "ChangeType",
        "FailReason",
        "UserID",
        "ExternalUserID",
    ],
    "chat_update": [
        "ToUserName",
        "FromUserName",
        "CreateTime",
        "MsgType",
        "Event",
        "ChatId",
        "ChangeType",
        "UpdateDetail",
        "JoinScene",
        "MemChangeCnt",
        "MemChangeList",
        "LastMemVer",
        "CurMemVer",
    ],
    "tag": [
        "ToUserName",
        "FromUserName",
        "CreateTime",
        "MsgType",
        "Event",
        "Id",
        "TagType",
        "ChangeType",
        "StrategyId",
    ],
    "kf": ["ToUserName", "CreateTime", "MsgType", "Event", "Token", "OpenKfId"],
    "msgaudit": ["ToUserName", "FromUserName", "CreateTime", "MsgType", "AgentID", "Event"],
    "text": ["ToUserName", "FromUserName", "CreateTime", "MsgType", "Content", "MsgId", "AgentID"],
}


def tags_of(xml: str) -> list[str]:
    return [child.tag for child in ET.fromstring(xml)]  # noqa: S314


def test_builders_match_protocol_samples() -> None:
    eid = "wmQ8xTCwAAb3fFp0Yk2nHs9LdE7uVr1w"
    add = cb.change_external_contact(
        CORP,
        1735689600,
        "add_external_contact",
        "LiMing",
        eid,
        state="expo2025_booth12",
        welcome_code="Wc_9f3a",
    )
    assert tags_of(add) == SAMPLE_TAGS["add"]
    assert (
        "<CreateTime>1735689600</CreateTime>" in add and "<State><![CDATA[expo2025_booth12]]></State>" in add
    )
    assert (
        tags_of(
            cb.change_external_contact(
                CORP, 1, "del_external_contact", "LiMing", eid, source="DELETE_BY_TRANSFER"
            )
        )
        == SAMPLE_TAGS["del_by_transfer"]
    )
    assert (
        tags_of(
            cb.change_external_contact(
                CORP, 1, "transfer_fail", "WangFang", eid, fail_reason="customer_refused"
            )
        )
        == SAMPLE_TAGS["transfer_fail"]
    )
    chat = cb.change_external_chat(
        CORP,
        1,
        "update",
        "wrX",
        update_detail="add_member",
        join_scene=3,
        mem_change_list=[eid, "wmB"],
        last_mem_ver="a",
        cur_mem_ver="b",
    )
    assert tags_of(chat) == SAMPLE_TAGS["chat_update"]
    assert "<MemChangeCnt>2</MemChangeCnt>" in chat and f"<Item><![CDATA[{eid}]]></Item>" in chat
    assert tags_of(cb.change_external_chat(CORP, 1, "dismiss", "wrX"))[-2:] == ["ChatId", "ChangeType"]
    assert tags_of(cb.change_external_tag(CORP, 1, "create", "etX")) == SAMPLE_TAGS["tag"]
    assert "TagType" not in tags_of(cb.change_external_tag(CORP, 1, "shuffle", ""))
    assert tags_of(cb.kf_msg_or_event(CORP, 1, "ENCtok", "wkX")) == SAMPLE_TAGS["kf"]
    assert tags_of(cb.msgaudit_notify(CORP, 1)) == SAMPLE_TAGS["msgaudit"]
    text = cb.text_message(CORP, 1, "LiMing", "报价 📄 <b>&amp;</b> ]]> end", 7455012345678901234, 1000002)
    assert tags_of(text) == SAMPLE_TAGS["text"]
    assert ET.fromstring(text).findtext("Content") == "报价 📄 <b>&amp;</b> ]]> end"  # noqa: S314
    contact = cb.change_contact(CORP, 1, "delete_user", "WangFang")
    assert ET.fromstring(contact).findtext("ChangeType") == "delete_user"  # noqa: S314


def receiver_app(received: list[str]) -> Flask:
    """A stand-in for sopbot's callback view: verify + decrypt like the real one must."""
    app = Flask("receiver")
    crypto = WeComCrypto(T, KEY, CORP)

    @app.post("/wecom/callback")
    def callback() -> str:
        outer = ET.fromstring(request.get_data())  # noqa: S314
        received.append(
            crypto.verify_and_decrypt(
                request.args["msg_signature"],
                request.args["timestamp"],
                request.args["nonce"],
                outer.findtext("Encrypt") or "",
            )
        )
        return ""

    return app


def test_emitter_posts_envelopes_that_verify_through_a_flask_test_client() -> None:
    received: list[str] = []
    client = receiver_app(received).test_client()

    def post(url: str, query: dict[str, str], body: bytes) -> Any:
        resp = client.post(url, query_string=query, data=body)
        assert resp.status_code == 200 and resp.data == b""
        return resp

    emitter = CallbackEmitter("/wecom/callback", T, KEY, CORP, post=post, agent_id="1000002")
    xml = cb.change_external_contact(CORP, 1735689600, "del_follow_user", "LiMing", "wmA")
    env = emitter.emit(xml, timestamp=1735689600)
    assert received == [xml]
    assert env.timestamp == "1735689600" and "<AgentID><![CDATA[1000002]]></AgentID>" in env.body


def test_simulator_actions_emit_encrypted_callbacks() -> None:
    received: list[str] = []
    receiver = receiver_app(received).test_client()
    state = SimState(corp_id=CORP, start_time=1_735_689_600)
    load_scenario(state, demo_data())
    sim = create_simulator_app(
        state,
        {
            "callback_url": "/wecom/callback",
            "callback_post": lambda url, q, body: receiver.post(url, query_string=q, data=body),
        },
    ).test_client()
    added = sim.post(
        "/_sim/actions/add_customer",
        json={"userid": "ZhaoLei", "name": "钱多多", "state": "expo2025_booth12"},
    ).get_json()
    root = ET.fromstring(received[-1])  # noqa: S314
    assert root.findtext("ChangeType") == "add_external_contact"
    assert root.findtext("State") == "expo2025_booth12"
    assert root.findtext("WelcomeCode") == added["welcome_code"]
    assert root.findtext("CreateTime") == "1735689600"
    sim.post(
        "/_sim/actions/customer_deletes",
        json={"userid": "ZhaoLei", "external_userid": added["external_userid"]},
    )
    assert ET.fromstring(received[-1]).findtext("ChangeType") == "del_follow_user"  # noqa: S314
    chat = sim.post(
        "/_sim/actions/create_group", json={"owner": "LiMing", "name": "新群", "members": ["ZhaoLei"]}
    )
    assert ET.fromstring(received[-1]).findtext("ChatId") == chat.get_json()["chat_id"]  # noqa: S314
    kfid = next(iter(state.kf_accounts))
    sim.post("/_sim/actions/kf_message", json={"open_kfid": kfid, "external_userid": "wmK", "text": "在吗"})
    assert ET.fromstring(received[-1]).findtext("OpenKfId") == kfid  # noqa: S314
    sim.post("/_sim/actions/emit", json={"xml": cb.msgaudit_notify(CORP, 5)})
    assert received[-1] == cb.msgaudit_notify(CORP, 5)
    assert state.outbox == []  # delivered, not parked


def test_outbox_when_no_callback_url(sim: Sim) -> None:
    sim.control("actions/add_customer", {"userid": "LiMing", "name": "孙悟空"})
    (event,) = sim.outbox()
    crypto = WeComCrypto(T, KEY, sim.state.corp_id)
    outer = ET.fromstring(event["body"])  # noqa: S314
    assert (
        crypto.verify_and_decrypt(
            event["query"]["msg_signature"],
            event["query"]["timestamp"],
            event["query"]["nonce"],
            outer.findtext("Encrypt") or "",
        )
        == event["xml"]
    )


def test_token_checks_and_call_log(sim: Sim) -> None:
    base = sim.api_base
    assert requests.get(base + "user/get", params={"userid": "LiMing"}, timeout=5).json()["errcode"] == 41001
    bad = requests.get(
        base + "user/get", params={"userid": "LiMing", "access_token": "nope"}, timeout=5
    ).json()
    assert bad["errcode"] == 40014 and "more info at" in bad["errmsg"]
    assert (
        requests.get(
            base + "gettoken", params={"corpid": "wwother", "corpsecret": APP_SECRET}, timeout=5
        ).json()["errcode"]
        == 40013
    )
    assert (
        requests.get(
            base + "gettoken", params={"corpid": sim.state.corp_id, "corpsecret": "x"}, timeout=5
        ).json()["errcode"]
        == 40001
    )
    tok = requests.get(
        base + "gettoken", params={"corpid": sim.state.corp_id, "corpsecret": APP_SECRET}, timeout=5
    ).json()
    assert tok["expires_in"] == 7200
    ok = requests.post(
        base + "externalcontact/groupchat/list",
        params={"access_token": tok["access_token"]},
        json={"limit": 10},
        timeout=5,
    ).json()
    assert ok["errcode"] == 0 and len(ok["group_chat_list"]) == 3
    sim.state.advance(7200)
    expired = requests.get(
        base + "user/get", params={"userid": "LiMing", "access_token": tok["access_token"]}, timeout=5
    ).json()
    assert expired["errcode"] == 42001
    log = sim.calls()
    assert [c["errcode"] for c in log] == [41001, 40014, 40013, 40001, 0, 0, 42001]
    assert all(c["query"].get("access_token") in (None, "***") for c in log)
    assert log[5]["body"] == {"limit": 10} and log[5]["method"] == "POST"
    sim.control("reset-log")
    assert sim.calls() == []


def test_injected_42001_kills_the_token(sim: Sim) -> None:
    tok = requests.get(
        sim.api_base + "gettoken", params={"corpid": sim.state.corp_id, "corpsecret": APP_SECRET}, timeout=5
    ).json()["access_token"]
    sim.control("faults", {"next": {"user/get": [42001]}})
    for expected in (42001, 40014):
        got = requests.get(
            sim.api_base + "user/get", params={"userid": "LiMing", "access_token": tok}, timeout=5
        )
        assert got.json()["errcode"] == expected


def test_seeded_faults_are_reproducible() -> None:
    def run() -> list[int | None]:
        state = SimState()
        state.set_faults(0.2, [-1, 45009], seed=7)
        return [state.draw_fault("user/get") for _ in range(50)]

    first = run()
    assert first == run()
    assert 3 <= sum(c is not None for c in first) <= 20


def test_demo_scenario_loads() -> None:
    state = SimState()
    summary = load_scenario(state, demo_data())
    assert summary["employees"] == 6 and summary["customers"] >= 30 and summary["groups"] == 3
    assert set(state.contact_ways) == {"webinar", "expo2025_booth12", "website"}
    assert {g["group_name"] for g in state.tag_groups.values()} >= {"客户来源", "意向程度", "行业"}
    assert all(e.startswith("wm") and len(e) == 32 for e in state.customers)
    zhang = stable_id("wm", "customer", "张伟")
    assert state.customers[zhang]["corp_name"] == "苏州精工机械有限公司"
    idx = state.tag_index()
    rel = next(r for (u, e), r in state.relations.items() if e == zhang)
    assert {idx[t][0]["group_name"] + "/" + idx[t][1]["name"] for t in rel.tags} >= {"客户来源/展会"}
    assert rel.state == "expo2025_booth12"
    assert any(e["is_leader_in_dept"] == [1] for e in state.employees.values())


def test_scenario_endpoint_accepts_yaml() -> None:
    state = SimState()
    app = create_simulator_app(state).test_client()
    body = (
        "employees:\n  - {userid: Boss, name: 老板}\n"
        "customers:\n  - name: 客户一\n    follow: [{userid: Boss}]\n"
    )
    summary = app.post("/_sim/scenario", data=body, content_type="application/yaml").get_json()
    assert summary["employees"] == 1 and summary["relations"] == 1


@pytest.mark.parametrize("bad", [{"userid": "nobody", "name": "x"}, {}])
def test_actions_reject_bad_input(bad: dict[str, str]) -> None:
    app = create_simulator_app(SimState()).test_client()
    assert app.post("/_sim/actions/add_customer", json=bad).status_code == 400
