"""Security: constant-time token checks, unforgeable/expiring tokens, no secrets in logs, security headers.

Tokens are tested by behaviour: `hmac.compare_digest` is wrapped to record its arguments, and each token path
(admin API, dashboard, sidebar CSRF, sidebar OAuth state) must both answer right and have gone through it.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import func, select

from bot.db import utcnow
from bot.models import Customer, TimelineEntry
from bot.services import Services
from bot.sop.models import TrackedLink
from bot.sop.service import sign_link
from tests.conftest import ADMIN, SimHarness, fixture_xml, post_event, run_worker
from tests.sidebar.conftest import add_customer, csrf_of, login, sidebar_settings  # noqa: F401 - fixture

ADMIN_TOKEN = "test-admin-token"


@pytest.fixture
def digest_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every hmac.compare_digest call (as bytes), still answering with the real function."""
    real = hmac.compare_digest
    calls: list[tuple[bytes, bytes]] = []

    def recording(a: Any, b: Any) -> bool:
        calls.append((a.encode() if isinstance(a, str) else bytes(a), b.encode() if isinstance(b, str) else bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    return calls


def _compared(calls: list[tuple[bytes, bytes]], sent: str, expected: str) -> bool:
    pair = {sent.encode(), expected.encode()}
    return any({a, b} == pair for a, b in calls)


# -- constant-time comparisons ---------------------------------------------------------------------

def test_admin_api_token_is_compared_in_constant_time(client: Any, digest_calls: list[tuple[bytes, bytes]]) -> None:
    wrong = client.get("/api/v1/employees", headers={"Authorization": "Bearer test-admin-tokeX"})
    assert wrong.status_code == 401 and "admin token" in wrong.get_json()["error"]
    assert _compared(digest_calls, "test-admin-tokeX", ADMIN_TOKEN)
    digest_calls.clear()
    assert client.get("/api/v1/employees", headers=ADMIN).status_code == 200
    assert _compared(digest_calls, ADMIN_TOKEN, ADMIN_TOKEN)
    # A prefix of the token or the token with a suffix is no token.
    for token in (ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", "", ADMIN_TOKEN.upper()):
        assert client.get("/api/v1/employees", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_dashboard_token_is_compared_in_constant_time(client: Any, digest_calls: list[tuple[bytes, bytes]]) -> None:
    wrong = client.get("/dashboard/", headers={"Authorization": "Bearer not-the-admin-token"})
    assert wrong.status_code == 401
    assert _compared(digest_calls, "not-the-admin-token", ADMIN_TOKEN)
    digest_calls.clear()
    assert client.get("/dashboard/", query_string={"token": "also-wrong-token"}).status_code == 401
    assert _compared(digest_calls, "also-wrong-token", ADMIN_TOKEN)
    digest_calls.clear()
    assert client.get("/dashboard/", headers=ADMIN).status_code == 200
    assert _compared(digest_calls, ADMIN_TOKEN, ADMIN_TOKEN)


@pytest.mark.usefixtures("sidebar_settings")
def test_sidebar_csrf_and_oauth_state_are_compared_in_constant_time(
        client: Any, services: Services, sim: SimHarness, digest_calls: list[tuple[bytes, bytes]]) -> None:
    ext = add_customer(services, sim)
    start = client.get("/sidebar/")
    state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
    code = sim.control("actions/oauth_code", {"userid": "WangFang"})["code"]
    assert client.get("/sidebar/oauth/callback", query_string={"code": code, "state": state}).status_code == 302
    assert _compared(digest_calls, state, state)

    csrf = csrf_of(client)
    digest_calls.clear()
    forged = client.post(f"/sidebar/api/customers/{ext}/tags", json={"add": ["兴趣:直播"]},
                         headers={"X-CSRF-Token": "forged-csrf-token"})
    assert forged.status_code == 403 and "请求校验失败" in forged.get_json()["error"]
    assert _compared(digest_calls, "forged-csrf-token", csrf)


# -- tracked links ---------------------------------------------------------------------------------

def _link(services: Services, *, age: timedelta = timedelta(0)) -> tuple[int, str]:
    with services.transaction() as s:
        customer = Customer(external_userid="wmLinkCustomer000000000000000001", name="链接客户")
        s.add(customer)
        s.flush()
        link = TrackedLink(customer_id=customer.id, external_userid=customer.external_userid, userid="WangFang",
                           sop_id="onboarding", script_id="webinar_replay", step_id="d1",
                           url="https://example.com/replay", url_hash="0" * 64, title="回放",
                           created_at=utcnow() - age)
        s.add(link)
        s.flush()
        link_id = int(link.id)
    return link_id, sign_link(services.settings.secret_key, link_id)


def _opened(services: Services) -> int:
    with services.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(TimelineEntry)
                            .where(TimelineEntry.kind == "link_opened")) or 0)


def test_tracked_link_opens_and_forged_or_altered_tokens_are_404(client: Any, services: Services) -> None:
    link_id, token = _link(services)
    value, _, signature = token.partition(".")
    other_id = sign_link(services.settings.secret_key, link_id + 1)
    forged = [
        f"{value}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}",  # one character of the signature
        f"{int(value, 36) + 1:x}.{signature}",  # another id under this id's signature
        sign_link("another-secret-key-000000", link_id),  # signed with a key that is not ours
        value, "", "..", "a" * 4000, other_id,  # no signature; unknown but validly signed id
        sign_link(services.settings.secret_key, 2**70),  # validly signed id beyond BIGINT
    ]
    for bad in forged:
        resp = client.get(f"/t/{bad}")
        assert resp.status_code == 404, (bad, resp.status_code)
    assert client.get("/t/%00").status_code == 400  # NUL is refused before any view
    assert _opened(services) == 0
    ok = client.get(f"/t/{token}")
    assert ok.status_code == 302 and ok.headers["Location"] == "https://example.com/replay"
    assert ok.headers["Cache-Control"] == "no-store"  # every open reaches us, none is served from a cache
    assert _opened(services) == 1


@pytest.mark.parametrize(("age_days", "setting", "status"), [
    (179, None, 302), (181, None, 410), (31, "30", 410), (29, "30", 302), (3650, "0", 302)])
def test_tracked_links_expire_after_the_configured_days(client: Any, services: Services, age_days: int,
                                                        setting: str | None, status: int) -> None:
    if setting is not None:
        services.settings = services.settings.with_overrides(
            extra={**services.settings.extra, "SOPBOT_LINK_MAX_AGE_DAYS": setting})
    _, token = _link(services, age=timedelta(days=age_days))
    resp = client.get(f"/t/{token}")
    assert resp.status_code == status
    assert _opened(services) == (1 if status == 302 else 0)
    if status == 410:
        assert "链接已过期" in resp.get_data(as_text=True)


# -- sidebar OAuth state ---------------------------------------------------------------------------

def _start(client: Any) -> str:
    start = client.get("/sidebar/")
    assert start.status_code == 302
    return str(parse_qs(urlsplit(start.headers["Location"]).query)["state"][0])


@pytest.mark.usefixtures("sidebar_settings")
def test_oauth_state_forged_expired_or_replayed_is_refused(client: Any, services: Services, sim: SimHarness,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def callback(state: str) -> Any:
        code = sim.control("actions/oauth_code", {"userid": "WangFang"})["code"]
        return client.get("/sidebar/oauth/callback", query_string={"code": code, "state": state})

    # Forged: a state cookie signed with another key, for a state the attacker chose.
    client.set_cookie("sopbot_sidebar_oauth", URLSafeTimedSerializer(
        "not-our-secret-key-000000", salt="sidebar-oauth-state").dumps({"s": "evil", "n": "/sidebar/"}),
        path="/sidebar")
    assert callback("evil").status_code == 400
    # Expired: the state was issued 601 s ago (the cookie may outlive max-age in a misbehaving webview).
    with monkeypatch.context() as m:
        m.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 601)
        state = _start(client)
    expired = callback(state)
    assert expired.status_code == 400 and "登录已过期" in expired.get_data(as_text=True)
    # Fresh, then replayed with the same state cookie and a new code: one login per state.
    state = _start(client)
    cookie = client.get_cookie("sopbot_sidebar_oauth", path="/sidebar")
    assert cookie is not None
    assert callback(state).status_code == 302
    client.delete_cookie("sopbot_sidebar", path="/sidebar")
    client.set_cookie("sopbot_sidebar_oauth", cookie.value, path="/sidebar")
    replayed = callback(state)
    assert replayed.status_code == 400 and "已使用过" in replayed.get_data(as_text=True)
    assert client.get("/sidebar/api/me").status_code == 401  # no session came out of the refusals
    assert len(sim.ok_calls("auth/getuserinfo")) == 1


# -- secrets never logged --------------------------------------------------------------------------

OURS = ("sopbot", "bot", "jobs", "handlers")


def _raw(records: list[logging.LogRecord]) -> str:
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.extend(repr(v) for v in vars(record).values())
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


def _as_shipped(records: list[logging.LogRecord], settings: Any) -> str:
    """The lines production writes: the log handler's redaction filter and JSON formatter (bot.logs)."""
    from bot.logs import JsonFormatter, RedactFilter, secrets_of

    redact, fmt = RedactFilter(secrets_of(settings)), JsonFormatter()
    lines = []
    for record in records:
        copy = logging.makeLogRecord(vars(record))
        assert redact.filter(copy)
        lines.append(fmt.format(copy))
    return "\n".join(lines)


@pytest.mark.usefixtures("sidebar_settings")
def test_secrets_never_appear_in_logs(client: Any, services: Services, sim: SimHarness,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert post_event(client, fixture_xml("change_external_contact__add_external_contact")).status_code == 200
    run_worker(services)
    add_customer(services, sim)  # a simulator callback, the worker and WeCom API calls with an access token
    done = login(client, sim, "WangFang")
    assert done.status_code == 302
    session_cookie = client.get_cookie("sopbot_sidebar", path="/sidebar")
    assert session_cookie is not None
    csrf = csrf_of(client)
    client.get("/api/v1/employees", headers=ADMIN)
    client.get("/dashboard/", query_string={"token": ADMIN_TOKEN})
    client.get("/api/v1/employees", headers={"Authorization": "Bearer wrong-token-but-long"})
    s = services.settings
    secrets = {"admin token": s.admin_token, "secret key": s.secret_key, "agent secret": s.agent_secret,
               "callback token": s.callback_token, "AES key": s.encoding_aes_key,
               "session cookie": session_cookie.value, "csrf token": csrf}
    tokens = set(re.findall(r"simtok_[A-Za-z0-9_-]+", repr(vars(sim.state))))
    assert tokens, "no access token was issued: the flows did not reach WeCom"
    secrets.update({f"access token {i}": t for i, t in enumerate(tokens)})

    ours = [r for r in caplog.records if r.name.split(".")[0] in OURS]
    assert any(r.name == "sopbot.sidebar" for r in ours), "the flows logged nothing of ours: nothing proven"
    # Our own loggers never hold a secret, not even before the handler's redaction.
    raw = _raw(ours)
    assert not [n for n, v in secrets.items() if v in raw], "a secret in a sopbot log record"
    # Libraries log request URLs at DEBUG (urllib3: ?corpsecret=…, ?access_token=…): what the handler writes
    # at DEBUG is masked all the same.
    shipped = _as_shipped(caplog.records, s)
    assert "corpsecret=***" in shipped  # the check below saw the URL that carries the agent secret
    leaked = [n for n, v in secrets.items() if v in shipped]
    assert not leaked, f"secrets in the logs: {leaked}"


# -- security headers ------------------------------------------------------------------------------

def _csp(resp: Any) -> dict[str, str]:
    policy = resp.headers.get("Content-Security-Policy", "")
    return {d.split(" ", 1)[0]: d.partition(" ")[2] for d in (x.strip() for x in policy.split(";")) if d}


def _assert_headers(resp: Any, *, authenticated: bool) -> None:
    h = resp.headers
    assert h.get("X-Content-Type-Options") == "nosniff", resp.request.path
    assert h.get("Referrer-Policy") in ("same-origin", "no-referrer", "strict-origin-when-cross-origin")
    csp = _csp(resp)
    assert csp.get("default-src") == "'none'" and csp.get("frame-ancestors") == "'none'", csp
    assert csp.get("base-uri") == "'none'"
    assert h.get("X-Frame-Options") == "DENY"
    if authenticated:
        assert "no-store" in h.get("Cache-Control", ""), resp.request.path


def _assert_page_fits_policy(resp: Any) -> None:
    """Everything the HTML loads is allowed by its own CSP (scripts from allowed origins, no inline script)."""
    html = resp.get_data(as_text=True)
    csp = _csp(resp)
    script_src = csp.get("script-src", "").split()
    for tag in re.findall(r"<script\b[^>]*>", html):
        src = re.search(r'src="([^"]+)"', tag)
        if src is None:
            assert 'type="application/json"' in tag, f"inline script blocked by the CSP: {tag}"
            continue
        url = src.group(1)
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(url)) if urlsplit(url).netloc else "'self'"
        assert origin in script_src, (url, script_src)
    if re.search(r"<style\b|\sstyle=", html):
        assert "'unsafe-inline'" in csp.get("style-src", ""), "inline styles blocked by the CSP"
    for href in re.findall(r'<link[^>]+href="([^"]+)"', html):
        assert not urlsplit(href).netloc, href
    assert "<iframe" not in html


def test_security_headers_on_api_callback_and_public_pages(client: Any, services: Services) -> None:
    _assert_headers(client.get("/api/v1/employees", headers=ADMIN), authenticated=True)
    _assert_headers(client.get("/api/v1/employees"), authenticated=True)
    _assert_headers(client.post("/wecom/callback", data=b"x"), authenticated=False)
    login_page = client.get("/dashboard/")
    assert login_page.status_code == 401
    _assert_headers(login_page, authenticated=True)
    _assert_page_fits_policy(login_page)
    brief = client.get("/sidebar/handover/1", query_string={"token": "forged"})
    assert brief.status_code == 403
    _assert_headers(brief, authenticated=True)
    _, token = _link(services)
    _assert_headers(client.get(f"/t/{token}"), authenticated=True)
    assert client.get("/healthz").headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", [
    "/sidebar/api/customers/wmSomeone/scripts/a%2F/messages",  # "a%2F" decodes to "a/": an empty segment
    "/api/v1//inbox",
])
def test_a_path_with_an_empty_segment_is_not_found_rather_than_redirected(client: Any, path: str) -> None:
    # werkzeug's default would answer 308 to the merged path: echoing the path, and sending a POST elsewhere.
    for method in ("GET", "POST"):
        resp = client.open(path, method=method, headers=ADMIN)
        assert resp.status_code == 404 and "Location" not in resp.headers, (method, path, resp.status_code)
        assert "wmSomeone" not in resp.get_data(as_text=True)


def test_strict_transport_security_only_over_https(client: Any, services: Services) -> None:
    assert "Strict-Transport-Security" not in client.get("/healthz").headers
    services.settings = services.settings.with_overrides(public_url="https://sopbot.example.com")
    assert client.get("/healthz").headers["Strict-Transport-Security"].startswith("max-age=")


def test_dashboard_page_headers_and_policy(client: Any) -> None:
    resp = client.get("/dashboard/", headers=ADMIN)
    assert resp.status_code == 200
    _assert_headers(resp, authenticated=True)
    _assert_page_fits_policy(resp)
    assert "<svg" in resp.get_data(as_text=True)  # inline SVG charts need no CSP source at all


@pytest.mark.usefixtures("sidebar_settings")
def test_sidebar_pages_headers_and_policy(client: Any, services: Services, sim: SimHarness) -> None:
    services.settings = services.settings.with_overrides(
        extra={**services.settings.extra, "SOPBOT_JSSDK_URL": "https://res.wx.qq.com/open/js/jweixin-1.2.0.js"})
    refused = client.get("/sidebar/oauth/callback", query_string={"code": "x", "state": "y"})
    assert refused.status_code == 400
    _assert_headers(refused, authenticated=True)
    login(client, sim, "WangFang")
    for path in ("/sidebar/", "/sidebar/tasks"):
        page = client.get(path)
        assert page.status_code == 200, path
        _assert_headers(page, authenticated=True)
        _assert_page_fits_policy(page)
        assert "https://res.wx.qq.com" in _csp(page)["script-src"]
        assert 'src="https://res.wx.qq.com/open/js/jweixin-1.2.0.js"' in page.get_data(as_text=True)
    _assert_headers(client.get("/sidebar/api/me"), authenticated=True)
    # The versioned static files stay cacheable for a year: the hook does not override what a view set.
    page = client.get("/sidebar/tasks").get_data(as_text=True)
    static = re.search(r'src="(/sidebar/static/sidebar\.js\?v=[0-9a-f]+)"', page)
    assert static is not None
    asset = client.get(static.group(1))
    assert asset.status_code == 200 and "immutable" in asset.headers["Cache-Control"]
    assert asset.headers["X-Content-Type-Options"] == "nosniff"
