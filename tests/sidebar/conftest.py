"""Sidebar fixtures: OAuth login through the simulator, a live server of the app, headless Chromium.

Browser tests drive Debian's Chromium (/usr/bin/chromium, `apt-get install chromium`) through the
`playwright` package — never `playwright install`, which downloads a browser build. Without Chromium
they fail under CI=true and are skipped with a loud message elsewhere.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from werkzeug.serving import make_server

from bot.db import utcnow
from bot.models import Customer
from bot.services import Services
from bot.sop.models import SopEnrollment, SopTask
from tests.conftest import SimHarness, run_worker

# The authorize page is WeCom's; API tests only read the redirect, browser tests use AuthorizeStandIn.
AUTHORIZE_STANDIN = "http://wecom-authorize.test/connect/oauth2/authorize"
DOCS = Path(__file__).resolve().parents[2] / "docs"


EMPLOYEES = {"WangFang": "王芳", "ZhaoLei": "赵磊", "LiMing": "李明"}


def seed_employees(services: Services) -> None:
    """The local employee mirror (the contact sync's job) for the names shown in the sidebar."""
    from bot.actions import UpsertEmployee
    from bot.apply import apply

    with services.transaction() as s:
        apply([UpsertEmployee(u, {"name": n}) for u, n in EMPLOYEES.items()], s, context_key="test:employees")


def add_customer(services: Services, sim: SimHarness, userid: str = "WangFang", name: str = "周杰",
                 state: str = "webinar") -> str:
    seed_employees(services)
    ext = str(sim.control("actions/add_customer", {"userid": userid, "name": name, "state": state})["external_userid"])
    run_worker(services)
    return ext


def add_task(services: Services, ext: str, owner: str, script_id: str, *, step_id: str = "d7",
             overdue: bool = False) -> int:
    """An open SOP task as the SOP area's planner would leave it (their table, our fixture)."""
    now = utcnow()
    with services.transaction() as s:
        customer = s.query(Customer).filter_by(external_userid=ext).one()
        enrollment = SopEnrollment(sop_id=f"sidebar_test_{step_id}", customer_id=customer.id, external_userid=ext,
                                   rotation=1, owner_userid=owner, started_at=now - timedelta(days=7), state="active")
        s.add(enrollment)
        s.flush()
        task = SopTask(enrollment_id=enrollment.id, sop_id=enrollment.sop_id, step_id=step_id, step_index=3,
                       customer_id=customer.id, external_userid=ext, owner_userid=owner, script_id=script_id,
                       touchpoint="chat", planned_at=now - timedelta(hours=2), due_at=now - timedelta(hours=1),
                       state="overdue" if overdue else "due")
        s.add(task)
        s.flush()
        return int(task.id)


def login(client: Any, sim: SimHarness, userid: str, path: str = "/sidebar/") -> Any:
    """The OAuth round trip with the Flask test client; returns the final redirect response."""
    client.delete_cookie("sopbot_sidebar", path="/sidebar")
    start = client.get(path)
    assert start.status_code == 302, start.data
    query = parse_qs(urlsplit(start.headers["Location"]).query)
    code = sim.control("actions/oauth_code", {"userid": userid})["code"]
    return client.get("/sidebar/oauth/callback", query_string={"code": code, "state": query["state"][0]})


def csrf_of(client: Any) -> str:
    import json
    import re

    page = client.get("/sidebar/tasks").get_data(as_text=True)
    match = re.search(r'<script type="application/json" id="boot">(.*?)</script>', page, re.S)
    assert match, page
    return str(json.loads(match.group(1))["csrf"])


@pytest.fixture
def sidebar_settings(services: Services) -> Callable[..., None]:
    """Override settings on the live Services (every sidebar view reads them per request)."""
    def apply(**changes: Any) -> None:
        extra = dict(services.settings.extra)
        extra.update(changes.pop("extra", {}))
        services.settings = services.settings.with_overrides(extra=extra, **changes)
    apply(extra={"SOPBOT_OAUTH_AUTHORIZE_URL": AUTHORIZE_STANDIN})
    return apply


class AuthorizeStandIn:
    """WeCom's authorize page on its own port: redirects back with a simulator-issued code for `userid`.

    (Playwright's request routing does not see redirected requests, so the stand-in is a real server.)
    """

    def __init__(self, sim: SimHarness) -> None:
        self.sim, self.userid = sim, "WangFang"
        self.seen: list[dict[str, str]] = []
        self.server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.url = f"http://127.0.0.1:{self.server.port}/connect/oauth2/authorize"

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        self.seen.append(q)
        code = self.sim.control("actions/oauth_code", {"userid": self.userid})["code"]
        start_response("302 Found", [("Location", q["redirect_uri"] + "?" + urlencode({"code": code,
                                                                                      "state": q["state"]}))])
        return [b""]


@pytest.fixture
def live_server(app: Any, services: Services, sim: SimHarness,
                sidebar_settings: Callable[..., None]) -> Iterator[tuple[str, AuthorizeStandIn]]:
    """The app built from the test services, served on 127.0.0.1:<random port> in a thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="sidebar-live", daemon=True)
    authorize = AuthorizeStandIn(sim)
    thread.start()
    authorize.thread.start()
    base = f"http://127.0.0.1:{server.port}"
    sidebar_settings(public_url=base, extra={"SOPBOT_OAUTH_AUTHORIZE_URL": authorize.url})
    try:
        yield base, authorize
    finally:
        for srv, th in ((server, thread), (authorize.server, authorize.thread)):
            srv.shutdown()
            srv.server_close()
            th.join(timeout=5)


# A stand-in for WeCom's injected `wx`: answers the handshake and the context calls like the client does,
# and records every call so tests can check the signatures and what would have been sent.
WX_STANDIN = """
(() => {
  const ctx = %(ctx)s;
  const calls = [];
  window.__wxCalls = calls;
  const ok = (name, extra) => Object.assign({err_msg: name + ':ok'}, extra || {});
  let readyCb = null;
  window.wx = {
    config(cfg) { calls.push({name: 'config', args: cfg}); },
    ready(cb) { readyCb = cb; setTimeout(() => readyCb(), 0); },
    error(cb) {},
    agentConfig(cfg) {
      calls.push({name: 'agentConfig', args: Object.assign({}, cfg, {success: undefined, fail: undefined})});
      setTimeout(() => (cfg.signature ? cfg.success({errMsg: 'agentConfig:ok'}) : cfg.fail({errMsg: 'no sig'})), 0);
    },
    invoke(name, args, cb) {
      calls.push({name, args});
      let res;
      if (name === 'getContext') res = ok(name, {entry: ctx.entry});
      else if (name === 'getCurExternalContact') res = ok(name, {userId: ctx.userId});
      else if (name === 'getCurExternalChat') res = ok(name, {chatId: ctx.chatId});
      else if (name === 'sendChatMessage') res = ok(name);
      else res = {err_msg: name + ':fail unsupported in stand-in'};
      setTimeout(() => cb(res), 0);
    },
  };
})();
"""


@pytest.fixture
def open_sidebar(chromium: Any, live_server: tuple[str, AuthorizeStandIn]) -> Iterator[Callable[..., Any]]:
    """open_sidebar(userid, external_userid) -> a Playwright page on /sidebar/ in a phone-sized viewport."""
    import json

    base, authorize = live_server
    contexts: list[Any] = []

    def open_(userid: str, external_userid: str | None = None, *, entry: str = "single_chat_tools",
              chat_id: str | None = None, path: str = "/sidebar/") -> Any:
        authorize.userid = userid  # who is logged in to WeCom on this "phone"
        context = chromium.new_context(viewport={"width": 390, "height": 780}, device_scale_factor=2,
                                       is_mobile=True, has_touch=True, locale="zh-CN")
        contexts.append(context)
        ctx = {"entry": entry, "userId": external_userid, "chatId": chat_id}
        context.add_init_script(WX_STANDIN % {"ctx": json.dumps(ctx)})
        page = context.new_page()
        page.goto(base + path)
        return page

    yield open_
    for context in contexts:
        context.close()
