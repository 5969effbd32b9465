"""Engine and session factory: the same code on SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

__all__ = ["Base", "SqliteWriterLock", "UTCDateTime", "make_engine", "make_session_factory", "rowcount",
           "session_scope", "utcnow"]

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, whatever the backend keeps.

    SQLite has no time zone type and hands back naive values; storing UTC and
    re-attaching it on the way out keeps every datetime in the code aware (rule 7).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the web process read while a worker writes; busy_timeout makes writers queue
    # instead of failing at once when several processes share the file (sopbot dev).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=15000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # pysqlite's implicit transactions start late; BEGIN IMMEDIATE takes the write lock up
    # front so two workers claiming the same row serialise instead of failing on upgrade.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 15, "isolation_level": None}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return _born(engine)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    return _born(create_engine(url, **kwargs))


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


_PID_ENGINES: dict[int, int] = {}


def _born(engine: Engine) -> Engine:
    """Record the process an engine was made in, so that `dispose_if_forked` knows it in a forked child even if
    the parent never used it."""
    _PID_ENGINES[id(engine)] = os.getpid()
    return engine


def dispose_if_forked(engine: Engine) -> None:
    """After a fork, drop inherited pooled connections without closing the parent's."""
    pid = os.getpid()
    if _PID_ENGINES.get(id(engine)) not in (None, pid):
        engine.dispose(close=False)
    _PID_ENGINES[id(engine)] = pid


class SqliteWriterLock:
    """One writer at a time across the processes and threads that take it, for one SQLite database file.

    SQLite lets one connection write at a time; a connection that finds the write lock taken sleeps in its busy
    handler, 1 ms at first, then 2, 5, 10 … ms, and retries. Two web server processes recording callbacks collide
    on it often (each insert holds it ~0.1 ms, ~1,000 times a second), and each collision parked a worker for a
    millisecond or more with its core idle (a fifth of the CPU idle while callbacks queued). Taking this lock
    first makes the second writer wait in the kernel and wake the moment the first is done. It is an advisory
    `flock` on `<database>-writer.lock` (not the database file: closing a descriptor of that file would drop
    SQLite's own POSIX locks), opened once per process: a descriptor inherited across fork() shares the parent's
    lock, so a forked child opens its own. Threads of a process queue on a threading lock first (a flock is held
    per open file, not per thread). Writers that do not take it (workers) are still serialised by SQLite itself;
    if the lock file cannot be opened, only the threading lock is used.
    """

    def __init__(self, database: str | None) -> None:
        self.path = f"{database}-writer.lock" if database and database != ":memory:" else None
        self.thread_lock = threading.Lock()
        self.fd: int | None = None
        self.pid = 0

    def _descriptor(self) -> int | None:
        if self.path is None:
            return None
        if self.pid != os.getpid():
            self.fd, self.pid = None, os.getpid()  # the parent's descriptor is the parent's lock: leave it
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                log.warning("no writer lock file %s (%s): SQLite's busy handler serialises writers", self.path, exc)
        return self.fd

    def __enter__(self) -> None:
        self.thread_lock.acquire()
        try:
            fd = self._descriptor()
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            self.thread_lock.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            if self.fd is not None and self.pid == os.getpid():
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.thread_lock.release()


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


def rowcount(result: Any) -> int:
    """Rows matched by an UPDATE/DELETE (SQLAlchemy types execute() as Result; it is a CursorResult)."""
    return int(getattr(result, "rowcount", 0) or 0)
