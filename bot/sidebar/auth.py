"""Who is looking at the sidebar: WeCom OAuth (code -> userid) into a signed session cookie.

Flow (PROTOCOL.md §3.10): a page without a valid session redirects to WeCom's authorize URL with a
random `state`; the same state is kept in a short-lived signed cookie, so a callback can only finish
the login it started in this browser (login CSRF). The callback trades the single-use code for the
userid with `auth/getuserinfo` and sets the session cookie, then goes back to the page asked for.

The cookies are HttpOnly, signed with SOPBOT_SECRET_KEY (itsdangerous), and SameSite=None; Secure
when the sidebar is served over https: WeCom's webview loads the page from a chat window and the
OAuth redirect comes back from open.weixin.qq.com, where a Lax cookie is not always sent. Browsers
reject SameSite=None without Secure, so plain-http development falls back to Lax.

Settings (read from the environment through Settings.extra, documented in README.md):
  SOPBOT_OAUTH_AUTHORIZE_URL  authorize page base; tests and the simulator stand in for WeCom's.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import redirect, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from redis.exceptions import RedisError
from werkzeug.wrappers import Response

from bot.services import Services
from bot.wecom.client import WeComError

log = logging.getLogger("sopbot.sidebar")

__all__ = [
    "AUTHORIZE_URL", "SESSION_COOKIE", "SidebarSession", "authorize_redirect", "authorize_url", "current_session",
    "finish_login", "is_secure", "safe_next",
]

AUTHORIZE_URL = "https://open.weixin.qq.com/connect/oauth2/authorize"
SESSION_COOKIE = "sopbot_sidebar"
STATE_COOKIE = "sopbot_sidebar_oauth"
# A working day in the sidebar without logging in again; WeCom re-runs OAuth silently (snsapi_base).
SESSION_MAX_AGE = 12 * 3600
# WeCom's code lives 5 minutes; the state cookie a little longer than that.
STATE_MAX_AGE = 600
CALLBACK_PATH = "/sidebar/oauth/callback"


@dataclass(frozen=True)
class SidebarSession:
    userid: str
    csrf: str


def _serializer(services: Services, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(services.settings.secret_key, salt=salt)


def authorize_base(services: Services) -> str:
    return services.settings.extra.get("SOPBOT_OAUTH_AUTHORIZE_URL") or AUTHORIZE_URL


def is_secure(services: Services) -> bool:
    return request.is_secure or services.settings.public_url.startswith("https://")


def _set_cookie(resp: Response, services: Services, name: str, value: str, max_age: int) -> None:
    secure = is_secure(services)
    resp.set_cookie(name, value, max_age=max_age, path="/sidebar", httponly=True, secure=secure,
                    samesite="None" if secure else "Lax")


def current_session(services: Services) -> SidebarSession | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        data: Any = _serializer(services, "sidebar-session").loads(raw, max_age=SESSION_MAX_AGE)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not data.get("u") or not data.get("c"):
        return None
    return SidebarSession(userid=str(data["u"]), csrf=str(data["c"]))


def safe_next(value: str | None) -> str:
    """Only a path inside the sidebar: an open redirect after login would hand the session to anyone."""
    if not value:
        return "/sidebar/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/sidebar/") or "\\" in value:
        return "/sidebar/"
    return value


def authorize_url(services: Services, callback_path: str, state: str) -> str:
    """WeCom's authorize URL (snsapi_base) coming back to `callback_path` under SOPBOT_PUBLIC_URL with `state`."""
    s = services.settings
    query = urlencode({
        "appid": s.corp_id,
        "redirect_uri": s.public_url + callback_path,
        "response_type": "code",
        "scope": "snsapi_base",
        "state": state,
        "agentid": str(s.agent_id),
    })
    return f"{authorize_base(services)}?{query}#wechat_redirect"


def authorize_redirect(services: Services, next_path: str) -> Response:
    """302 to WeCom's authorize page, binding a fresh state to this browser."""
    state = secrets.token_hex(16)  # [a-zA-Z0-9], far under WeCom's 128 bytes
    resp = redirect(authorize_url(services, CALLBACK_PATH, state), code=302)
    token = _serializer(services, "sidebar-oauth-state").dumps({"s": state, "n": safe_next(next_path)})
    _set_cookie(resp, services, STATE_COOKIE, token, STATE_MAX_AGE)
    return resp


class LoginError(Exception):
    """OAuth could not finish; the message is shown to the employee (Chinese)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _first_use_of_state(services: Services, state: str) -> bool:
    """Each state finishes one login (SET NX for the state's lifetime). WeCom's code is single-use too,
    so when Redis is unreachable the login goes on (logged) rather than locking every employee out."""
    try:
        return bool(services.redis.set(f"sopbot:sidebar:oauth-state:{state}", b"1", nx=True, ex=STATE_MAX_AGE))
    except RedisError as exc:
        log.warning("sidebar oauth: state replay check skipped, Redis unavailable: %s", type(exc).__name__)
        return True


def finish_login(services: Services, code: str | None, state: str | None) -> Response:
    """The redirect back from WeCom: check the state, trade the code, set the session."""
    raw = request.cookies.get(STATE_COOKIE)
    try:
        bound: Any = _serializer(services, "sidebar-oauth-state").loads(raw or "", max_age=STATE_MAX_AGE)
    except BadSignature:
        bound = None
    if not isinstance(bound, dict) or not state or not hmac.compare_digest(str(bound.get("s", "")), state):
        log.warning("sidebar oauth: state does not match this browser's login", extra={"state": state})
        raise LoginError(400, "登录已过期或来源不明，请关闭侧边栏后重新打开。")
    if not code:
        raise LoginError(400, "企业微信没有返回授权码，请关闭侧边栏后重新打开。")
    if not _first_use_of_state(services, state):
        log.warning("sidebar oauth: a state was replayed")
        raise LoginError(400, "该登录链接已使用过，请关闭侧边栏后重新打开。")
    try:
        who = services.wecom.auth_getuserinfo(code)
    except WeComError as exc:
        log.warning("sidebar oauth: getuserinfo failed: %s", exc)
        raise LoginError(400, "企业微信登录失败（授权码无效或已过期），请关闭侧边栏后重新打开。") from exc
    userid = who.get("userid")
    if not userid:
        # A customer or an outsider opened the link: the sidebar is for employees only.
        log.warning("sidebar oauth: a non-member tried to log in", extra={"openid": who.get("openid")})
        raise LoginError(403, "侧边栏仅供本企业成员使用。")
    resp = redirect(safe_next(str(bound.get("n") or "")), code=302)
    session_token = _serializer(services, "sidebar-session").dumps({"u": userid, "c": secrets.token_urlsafe(24)})
    _set_cookie(resp, services, SESSION_COOKIE, session_token, SESSION_MAX_AGE)
    resp.delete_cookie(STATE_COOKIE, path="/sidebar")
    log.info("sidebar login", extra={"userid": userid})
    return resp


def csrf_ok(session: SidebarSession) -> bool:
    sent = request.headers.get("X-CSRF-Token", "")
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf.encode())
