"""Flask's signed-cookie session, opened and saved lazily.

Flask builds the itsdangerous signer on every request before it looks for the cookie, and reads seven cookie
settings on every response before it looks at the session; for requests that carry no session cookie and leave
the session alone (every WeCom callback, every admin API call) that was ~8 % of the callback's CPU. Same cookie,
same signing, same behaviour otherwise.
"""

from __future__ import annotations

from flask import Flask, Request, Response
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin

__all__ = ["LazySessionInterface"]


class LazySessionInterface(SecureCookieSessionInterface):
    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not app.secret_key or ("HTTP_COOKIE" in request.environ
                                  and request.cookies.get(self.get_cookie_name(app))):
            return super().open_session(app, request)
        return self.session_class()

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        # Empty, never read and never written: Flask's own save would add no header and set no cookie.
        if not session and not session.accessed and not session.modified:
            return
        super().save_session(app, session, response)
