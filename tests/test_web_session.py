"""The lazy session interface answers exactly as Flask's own signed-cookie session does."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, session
from flask.sessions import SecureCookieSessionInterface

from bot.web.session import LazySessionInterface


def _app(interface: SecureCookieSessionInterface, *, permanent: bool) -> Flask:
    app = Flask(__name__)
    app.secret_key = "test-secret-key-0123456789"
    app.session_interface = interface

    @app.get("/untouched")
    def untouched() -> str:
        return ""

    @app.get("/read")
    def read() -> str:
        return str(session.get("n"))

    @app.get("/write")
    def write() -> str:
        session.permanent = permanent
        session["n"] = 1
        return ""

    @app.get("/clear")
    def clear() -> str:
        session.clear()
        return ""

    return app


def _answer(app: Flask, path: str, cookie: str | None) -> tuple[str, list[str], str | None]:
    client = app.test_client()
    if cookie:
        client.set_cookie("session", cookie)
    resp = client.get(path)
    cookies = [c.split(";")[0] + (";expires" if "Expires=" in c else "") for c in resp.headers.getlist("Set-Cookie")]
    return resp.get_data(as_text=True), cookies, resp.headers.get("Vary")


@pytest.mark.parametrize("permanent", [False, True])
@pytest.mark.parametrize("path", ["/untouched", "/read", "/write", "/clear"])
@pytest.mark.parametrize("with_cookie", [False, True])
def test_same_answers_as_flasks_session(path: str, with_cookie: bool, permanent: bool) -> None:
    flask_app = _app(SecureCookieSessionInterface(), permanent=permanent)
    lazy_app = _app(LazySessionInterface(), permanent=permanent)
    cookie: Any = None
    if with_cookie:  # a session cookie Flask itself set
        _, cookies, _ = _answer(flask_app, "/write", None)
        cookie = cookies[0].split("=", 1)[1].split(";")[0]
    assert _answer(lazy_app, path, cookie) == _answer(flask_app, path, cookie)
    if path == "/write" or (with_cookie and path in ("/clear",)):
        assert _answer(lazy_app, path, cookie)[1]  # the cases that set or delete the cookie did so
    if with_cookie and path == "/read":
        assert _answer(lazy_app, path, cookie)[0] == "1"  # the signed cookie was opened
