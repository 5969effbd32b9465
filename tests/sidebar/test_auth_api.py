"""Sidebar identity, JS-SDK signatures and the JSON API's authorization, against the WeCom simulator."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from bot.models import CustomerTag
from bot.services import Services
from bot.sop.models import SopTask
from bot.wecom.jssdk import sign_jsapi
from tests.conftest import SimHarness, run_worker
from tests.sidebar.conftest import AUTHORIZE_STANDIN, add_customer, add_task, csrf_of, login

pytestmark = pytest.mark.usefixtures("sidebar_settings")


# -- OAuth -----------------------------------------------------------------------------------------

def test_no_session_redirects_to_the_configured_authorize_page(client: Any, services: Services,
                                                               sim: SimHarness) -> None:
    resp = client.get("/sidebar/tasks?from=digest")
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert location.startswith(AUTHORIZE_STANDIN + "?") and location.endswith("#wechat_redirect")
    q = {k: v[0] for k, v in parse_qs(urlsplit(location.split("#")[0]).query).items()}
    s = services.settings
    assert q["appid"] == s.corp_id and q["agentid"] == str(s.agent_id)
    assert q["redirect_uri"] == s.public_url + "/sidebar/oauth/callback"
    assert q["response_type"] == "code" and q["scope"] == "snsapi_base"
    assert re.fullmatch(r"[A-Za-z0-9]{1,128}", q["state"])
    state_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in state_cookie and q["state"] not in state_cookie  # the state is signed, not echoed


def test_oauth_round_trip_lands_on_the_page_asked_for_with_an_httponly_session(client: Any,
                                                                               sim: SimHarness) -> None:
    done = login(client, sim, "WangFang", path="/sidebar/tasks?from=digest")
    assert done.status_code == 302 and done.headers["Location"] == "/sidebar/tasks?from=digest"
    cookie = next(c for c in done.headers.getlist("Set-Cookie") if c.startswith("sopbot_sidebar="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # plain http dev
    assert [c["query"]["code"] for c in sim.ok_calls("auth/getuserinfo")]  # the code was traded once
    page = client.get("/sidebar/tasks")
    assert page.status_code == 200 and "我的任务" in page.get_data(as_text=True)
    assert client.get("/sidebar/api/me").get_json()["userid"] == "WangFang"


def test_session_cookie_is_samesite_none_and_secure_over_https(client: Any, sim: SimHarness,
                                                               sidebar_settings: Callable[..., None]) -> None:
    sidebar_settings(public_url="https://sidebar.example.com")
    done = login(client, sim, "WangFang")
    cookie = next(c for c in done.headers.getlist("Set-Cookie") if c.startswith("sopbot_sidebar="))
    assert "SameSite=None" in cookie and "Secure" in cookie and "HttpOnly" in cookie


def test_callback_refuses_a_foreign_state_a_used_code_and_non_members(client: Any, sim: SimHarness) -> None:
    client.get("/sidebar/")
    code = sim.control("actions/oauth_code", {"userid": "WangFang"})["code"]
    wrong = client.get("/sidebar/oauth/callback", query_string={"code": code, "state": "attackerstate"})
    assert wrong.status_code == 400 and "登录已过期" in wrong.get_data(as_text=True)
    assert not sim.calls("auth/getuserinfo")  # nothing traded for a login this browser did not start

    first = login(client, sim, "WangFang")
    assert first.status_code == 302
    client.delete_cookie("sopbot_sidebar", path="/sidebar")
    start = client.get("/sidebar/")
    state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
    used = sim.ok_calls("auth/getuserinfo")[-1]["query"]["code"]
    again = client.get("/sidebar/oauth/callback", query_string={"code": used, "state": state})
    assert again.status_code == 400 and "授权码无效" in again.get_data(as_text=True)

    start = client.get("/sidebar/")
    state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
    outsider = sim.control("actions/oauth_code", {"openid": "oCustomer1"})["code"]
    denied = client.get("/sidebar/oauth/callback", query_string={"code": outsider, "state": state})
    assert denied.status_code == 403 and "仅供本企业成员" in denied.get_data(as_text=True)


def test_next_path_cannot_leave_the_sidebar(client: Any, sim: SimHarness) -> None:
    start = client.get("/sidebar/", query_string={"next": "x"})
    assert start.status_code == 302
    from bot.sidebar.auth import safe_next

    assert safe_next("https://evil.example/sidebar/") == "/sidebar/"
    assert safe_next("//evil.example/sidebar/") == "/sidebar/"
    assert safe_next("/api/v1/customers") == "/sidebar/"
    assert safe_next("/sidebar/tasks?x=1") == "/sidebar/tasks?x=1"


def test_api_without_session_is_401(client: Any) -> None:
    resp = client.get("/sidebar/api/me")
    assert resp.status_code == 401 and resp.get_json()["login"] is True


# -- JS-SDK ----------------------------------------------------------------------------------------

def _ticket(sim: SimHarness, kind: str) -> list[str]:
    return [t for t, v in sim.state.tickets.items() if v["kind"] == kind]


def test_jssdk_signatures_use_both_tickets_for_the_exact_url_and_refresh_when_expired(
        client: Any, services: Services, sim: SimHarness) -> None:
    login(client, sim, "WangFang")
    page = services.settings.public_url + "/sidebar/?a=1&b=二"
    body = client.get("/sidebar/api/jssdk", query_string={"url": page + "#frag"}).get_json()
    assert body["url"] == page  # fragment dropped, query kept
    corp, agent = _ticket(sim, "corp"), _ticket(sim, "agent_config")
    assert len(corp) == 1 and len(agent) == 1
    cfg, agent_cfg = body["config"], body["agentConfig"]
    assert cfg["appId"] == services.settings.corp_id and cfg["beta"] is True
    assert cfg["signature"] == sign_jsapi(corp[0], cfg["nonceStr"], cfg["timestamp"], page)
    assert agent_cfg["corpid"] == services.settings.corp_id and agent_cfg["agentid"] == str(services.settings.agent_id)
    assert agent_cfg["signature"] == sign_jsapi(agent[0], agent_cfg["nonceStr"], agent_cfg["timestamp"], page)
    assert "getCurExternalContact" in agent_cfg["jsApiList"] and "sendChatMessage" in agent_cfg["jsApiList"]
    assert [c["query"].get("type") for c in sim.ok_calls("ticket/get")] == ["agent_config"]

    # Cached and shared: a second page view fetches nothing.
    client.get("/sidebar/api/jssdk", query_string={"url": page})
    assert len(sim.ok_calls("get_jsapi_ticket")) == 1 and len(sim.ok_calls("ticket/get")) == 1

    # Past expiry on the simulator's clock the tickets are fetched again and the new ones sign.
    sim.state.advance(7200)
    body = client.get("/sidebar/api/jssdk", query_string={"url": page}).get_json()
    assert len(sim.ok_calls("get_jsapi_ticket")) == 2 and len(sim.ok_calls("ticket/get")) == 2
    new_corp = [t for t in _ticket(sim, "corp") if t != corp[0]]
    new_agent = [t for t in _ticket(sim, "agent_config") if t != agent[0]]
    a = body["agentConfig"]
    assert a["signature"] == sign_jsapi(new_agent[0], a["nonceStr"], a["timestamp"], page)
    assert a["signature"] != sign_jsapi(agent[0], a["nonceStr"], a["timestamp"], page)
    c = body["config"]
    assert c["signature"] == sign_jsapi(new_corp[0], c["nonceStr"], c["timestamp"], page)


def test_jssdk_signs_only_our_sidebar_pages(client: Any, sim: SimHarness) -> None:
    login(client, sim, "WangFang")
    for url in ("https://evil.example/sidebar/", "http://127.0.0.1:8080/api/v1/customers"):
        assert client.get("/sidebar/api/jssdk", query_string={"url": url}).status_code == 400
    assert not sim.calls("ticket/get")


def test_main_page_embeds_the_signature_for_its_own_url(client: Any, services: Services, sim: SimHarness) -> None:
    import json

    login(client, sim, "WangFang")
    html = client.get("/sidebar/?x=1").get_data(as_text=True)
    boot = json.loads(re.search(r'id="boot">(.*?)</script>', html, re.S).group(1))  # type: ignore[union-attr]
    page = services.settings.public_url + "/sidebar/?x=1"
    a = boot["jssdk"]["agentConfig"]
    assert boot["jssdk"]["url"] == page
    assert a["signature"] == sign_jsapi(_ticket(sim, "agent_config")[0], a["nonceStr"], a["timestamp"], page)


# -- authorization ---------------------------------------------------------------------------------

def test_follower_and_admin_read_a_customer_others_get_403_and_are_logged(
        client: Any, services: Services, sim: SimHarness, sidebar_settings: Callable[..., None],
        caplog: pytest.LogCaptureFixture) -> None:
    ext = add_customer(services, sim)
    login(client, sim, "WangFang")
    body = client.get(f"/sidebar/api/customers/{ext}").get_json()
    assert body["customer"]["name"] == "周杰"
    follow = body["follows"][0]
    assert follow["me"] is True and follow["name"] == "王芳" and follow["add_way"] == "扫描二维码"
    assert follow["added_at"]  # shown in Asia/Shanghai
    assert {g["group"] for g in body["tag_groups"]} >= {"来源"}

    login(client, sim, "ZhaoLei")
    with caplog.at_level(logging.WARNING, logger="sopbot.sidebar"):
        denied = client.get(f"/sidebar/api/customers/{ext}")
        unknown = client.get("/sidebar/api/customers/wmNOSUCHCUSTOMER")
        search = client.get("/sidebar/api/scripts", query_string={"q": "回放", "customer": ext})
    assert denied.status_code == 403 and "不是该客户的跟进人" in denied.get_json()["error"]
    assert unknown.status_code == 403 and unknown.get_json() == denied.get_json()  # no probing of ids
    assert search.status_code == 403
    denials = [r for r in caplog.records if "access denied" in r.getMessage()]
    assert len(denials) == 3 and denials[0].userid == "ZhaoLei"
    assert denials[0].external_userid == ext

    sidebar_settings(admin_userids=frozenset({"ZhaoLei"}))
    assert client.get(f"/sidebar/api/customers/{ext}").status_code == 200
    assert client.get("/sidebar/api/customers/wmNOSUCHCUSTOMER").status_code == 404


def test_a_deleted_follow_no_longer_grants_access(client: Any, services: Services, sim: SimHarness) -> None:
    ext = add_customer(services, sim)
    sim.control("actions/delete_customer", {"userid": "WangFang", "external_userid": ext})
    run_worker(services)
    login(client, sim, "WangFang")
    assert client.get(f"/sidebar/api/customers/{ext}").status_code == 403


def test_state_changes_need_the_csrf_header(client: Any, services: Services, sim: SimHarness) -> None:
    ext = add_customer(services, sim)
    login(client, sim, "WangFang")
    body = {"add": ["意向程度:高"]}
    assert client.post(f"/sidebar/api/customers/{ext}/tags", json=body).status_code == 403
    assert client.post(f"/sidebar/api/customers/{ext}/tags", json=body,
                       headers={"X-CSRF-Token": "forged"}).status_code == 403
    ok = client.post(f"/sidebar/api/customers/{ext}/tags", json=body, headers={"X-CSRF-Token": csrf_of(client)})
    assert ok.status_code == 200, ok.get_json()


def test_tag_edit_goes_through_apply_with_manual_source_and_one_mark_tag(
        client: Any, services: Services, sim: SimHarness) -> None:
    ext = add_customer(services, sim)
    login(client, sim, "WangFang")
    before = len(sim.ok_calls("externalcontact/mark_tag"))
    headers = {"X-CSRF-Token": csrf_of(client)}
    unknown = client.post(f"/sidebar/api/customers/{ext}/tags", json={"add": ["没有:这个"]}, headers=headers)
    assert unknown.status_code == 400 and "没有这些标签" in unknown.get_json()["error"]
    resp = client.post(f"/sidebar/api/customers/{ext}/tags", headers=headers,
                       json={"add": ["意向程度:高", "行业:制造业"], "remove": ["来源:直播"], "note": "电话确认有预算"})
    assert resp.status_code == 200
    groups = {g["group"]: g["tags"] for g in resp.get_json()["tag_groups"]}
    assert groups["意向程度"][0]["reason"] == "王芳 手动，电话确认有预算"
    run_worker(services)
    marks = sim.ok_calls("externalcontact/mark_tag")[before:]
    assert len(marks) == 1  # one batched call for the pair, adds and removes together
    assert marks[0]["body"]["userid"] == "WangFang" and marks[0]["body"]["external_userid"] == ext
    assert len(marks[0]["body"]["add_tag"]) == 2 and len(marks[0]["body"]["remove_tag"]) == 1
    with services.transaction() as s:
        row = s.scalar(select(CustomerTag).where(CustomerTag.name == "高"))
        assert row is not None and row.source == "manual" and row.reason["by"] == "WangFang"
        removed = s.scalar(select(CustomerTag).where(CustomerTag.name == "直播"))
        assert removed is not None and removed.removed_at is not None


def test_tasks_are_finished_only_by_their_owner_and_only_once(client: Any, services: Services,
                                                              sim: SimHarness) -> None:
    ext = add_customer(services, sim)
    task_id = add_task(services, ext, "WangFang", "newcust.intro")
    login(client, sim, "ZhaoLei")
    assert client.post(f"/sidebar/api/tasks/{task_id}/done", headers={"X-CSRF-Token": csrf_of(client)}).status_code \
        == 403
    login(client, sim, "WangFang")
    headers = {"X-CSRF-Token": csrf_of(client)}
    mine = {t["id"]: t for t in client.get("/sidebar/api/tasks").get_json()["items"]}
    assert mine[task_id]["preview"]["title"] == "顾问自我介绍"  # (the SOP planner may have added its own)
    assert client.post(f"/sidebar/api/tasks/{task_id}/skip", headers=headers, json={"reason": "客户出差"}).status_code \
        == 200
    assert client.post(f"/sidebar/api/tasks/{task_id}/done", headers=headers).status_code == 409
    with services.transaction() as s:
        task = s.get(SopTask, task_id)
        assert task is not None and task.state == "skipped" and task.completed_by == "WangFang"
        assert task.reason == "客户出差"
    assert task_id not in {t["id"] for t in client.get("/sidebar/api/tasks").get_json()["items"]}


def test_script_messages_carry_media_ids_and_cover_urls(client: Any, services: Services, sim: SimHarness) -> None:
    ext = add_customer(services, sim)
    login(client, sim, "WangFang")
    headers = {"X-CSRF-Token": csrf_of(client)}
    resp = client.post(f"/sidebar/api/customers/{ext}/scripts/newcust.guide/messages", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    text, news = resp.get_json()["messages"]
    assert text == {"msgtype": "text", "text": {"content": "周杰，花 3 分钟了解一下我们能帮工厂解决哪些问题："}}
    assert news["msgtype"] == "news" and news["news"]["title"] == "3 分钟看懂云帆智造"
    cover = news["news"]["imgUrl"]
    assert cover.startswith(services.settings.public_url + "/sidebar/media/")

    image = client.post(f"/sidebar/api/customers/{ext}/scripts/nurture.day7_case_data/messages", headers=headers)
    media = image.get_json()["messages"][1]
    assert media["msgtype"] == "image" and media["image"]["mediaid"] in sim.state.media

    client.delete_cookie("sopbot_sidebar", path="/sidebar")
    assert client.get(urlsplit(cover).path).status_code == 200  # WeCom fetches covers without our cookie
    assert client.get("/sidebar/media/../../scripts/welcome.yaml").status_code == 404


def test_group_context_shows_only_to_members(client: Any, services: Services, sim: SimHarness) -> None:
    login(client, sim, "WangFang")
    assert client.get("/sidebar/api/groups/wrNOSUCHGROUP").status_code == 403
