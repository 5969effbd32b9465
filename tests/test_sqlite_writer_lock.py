"""The SQLite writer lock: one holder across processes and threads, a forked child its own, nothing lost."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.db import SqliteWriterLock, make_engine
from bot.migrate import upgrade
from bot.models import InboxEvent

ROOT = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent("""
    import sys
    from bot.db import SqliteWriterLock
    lock = SqliteWriterLock(sys.argv[1])
    with lock:
        print("held", flush=True)
        sys.stdin.readline()
    print("released", flush=True)
""")


def test_a_process_holding_the_lock_keeps_another_waiting_until_it_lets_go(tmp_path: Path) -> None:
    database = str(tmp_path / "a.db")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, database], cwd=ROOT, text=True,  # noqa: S603
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = SqliteWriterLock(database)
        taken = threading.Event()

        def take() -> None:
            with lock:
                taken.set()

        waiter = threading.Thread(target=take, daemon=True)
        waiter.start()
        assert not taken.wait(0.5)  # a lock that let both in would be taken at once
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert taken.wait(30)
        waiter.join(30)
        assert holder.stdout.readline().strip() == "released"
    finally:
        holder.kill()
        holder.wait()


def test_threads_of_one_process_take_it_one_at_a_time(tmp_path: Path) -> None:
    lock = SqliteWriterLock(str(tmp_path / "b.db"))
    inside, most = 0, 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(200):
            with lock:
                with guard:
                    inside += 1
                    most = max(most, inside)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (inside, most) == (0, 1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_forked_child_does_not_share_its_parents_lock(tmp_path: Path) -> None:
    lock = SqliteWriterLock(str(tmp_path / "c.db"))
    read, write = os.pipe()
    with lock:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                fd = lock._descriptor()  # noqa: SLF001 - the child's own descriptor
                try:
                    assert fd is not None
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    code = 2  # it got in while the parent holds it: the lock was shared
                except BlockingIOError:
                    code = 0
            finally:
                os.write(write, bytes([code]))
                os._exit(0)
        os.close(write)
        answer = os.read(read, 1)
        os.waitpid(pid, 0)
    os.close(read)
    assert answer == b"\x00"


def test_a_database_in_memory_is_locked_between_threads_only() -> None:
    lock = SqliteWriterLock(":memory:")
    with lock:
        assert lock.fd is None
    assert not lock.thread_lock.locked()


INSERTER = textwrap.dedent("""
    import sys
    from bot.db import make_engine, utcnow
    from bot.wecom.callback import _inbox_insert
    engine = make_engine(sys.argv[1])
    insert = _inbox_insert(engine)
    for i in range(int(sys.argv[3])):
        row = {"corp_id": "ww1", "dedupe_key": f"{sys.argv[2]}-{i}", "event_key": "change_external_contact",
               "payload": {"n": i}, "received_at": utcnow(), "status": "pending", "attempts": 0}
        assert insert(row) is not None
""")


def test_two_processes_recording_callbacks_at_once_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    upgrade(url)
    procs = [subprocess.Popen([sys.executable, "-c", INSERTER, url, name, "300"], cwd=ROOT)  # noqa: S603
             for name in ("a", "b")]
    assert [p.wait(120) for p in procs] == [0, 0]
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(InboxEvent)).scalar_one() == 600
    engine.dispose()
