"""GET|POST /wecom/callback: verify, decrypt, parse, record in the inbox, enqueue, answer.

The view does nothing else (style rule 1): WeCom waits 5 s and retries three times, so no
WeCom API call, rule evaluation or rendering happens in the request. The inbox row is
committed before the 200; if Redis is down the 200 still goes out and the sweeper
enqueues the row later. The enqueue does not wait for Redis's answer (`bot.queues.send_event`:
it is read at the process's next delivery). A database failure answers 503 so WeCom retries.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager, nullcontext, suppress
from functools import lru_cache
from typing import Any, cast

from flask import Blueprint, Response, request
from redis.exceptions import RedisError
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from bot import get_services
from bot.db import SqliteWriterLock, dispose_if_forked, make_engine, utcnow
from bot.events import EventParseError, dedupe_key, event_key_of, parse_xml
from bot.models import InboxEvent
from bot.observability import CALLBACKS
from bot.queues import send_event
from bot.wecom.crypto import CryptoError, SignatureError

log = logging.getLogger("sopbot.callback")

callback_bp = Blueprint("wecom_callback", __name__)

__all__ = ["callback_bp"]


_ROW_KEYS = ("corp_id", "dedupe_key", "event_key", "payload", "received_at", "status", "attempts")


class _InboxInsert:
    """INSERT … ON CONFLICT (dedupe_key) DO NOTHING RETURNING id: a retry of a recorded event yields None.

    SQLAlchemy compiles the statement for the engine's dialect and the columns' own types bind the values
    (JSON, aware UTC datetimes); only its execution layer is skipped, the statement running on a pooled DBAPI
    connection. That layer was two thirds of the insert's cost on SQLite (0.16 -> 0.05 ms CPU per row), and
    this insert runs on every delivery. The connection is in autocommit mode, so the one statement is its own
    transaction, committed (durably: PostgreSQL's synchronous_commit as configured) when it completes.
    `tests/test_callback.py` checks the row equals the one SQLAlchemy's ORM writes.

    On PostgreSQL it runs on a pool of its own, in autocommit and without the shared pool's pre-ping: that was
    four round trips per callback (ping, BEGIN, INSERT, COMMIT), now one. A connection the server dropped (a
    restart) is noticed by the insert itself, which retries once on a fresh connection.
    """

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        if dialect.name == "postgresql":
            engine = make_engine(engine.url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT",
                                 pool_pre_ping=False, pool_size=engine.pool.size())  # type: ignore[attr-defined]
        self.engine = engine
        table = InboxEvent.__table__
        module: Any = postgresql if dialect.name == "postgresql" else sqlite
        stmt = module.insert(table).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(table.c.id)
        compiled = stmt.compile(dialect=dialect, column_keys=list(_ROW_KEYS))
        self.sql = str(compiled)
        self.order: list[str] | None = list(compiled.positiontup) if compiled.positiontup else None
        self.binds = {key: table.c[key].type.dialect_impl(dialect).bind_processor(dialect) for key in _ROW_KEYS}
        self.dbapi_error: type[BaseException] = dialect.loaded_dbapi.Error
        self.errors: tuple[type[BaseException], ...] = (SQLAlchemyError, self.dbapi_error)
        # SQLite has one writer at a time and a waiting connection sleeps 1, 2, 5, 10 … ms between tries; the web
        # server's processes and threads queue on this lock instead, woken the moment it is free.
        self.lock: AbstractContextManager[Any] = (
            SqliteWriterLock(engine.url.database) if dialect.name == "sqlite" else nullcontext())
        self.connections = _KeptConnections(engine)

    def __call__(self, row: dict[str, Any]) -> int | None:
        values = {key: (bind(value) if (bind := self.binds[key]) else value) for key, value in row.items()}
        params: Any = [values[key] for key in self.order] if self.order is not None else values
        return self._insert(params, retry_dropped=True)

    def _insert(self, params: Any, *, retry_dropped: bool) -> int | None:
        with self.lock:  # on SQLite one insert at a time per database, so one kept connection serves the process
            dbapi = self.connections.take()
            try:
                cursor = dbapi.cursor()
                cursor.execute(self.sql, params)
                found = cursor.fetchall()  # to the end: an autocommit statement commits when it completes
                cursor.close()
            except BaseException as exc:
                dropped = isinstance(exc, self.dbapi_error) and self.engine.dialect.is_disconnect(
                    cast(Any, exc), dbapi, None)
                self.connections.discard(dbapi)  # rare; a fresh connection is cheaper than wondering about this one
                if not (dropped and retry_dropped):
                    raise
            else:
                self.connections.give(dbapi)
                return int(found[0][0]) if found else None
        # The server dropped that connection (a restart): once more on a fresh one. Had the first run committed,
        # the unique key makes this one a no-op, answered as a duplicate; the sweeper enqueues the row.
        return self._insert(params, retry_dropped=False)


class _KeptConnections:
    """The DBAPI connections the insert keeps, per process, instead of a pool checkout and check-in per callback.

    Each is made by the engine's pool (so its connect hooks ran: SQLite's WAL and busy timeout) and then detached
    from it; as many are kept as inserts ever ran at once in the process: one on SQLite (its inserts take the
    writer lock first), on PostgreSQL at most one per web server thread. One that failed is closed, not kept. A
    forked child makes its own and keeps the parent's referenced, never closed (closing a PostgreSQL connection
    there would end the parent's session). The checkout and check-in (with its rollback) were about 7 % of a
    callback's CPU.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.free: list[Any] = []
        self.pid = os.getpid()
        self.inherited: list[Any] = []

    def take(self) -> Any:
        if self.pid != os.getpid():
            self.inherited.extend(self.free)
            self.free, self.pid = [], os.getpid()
        try:
            return self.free.pop()
        except IndexError:
            dispose_if_forked(self.engine)  # an engine made before a fork (gunicorn --preload): not its pool's
            fairy = self.engine.raw_connection()
            fairy.detach()  # ours now; the pool's slot is free again
            return fairy.dbapi_connection

    def give(self, dbapi: Any) -> None:
        if self.pid == os.getpid():
            self.free.append(dbapi)

    def discard(self, dbapi: Any) -> None:
        with suppress(Exception):
            dbapi.close()


@lru_cache(maxsize=4)
def _inbox_insert(engine: Engine) -> _InboxInsert:
    return _InboxInsert(engine)


def _refuse(status: int, reason: str, result: str) -> Response:
    # The reason is logged (never the key or the payload) and told to the caller in plain text.
    log.warning("callback refused: %s", reason, extra={"status": status, "result": result})
    CALLBACKS.labels(result=result).inc()
    return Response(reason, status=status, mimetype="text/plain")


def _signed_params() -> tuple[str, str, str] | None:
    sig, ts, nonce = (request.args.get(k, "") for k in ("msg_signature", "timestamp", "nonce"))
    if not sig or not ts or not nonce:
        return None
    return sig, ts, nonce


@callback_bp.get("/wecom/callback")
def verify_url() -> Response:
    """URL verification (验证URL有效性): answer the decrypted echostr as the bare body."""
    params = _signed_params()
    echostr = request.args.get("echostr", "")
    if params is None or not echostr:
        return _refuse(403, "missing msg_signature, timestamp, nonce or echostr", "forbidden")
    crypto = get_services().crypto
    try:
        plain = crypto.verify_and_decrypt(*params, echostr)
    except SignatureError:
        return _refuse(403, "bad msg_signature", "forbidden")
    except CryptoError as exc:
        return _refuse(400, f"echostr does not decrypt: {exc}", "bad_request")
    CALLBACKS.labels(result="verified").inc()
    return Response(plain, status=200, mimetype="text/plain")


@callback_bp.post("/wecom/callback")
def receive() -> Response:
    """Deliveries (接收事件): record once, enqueue, answer 200 with an empty body."""
    params = _signed_params()
    if params is None:
        return _refuse(403, "missing msg_signature, timestamp or nonce", "forbidden")
    body = request.get_data(cache=False)  # raw bytes: WeCom's Content-Type is not to be trusted
    if not body:
        return _refuse(400, "empty body", "bad_request")
    services = get_services()
    try:
        outer = parse_xml(body)
    except EventParseError as exc:
        return _refuse(400, f"body is not WeCom XML: {exc}", "bad_request")
    encrypt = outer.get("Encrypt")
    if not isinstance(encrypt, str) or not encrypt:
        return _refuse(400, "no <Encrypt> element", "bad_request")
    try:
        plain = services.crypto.verify_and_decrypt(*params, encrypt)
    except SignatureError:
        return _refuse(403, "bad msg_signature", "forbidden")
    except CryptoError as exc:
        return _refuse(400, f"payload does not decrypt: {exc}", "bad_request")
    try:
        fields = parse_xml(plain)
    except EventParseError as exc:
        return _refuse(400, f"decrypted payload is not WeCom XML: {exc}", "bad_request")

    corp_id = services.settings.corp_id
    row = {"corp_id": corp_id, "dedupe_key": dedupe_key(corp_id, fields), "event_key": event_key_of(fields),
           "payload": fields, "received_at": utcnow(), "status": "pending", "attempts": 0}
    insert = _inbox_insert(services.engine)
    try:
        inbox_id = insert(row)
    except insert.errors as exc:
        log.error("inbox write failed; answering 503 so WeCom retries: %s", type(exc).__name__)
        CALLBACKS.labels(result="db_error").inc()
        return Response("temporarily unavailable", status=503, mimetype="text/plain")

    if inbox_id is None:
        CALLBACKS.labels(result="duplicate").inc()
        return Response("", status=200)
    try:
        send_event(services.redis, inbox_id)  # Redis's answer is read at this process's next delivery
        CALLBACKS.labels(result="accepted").inc()
    except RedisError as exc:
        # Recorded already: the sweeper enqueues it once Redis is back. WeCom must not retry.
        log.warning("enqueue failed, left for the sweeper: %s", type(exc).__name__, extra={"inbox_id": inbox_id})
        CALLBACKS.labels(result="accepted_unqueued").inc()
    return Response("", status=200)
