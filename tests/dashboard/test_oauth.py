"""Dashboard login through WeCom OAuth (the simulator issues the codes and answers auth/getuserinfo)."""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from bot.dashboard import auth
from bot.services import Services
from tests.conftest import SimHarness

AUTHORIZE_STANDIN = "http://wecom-authorize.test/connect/oauth2/authorize"


@pytest.fixture
def admins(services: Services) -> Services:
    extra = {**services.settings.extra, "SOPBOT_OAUTH_AUTHORIZE_URL": AUTHORIZE_STANDIN}
    services.settings = services.settings.with_overrides(dashboard_admins=frozenset({"LiMing", "ZhaoLei"}),
                                                         extra=extra)
    return services


def _start(client: Any, next_path: str = "/dashboard") -> dict[str, str]:
    resp = client.get("/dashboard/oauth/start", query_string={"next": next_path})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    location = resp.headers["Location"]
    assert location.startswith(AUTHORIZE_STANDIN + "?") and location.endswith("#wechat_redirect")
    return {k: v[0] for k, v in parse_qs(urlsplit(location.split("#")[0]).query).items()}


def _code(sim: SimHarness, userid: str) -> str:
    return str(sim.control("actions/oauth_code", {"userid": userid})["code"])


def _session_cookie(resp: Any) -> str:
    return next(c for c in resp.headers.getlist("Set-Cookie") if c.startswith(auth.COOKIE + "="))


def test_login_page_offers_wecom_login_that_redirects_to_the_authorize_url(client: Any, admins: Services,
                                                                           sim: SimHarness) -> None:
    page = client.get("/dashboard?from=2026-01-01")
    assert page.status_code == 401
    html = page.get_data(as_text=True)
    assert "企业微信登录" in html and 'href="/dashboard/oauth/start?next=' in html and "管理员令牌" in html
    q = _start(client)
    s = admins.settings
    assert q["appid"] == s.corp_id and q["agentid"] == str(s.agent_id)
    assert q["redirect_uri"] == s.public_url + "/dashboard/oauth/callback"
    assert q["response_type"] == "code" and q["scope"] == "snsapi_base"
    assert re.fullmatch(r"[0-9a-f]{72}", q["state"])  # WeCom allows [a-zA-Z0-9], at most 128 bytes


def test_admin_logs_in_and_lands_on_the_page_asked_for(client: Any, admins: Services, sim: SimHarness) -> None:
    q = _start(client, "/dashboard?from=2026-01-01")
    done = client.get("/dashboard/oauth/callback", query_string={"code": _code(sim, "LiMing"), "state": q["state"]})
    assert done.status_code == 303 and done.headers["Location"] == "/dashboard?from=2026-01-01"
    cookie = _session_cookie(done)
    assert "HttpOnly" in cookie and "Path=/dashboard" in cookie
    assert [c["query"]["code"] for c in sim.ok_calls("auth/getuserinfo")]
    page = client.get("/dashboard")
    assert page.status_code == 200 and "<svg" in page.get_data(as_text=True)
    assert client.get("/dashboard/funnel.csv").status_code == 200


def test_non_admin_gets_a_chinese_403_and_no_session(client: Any, admins: Services, sim: SimHarness) -> None:
    q = _start(client)
    resp = client.get("/dashboard/oauth/callback", query_string={"code": _code(sim, "WangFang"), "state": q["state"]})
    assert resp.status_code == 403
    html = resp.get_data(as_text=True)
    assert "WangFang" in html and "不是数据看板管理员" in html
    assert not [c for c in resp.headers.getlist("Set-Cookie") if c.startswith(auth.COOKIE + "=")]
    assert client.get("/dashboard").status_code == 401
    outsider = _start(client)
    code = str(sim.control("actions/oauth_code", {"openid": "oCustomer1"})["code"])
    assert client.get("/dashboard/oauth/callback", query_string={"code": code,
                                                                 "state": outsider["state"]}).status_code == 403


def test_removing_an_admin_ends_their_session(client: Any, admins: Services, sim: SimHarness) -> None:
    q = _start(client)
    client.get("/dashboard/oauth/callback", query_string={"code": _code(sim, "ZhaoLei"), "state": q["state"]})
    assert client.get("/dashboard").status_code == 200
    admins.settings = admins.settings.with_overrides(dashboard_admins=frozenset({"LiMing"}))
    assert client.get("/dashboard").status_code == 401


def test_forged_state_is_refused(client: Any, admins: Services, sim: SimHarness) -> None:
    q = _start(client)
    state = q["state"]
    forged = state[:-1] + ("0" if state[-1] != "0" else "1")  # one hex digit of the signature changed
    for bad in (forged, "0" * 72, "not-a-state", ""):
        resp = client.get("/dashboard/oauth/callback", query_string={"code": _code(sim, "LiMing"), "state": bad})
        assert resp.status_code == 400 and "重新" in resp.get_data(as_text=True)
    assert not sim.ok_calls("auth/getuserinfo")  # refused before the code was traded
    assert client.get("/dashboard").status_code == 401


def test_state_from_another_browser_is_refused(app: Any, client: Any, admins: Services, sim: SimHarness) -> None:
    q = _start(client)  # this browser holds the nonce cookie; another one gets the callback URL
    other = app.test_client()
    resp = other.get("/dashboard/oauth/callback", query_string={"code": _code(sim, "LiMing"), "state": q["state"]})
    assert resp.status_code == 400
    assert other.get("/dashboard").status_code == 401


def test_expired_state_is_refused(client: Any, admins: Services, sim: SimHarness,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    q = _start(client)
    issued = time.time()
    monkeypatch.setattr(auth, "_clock", lambda: issued + auth.STATE_MAX_AGE + 5)  # 10 minutes later
    resp = client.get("/dashboard/oauth/callback", query_string={"code": _code(sim, "LiMing"), "state": q["state"]})
    assert resp.status_code == 400
    assert client.get("/dashboard").status_code == 401


def test_old_state_signed_for_this_browser_is_refused(client: Any, admins: Services, sim: SimHarness) -> None:
    _start(client)
    cookie = client.get_cookie(auth.NONCE_COOKIE, path="/dashboard")
    assert cookie is not None
    nonce = auth._serializer(admins, "dashboard-oauth-nonce").loads(cookie.value)["n"]
    stale = auth.issue_state(admins, nonce, issued_at=time.time() - 11 * 60)
    resp = client.get("/dashboard/oauth/callback", query_string={"code": _code(sim, "LiMing"), "state": stale})
    assert resp.status_code == 400
    fresh = auth.issue_state(admins, nonce)  # the same browser, a fresh signed state: accepted (the control)
    ok = client.get("/dashboard/oauth/callback", query_string={"code": _code(sim, "LiMing"), "state": fresh})
    assert ok.status_code == 303


def test_replayed_state_is_refused(client: Any, admins: Services, sim: SimHarness) -> None:
    q = _start(client)
    nonce_cookie = client.get_cookie(auth.NONCE_COOKIE, path="/dashboard")
    assert nonce_cookie is not None
    first = client.get("/dashboard/oauth/callback", query_string={"code": _code(sim, "LiMing"), "state": q["state"]})
    assert first.status_code == 303
    client.delete_cookie(auth.COOKIE, path="/dashboard")
    client.set_cookie(auth.NONCE_COOKIE, nonce_cookie.value, path="/dashboard")  # the attacker kept the cookie
    again = client.get("/dashboard/oauth/callback", query_string={"code": _code(sim, "LiMing"), "state": q["state"]})
    assert again.status_code == 400 and "已经用过" in again.get_data(as_text=True)
    assert client.get("/dashboard").status_code == 401


def test_open_redirect_after_login_is_neutralised(client: Any, admins: Services, sim: SimHarness) -> None:
    for evil in ("https://evil.example/dashboard", "//evil.example/x", "/sidebar/", "/dashboard/oauth/callback"):
        q = _start(client, evil)
        done = client.get("/dashboard/oauth/callback",
                          query_string={"code": _code(sim, "LiMing"), "state": q["state"]})
        assert done.status_code == 303 and done.headers["Location"] == "/dashboard"


def test_without_admins_the_wecom_button_explains_it_is_not_configured(client: Any, services: Services) -> None:
    assert not services.settings.dashboard_admins
    page = client.get("/dashboard")
    html = page.get_data(as_text=True)
    assert page.status_code == 401 and "企业微信登录未配置" in html and "SOPBOT_DASHBOARD_ADMINS" in html
    assert "/dashboard/oauth/start" not in html
    start = client.get("/dashboard/oauth/start")
    assert start.status_code == 404 and "企业微信登录未配置" in start.get_data(as_text=True)


def test_admin_token_login_still_works_for_scripts(client: Any, admins: Services) -> None:
    assert client.get("/dashboard/funnel.csv", headers={"Authorization": "Bearer test-admin-token"}).status_code == 200
    login = client.get("/dashboard", query_string={"token": "test-admin-token"})
    assert login.status_code == 303 and "token" not in login.headers["Location"]
    assert "HttpOnly" in _session_cookie(login)
    assert client.get("/dashboard").status_code == 200
    assert client.get("/dashboard?token=wrong").status_code == 401
