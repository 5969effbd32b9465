"""Flask's signed-cookie session, opened lazily.

Flask builds the itsdangerous signer on every request before it looks for the cookie; for requests that carry
no session cookie (every WeCom callback, every admin API call) that was ~6 % of the callback's CPU. Same cookie,
same signing, same behaviour otherwise.
"""

from __future__ import annotations

from flask import Flask, Request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

__all__ = ["LazySessionInterface"]


class LazySessionInterface(SecureCookieSessionInterface):
    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not app.secret_key or request.cookies.get(self.get_cookie_name(app)):
            return super().open_session(app, request)
        return self.session_class()
