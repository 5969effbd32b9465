"""Security headers on every response (docs/SECURITY.md).

One app-wide `after_request` hook. It only fills in headers a view or blueprint has not set itself
(`setdefault`): the sidebar sets its own Content-Security-Policy (it loads scripts and the WeCom JS-SDK),
its long-lived static files set their own Cache-Control. Blueprint hooks run before this one.

The default policy fits the pages without scripts (dashboard, handover brief, login and message pages):
inline `<style>` and inline SVG work, scripts, plugins, frames and foreign origins do not.

One app-wide `before_request` guard: JSON nested thousands deep is a 400 (json.loads raises RecursionError,
which Flask does not turn into a 400), and no text the service keeps may contain NUL (PostgreSQL refuses it in
text columns, so a NUL in an id or a note would be a 500 there and a stored oddity on SQLite). A NUL in the
path, the query or a JSON body is a 400 with a reason before any view runs. /wecom/callback is left to its
own checks (its body is XML and its payload is encrypted).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

__all__ = ["DEFAULT_CSP", "init_security", "refuse_nul", "set_security_headers"]

DEFAULT_CSP = (
    "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


# (header, value, lower-cased name); the last two apply only when unset and over HTTPS respectively.
_DEFAULTS = tuple((name, value, name.lower()) for name, value in (
    ("Content-Security-Policy", DEFAULT_CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
    # Pages and API answers carry customer data or session state: no shared or back-forward cache.
    ("Cache-Control", "no-store"),
))
_HSTS = ("Strict-Transport-Security", "max-age=31536000", "strict-transport-security")


def set_security_headers(resp: Response, *, https: bool = False) -> Response:
    """Add each default header the response does not carry yet (one pass over its headers, not one per name:
    this runs on every response, the callback's included)."""
    headers = resp.headers
    present = {name.lower() for name in headers.keys()}
    for name, value, lower in (*_DEFAULTS, _HSTS) if https else _DEFAULTS:
        if lower not in present:
            headers.add(name, value)
    return resp


MAX_JSON_DEPTH = 64  # no request of ours nests beyond ~5; deep documents only stress the recursive encoders


def _has_nul(value: Any) -> bool:
    return isinstance(value, str) and "\x00" in value


def _json_problem(value: Any) -> str | None:
    """'nul' or 'deep' for the first problem in a parsed JSON document, else None (iterative walk)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return "deep"
        if isinstance(item, dict):
            if any(_has_nul(k) for k in item):
                return "nul"
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif _has_nul(item):
            return "nul"
    return None


DEEP = ("JSON nested too deeply", "JSON 嵌套层数过多，请检查请求内容。")


def refuse_nul() -> ResponseReturnValue | None:
    """400 for a NUL character in the path, the query string or a JSON body, or for a JSON body nested too
    deeply; None to go on."""
    if request.path.startswith("/wecom/"):
        return None
    problem = "nul" if "\x00" in request.path or any(
        _has_nul(k) or _has_nul(v) for k, v in request.args.items(multi=True)) else None
    if problem is None and request.is_json:
        try:
            problem = _json_problem(request.get_json(silent=True))
        except RecursionError:  # json.loads raises it (not a ValueError) for thousands of nested [ or {
            problem = "deep"
    if problem is None:
        return None
    if problem == "deep":
        return _refuse(*DEEP)
    return _refuse("NUL characters are not accepted in paths, query strings or JSON bodies",
                   "请求中含有不允许的空字符（NUL），请检查后重试。")


def _refuse(english: str, chinese: str) -> ResponseReturnValue:
    """400 in the caller's language: English JSON on the admin API, Chinese elsewhere (employees)."""
    if request.path.startswith("/api/"):
        return jsonify(error=english), 400
    if request.path.startswith("/sidebar/api/"):
        return jsonify(error=chinese), 400
    return Response(chinese, status=400, mimetype="text/plain")


def init_security(app: Flask) -> None:
    from bot import get_services

    app.before_request(refuse_nul)

    @app.after_request
    def _security_headers(resp: Response) -> Response:
        https = request.is_secure or get_services().settings.public_url.startswith("https://")
        return set_security_headers(resp, https=https)
