"""Real `sopbot worker` / `sopbot scheduler` processes, and a killer that SIGKILLs workers under load.

Shared by tests/test_worker_crash.py (scaled down) and bench/reliability.py (heavy runs).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import redis
from rq import Worker

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ProcessPool", "Killer", "ROOT", "wait_for"]


class ProcessPool:
    """`n` worker processes (plus optionally one scheduler) with the given environment; output to `log`."""

    def __init__(self, env: dict[str, str], workers: int, log: Path, *, scheduler_interval: float | None = None
                 ) -> None:
        self.env = {**os.environ, **env}
        self.size = workers
        self.log_path = log
        self._log: IO[bytes] = log.open("ab")
        self.workers: list[subprocess.Popen[bytes]] = []
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.scheduler_interval = scheduler_interval
        self.started = 0
        self.lock = threading.Lock()

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "bot.cli", *args], env=self.env, cwd=ROOT,  # noqa: S603
                                stdout=self._log, stderr=subprocess.STDOUT)

    def start(self) -> ProcessPool:
        with self.lock:
            while len(self.workers) < self.size:
                self.workers.append(self._spawn("worker"))
                self.started += 1
        if self.scheduler_interval is not None:
            self.scheduler = self._spawn("scheduler", "--interval", str(self.scheduler_interval))
        return self

    def ready_pids(self, conn: redis.Redis) -> set[int]:
        """Pids of our live workers that rq lists as registered (imports done, listening on the queues)."""
        registered = {w.pid for w in Worker.all(connection=conn)}
        with self.lock:
            return {p.pid for p in self.workers if p.pid in registered and p.poll() is None}

    def kill_one(self, rng: random.Random, among: set[int]) -> int | None:
        """SIGKILL a random ready worker (no clean shutdown, no rq bookkeeping) and start its replacement."""
        with self.lock:
            candidates = [p for p in self.workers if p.pid in among and p.poll() is None]
            if not candidates:
                return None
            victim = candidates[rng.randrange(len(candidates))]
            self.workers.remove(victim)
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
            self.workers.append(self._spawn("worker"))
            self.started += 1
            return victim.pid

    def respawn_exited(self) -> int:
        """Replace workers that ended on their own (as a process supervisor would); returns how many."""
        with self.lock:
            dead = [p for p in self.workers if p.poll() is not None]
            for p in dead:
                self.workers.remove(p)
                self.workers.append(self._spawn("worker"))
                self.started += 1
            return len(dead)

    def unexpected_exits(self) -> list[int]:
        """Return codes of workers (or the scheduler) that ended on their own: a crash we did not inject."""
        with self.lock:
            procs = [*self.workers, *([self.scheduler] if self.scheduler else [])]
            return [code for p in procs if (code := p.poll()) is not None]

    def stop(self) -> None:
        with self.lock:
            procs = [*self.workers, *([self.scheduler] if self.scheduler else [])]
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=15)
            self.workers.clear()
            self.scheduler = None
        self._log.close()


class Killer(threading.Thread):
    """SIGKILLs a random *ready* worker every `low`..`high` seconds (and starts a replacement), up to `limit`.

    Only registered workers are victims: killing a process still importing proves nothing (and under load
    start-up can take longer than the kill interval).
    """

    def __init__(self, pool: ProcessPool, conn: redis.Redis, seed: int, *, low: float = 0.3, high: float = 1.0,
                 limit: int | None = None) -> None:
        super().__init__(name="worker-killer", daemon=True)
        self.pool, self.conn, self.rng, self.low, self.high = pool, conn, random.Random(seed), low, high  # noqa: S311
        self.limit = limit
        self.kills = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while self.limit is None or self.kills < self.limit:
            if self.halt.wait(self.rng.uniform(self.low, self.high)):  # the injection rate, not a wait-for
                return
            ready = self.pool.ready_pids(self.conn)
            while not ready:  # every worker is still starting: wait for one to come up, then count the gap
                if self.halt.wait(0.1):
                    return
                ready = self.pool.ready_pids(self.conn)
            if self.pool.kill_one(self.rng, ready) is not None:
                self.kills += 1

    def stop(self) -> int:
        self.halt.set()
        self.join(timeout=60)
        return self.kills


def wait_for(condition: Callable[[], object], deadline: float, what: str, step: float = 0.2) -> None:
    """Poll `condition()` until true or `deadline` (time.monotonic()) passes, then raise naming `what`."""
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)
