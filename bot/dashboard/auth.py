"""Who may open /dashboard: the admin token (scripts, first set-up) or WeCom OAuth for SOPBOT_DASHBOARD_ADMINS.

Both end in the same signed, HttpOnly session cookie scoped to /dashboard (12 h). OAuth (PROTOCOL.md §3.10)
reuses the sidebar's authorize URL builder (`bot.sidebar.auth.authorize_url`, so SOPBOT_OAUTH_AUTHORIZE_URL
stands in for WeCom's page in tests and the simulator) and the client's `auth/getuserinfo`.

The OAuth `state` is a signed token, not a random string kept only in a cookie:

    state = <jti: 32 hex> <issued: 8 hex, unix seconds> <mac: 32 hex>      (72 characters of [0-9a-f])
    mac   = HMAC-SHA256(SOPBOT_SECRET_KEY, "dashboard-oauth|jti|issued|nonce")[:32 hex]

- signed: only the server can mint a state (the mac needs the secret key);
- bound to the browser: `nonce` is a random value in a signed HttpOnly cookie set when the login started, so a
  state (or a callback URL) carried to another browser does not verify (login CSRF);
- expiring: `issued` older than 10 minutes is refused (WeCom's code itself lives 5 minutes);
- one-time: the jti is claimed in Redis with SET NX for the state's lifetime, so a replayed callback is refused.

WeCom allows only [a-zA-Z0-9] in `state`, at most 128 bytes: hence hex rather than an itsdangerous token.
A session from OAuth names its userid and is re-checked against SOPBOT_DASHBOARD_ADMINS on every request, so
removing someone from the setting ends their access at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import redirect, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.wrappers import Response

from bot.services import Services
from bot.sidebar.auth import authorize_url, is_secure
from bot.wecom.client import WeComError

log = logging.getLogger("sopbot.dashboard")

__all__ = [
    "CALLBACK_PATH", "COOKIE", "NONCE_COOKIE", "LoginError", "SESSION_MAX_AGE", "STATE_MAX_AGE", "DashboardSession",
    "current_session", "finish_login", "issue_state", "safe_next", "session_response", "start_login",
    "token_ok", "wecom_login_enabled",
]

COOKIE = "sopbot_dashboard"
NONCE_COOKIE = "sopbot_dashboard_oauth"
CALLBACK_PATH = "/dashboard/oauth/callback"
SESSION_MAX_AGE = timedelta(hours=12)
STATE_MAX_AGE = 600  # seconds: the state (and its browser nonce) are good for 10 minutes
USED_STATE_KEY = "sopbot:dashboard:oauth:used:"
_clock = time.time  # the state's clock (tests move it instead of waiting)


@dataclass(frozen=True)
class DashboardSession:
    by: str  # "token" or "wecom"
    userid: str | None


class LoginError(Exception):
    """OAuth could not finish; the message is shown to the admin (Chinese)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _serializer(services: Services, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(services.settings.secret_key, salt=salt)


def token_ok(services: Services, token: str) -> bool:
    return hmac.compare_digest(token.strip().encode(), services.settings.admin_token.encode())


def wecom_login_enabled(services: Services) -> bool:
    return bool(services.settings.dashboard_admins)


def safe_next(value: str | None) -> str:
    """Only a path inside the dashboard: an open redirect after login would hand the session to anyone."""
    if not value:
        return "/dashboard"
    parts = urlsplit(value)
    if (parts.scheme or parts.netloc or "\\" in value
            or not (parts.path == "/dashboard" or parts.path.startswith("/dashboard/"))
            or parts.path.startswith("/dashboard/oauth/")):
        return "/dashboard"
    return value


def _set_cookie(resp: Response, services: Services, name: str, value: str, max_age: int) -> None:
    secure = is_secure(services)
    resp.set_cookie(name, value, max_age=max_age, path="/dashboard", httponly=True, secure=secure,
                    samesite="Lax")


def session_response(services: Services, target: str, by: str, userid: str | None = None) -> Response:
    """303 to `target` with a fresh dashboard session cookie (the token login and the OAuth callback)."""
    resp = redirect(target, code=303)
    value: dict[str, Any] = {"by": by}
    if userid:
        value["u"] = userid
    _set_cookie(resp, services, COOKIE, _serializer(services, "sopbot-dashboard").dumps(value),
                int(SESSION_MAX_AGE.total_seconds()))
    return resp


def current_session(services: Services) -> DashboardSession | None:
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data: Any = _serializer(services, "sopbot-dashboard").loads(raw, max_age=int(SESSION_MAX_AGE.total_seconds()))
    except BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    if data.get("by") == "token":
        return DashboardSession("token", None)
    userid = data.get("u")
    if data.get("by") == "wecom" and isinstance(userid, str) and userid in services.settings.dashboard_admins:
        return DashboardSession("wecom", userid)
    return None


# -- state ------------------------------------------------------------------------------------------------------


def _mac(services: Services, jti: str, issued: str, nonce: str) -> str:
    message = f"dashboard-oauth|{jti}|{issued}|{nonce}".encode()
    return hmac.new(services.settings.secret_key.encode(), message, hashlib.sha256).hexdigest()[:32]


def issue_state(services: Services, nonce: str, issued_at: float | None = None) -> str:
    """A fresh state for the browser holding `nonce` (tests pass `issued_at` to mint an expired one)."""
    jti = secrets.token_hex(16)
    issued = f"{int(_clock() if issued_at is None else issued_at):08x}"
    return jti + issued + _mac(services, jti, issued, nonce)


def _check_state(services: Services, state: str | None, nonce: str | None) -> str:
    """The state's jti when it is well-formed, signed for this browser's nonce and fresh; else LoginError."""
    refused = LoginError(400, "登录链接无效、已过期或已使用，请回到看板重新点击“企业微信登录”。")
    if not state or not nonce or len(state) != 72 or any(c not in "0123456789abcdef" for c in state):
        raise refused
    jti, issued, mac = state[:32], state[32:40], state[40:]
    if not hmac.compare_digest(mac, _mac(services, jti, issued, nonce)):
        raise refused
    age = _clock() - int(issued, 16)
    if age > STATE_MAX_AGE or age < -60:
        raise refused
    return jti


def _claim(services: Services, jti: str) -> bool:
    """True the first time a state is used (the claim outlives the state, so a replay never succeeds)."""
    return bool(services.redis.set(USED_STATE_KEY + jti, "1", nx=True, ex=STATE_MAX_AGE + 120))


# -- the flow ---------------------------------------------------------------------------------------------------


def start_login(services: Services, next_path: str | None) -> Response:
    """302 to WeCom's authorize page with a signed state bound to a fresh nonce cookie in this browser."""
    nonce = secrets.token_urlsafe(24)
    state = issue_state(services, nonce)
    resp = redirect(authorize_url(services, CALLBACK_PATH, state), code=302)
    cookie = _serializer(services, "dashboard-oauth-nonce").dumps({"n": nonce, "next": safe_next(next_path)})
    _set_cookie(resp, services, NONCE_COOKIE, cookie, STATE_MAX_AGE)
    return resp


def finish_login(services: Services, code: str | None, state: str | None) -> Response:
    """WeCom's redirect back: check the state, trade the code for the userid, admit configured admins only."""
    raw = request.cookies.get(NONCE_COOKIE)
    try:
        bound: Any = _serializer(services, "dashboard-oauth-nonce").loads(raw or "", max_age=STATE_MAX_AGE)
    except BadSignature:
        bound = None
    nonce = str(bound.get("n") or "") if isinstance(bound, dict) else None
    try:
        jti = _check_state(services, state, nonce)
    except LoginError:
        log.warning("dashboard oauth: state refused (forged, expired or from another browser)")
        raise
    if not _claim(services, jti):
        log.warning("dashboard oauth: a used state came back (replay)")
        raise LoginError(400, "这个登录链接已经用过了，请回到看板重新点击“企业微信登录”。")
    if not code:
        raise LoginError(400, "企业微信没有返回授权码，请重新登录。")
    try:
        who = services.wecom.auth_getuserinfo(code)
    except WeComError as exc:
        log.warning("dashboard oauth: getuserinfo failed: %s", exc)
        raise LoginError(400, "企业微信登录失败（授权码无效或已过期），请重新登录。") from exc
    userid = who.get("userid")
    if not userid:
        raise LoginError(403, "数据看板仅供本企业的看板管理员使用。")
    if userid not in services.settings.dashboard_admins:
        log.warning("dashboard oauth: %s is not a dashboard admin", userid)
        raise LoginError(403, f"你的企业微信账号（{userid}）不是数据看板管理员，无权查看。"
                              "如需开通，请联系管理员把你的账号加入 SOPBOT_DASHBOARD_ADMINS。")
    resp = session_response(services, safe_next(str(bound.get("next") or "")), "wecom", str(userid))
    resp.delete_cookie(NONCE_COOKIE, path="/dashboard")
    log.info("dashboard login", extra={"userid": userid})
    return resp
