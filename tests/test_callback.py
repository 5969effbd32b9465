"""The callback gateway through the real crypto: verify, record once, enqueue, answer; refuse bad input."""

from __future__ import annotations

import gc
import threading
from typing import Any
from urllib.parse import parse_qs

import pytest
from sqlalchemy import func, select, text

from bot.db import utcnow
from bot.models import InboxEvent
from bot.queues import get_queue
from bot.services import Services
from bot.wecom.callback import _inbox_insert, _InboxInsert
from tests import wecom_reference
from tests.conftest import VECTORS, fixture_xml, in_forked_child, post_event, vector_params

ADD = "change_external_contact__add_external_contact"


def _inbox_count(services: Services) -> int:
    with services.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(InboxEvent)) or 0)


def test_get_answers_the_bare_decrypted_echostr(client: Any) -> None:
    vector = next(v for v in VECTORS["vectors"] if v["id"] == "url_verification_echostr")
    resp = client.get("/wecom/callback?" + vector["http"]["query_string"])
    assert resp.status_code == 200
    assert resp.data == vector["expected_http_response_body"].encode()  # no quotes, BOM or newline


def test_get_with_bad_signature_is_403(client: Any) -> None:
    vector = next(v for v in VECTORS["vectors"] if v["id"] == "url_verification_echostr")
    q = {k: v[0] for k, v in parse_qs(vector["http"]["query_string"]).items()}
    q["msg_signature"] = "0" * 40
    assert client.get("/wecom/callback", query_string=q).status_code == 403


def test_recorded_vector_post_is_accepted(client: Any, services: Services) -> None:
    vector = next(v for v in VECTORS["vectors"] if v["id"] == "event_add_external_contact")
    q = {k: v[0] for k, v in parse_qs(vector["http"]["query_string"]).items()}
    resp = client.post("/wecom/callback", query_string=q, data=vector["http"]["body"].encode())
    assert (resp.status_code, resp.data) == (200, b"")
    assert _inbox_count(services) == 1


def test_post_records_enqueues_and_answers_empty_200(client: Any, services: Services) -> None:
    resp = post_event(client, fixture_xml(ADD))
    assert resp.status_code == 200 and resp.data == b""
    with services.transaction() as s:
        row = s.scalars(select(InboxEvent)).one()
        assert row.event_key == "change_external_contact:add_external_contact"
        assert row.status == "pending"
        assert row.payload["ExternalUserID"] == "wmQ8xTCwAAb3fFp0Yk2nHs9LdE7uVr1w"
    queue = get_queue(services.redis, "default")
    assert queue.job_ids == [f"event-{row.id}"]


def test_retries_of_the_same_event_record_once_and_enqueue_nothing(client: Any, services: Services) -> None:
    xml = fixture_xml(ADD)
    # WeCom retries the same plaintext; the random prefix and nonce may differ on each delivery.
    for nonce in ("1", "2", "3", "4"):
        assert post_event(client, xml, nonce=nonce).status_code == 200
    assert _inbox_count(services) == 1
    assert get_queue(services.redis, "default").count == 1


def test_same_second_events_for_different_customers_are_not_deduplicated(client: Any, services: Services) -> None:
    xml = fixture_xml(ADD)
    other = xml.replace("wmQ8xTCwAAb3fFp0Yk2nHs9LdE7uVr1w", "wmQ8xTCwAAz9zZ9zZ9zZ9zZ9zZ9zZ9zZ9zZ")
    assert post_event(client, xml).status_code == 200
    assert post_event(client, other).status_code == 200
    assert _inbox_count(services) == 2


def test_redis_down_still_records_and_answers_200(client: Any, services: Services, monkeypatch: Any) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    def refuse(*_: Any, **__: Any) -> None:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr("bot.wecom.callback.send_event", refuse)
    resp = post_event(client, fixture_xml(ADD))
    assert (resp.status_code, resp.data) == (200, b"")
    assert _inbox_count(services) == 1


@pytest.mark.parametrize("layer", ["pool", "driver", "dropped"])
def test_database_down_answers_503_so_wecom_retries(client: Any, services: Services, monkeypatch: Any,
                                                    layer: str) -> None:
    from sqlalchemy.exc import OperationalError

    driver_error = services.engine.dialect.loaded_dbapi.OperationalError
    insert = _inbox_insert(services.engine)
    engine = insert.engine  # on PostgreSQL the insert's own pool

    def broken(*_: Any, **__: Any) -> None:
        if layer == "pool":  # no connection to be had
            raise OperationalError("connect", {}, Exception("database is gone"))
        raise driver_error("database is gone")  # the statement itself fails

    made: list[Any] = []
    if layer == "pool":
        assert insert.connections.free == []  # so the insert asks the pool
        monkeypatch.setattr(engine, "raw_connection", broken)
    else:
        class Failing:  # a DBAPI connection whose statements fail
            closed = False
            broken = False  # psycopg's flag, read by SQLAlchemy's is_disconnect

            def cursor(self) -> Any:
                return type("C", (), {"execute": broken, "close": lambda _self: None})()

            def close(self) -> None:
                self.closed = True

        def failing() -> Failing:
            made.append(Failing())
            return made[-1]

        monkeypatch.setattr(insert.connections, "take", failing)
        if layer == "dropped":  # the error reads as a dropped connection, on the retry too: tried twice, then 503
            monkeypatch.setattr(engine.dialect, "is_disconnect", lambda *_: True)
    resp = post_event(client, fixture_xml(ADD))
    assert (resp.status_code, resp.data) == (503, b"temporarily unavailable")
    monkeypatch.undo()
    assert _inbox_count(services) == 0
    if layer != "pool":  # a connection that failed mid-statement is closed, not kept
        assert [m.closed for m in made] == ([True] if layer == "driver" else [True, True])
        assert not {id(m) for m in made} & {id(c) for c in insert.connections.free}
    assert post_event(client, fixture_xml(ADD)).status_code == 200  # WeCom's retry lands once it is back
    assert _inbox_count(services) == 1


def test_a_connection_the_database_dropped_is_replaced_without_a_503(client: Any, services: Services) -> None:
    """PostgreSQL restarted (or an idle connection was cut): the callback's pool has no pre-ping, so the insert
    notices the dead connection itself and runs once more on a fresh one."""
    if services.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no server to drop a connection")
    insert = _inbox_insert(services.engine)
    assert post_event(client, fixture_xml(ADD)).status_code == 200
    (kept,) = insert.connections.free  # the connection the next callback will take
    cursor = kept.cursor()
    cursor.execute("SELECT pg_backend_pid()")
    (pid,) = cursor.fetchone()
    cursor.close()
    with services.transaction() as s:
        assert s.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one() is True
    second = fixture_xml(ADD).replace("<CreateTime>", "<CreateTime>1")
    resp = post_event(client, second)
    assert (resp.status_code, resp.data) == (200, b"")
    assert _inbox_count(services) == 2
    assert kept.closed and insert.connections.free and insert.connections.free[0] is not kept


def _with_create_time(stamp: str) -> str:
    return fixture_xml(ADD).replace("<CreateTime>", f"<CreateTime>{stamp}")


def _row(dedupe_key: str) -> dict[str, Any]:
    """An inbox row as the callback hands it to the insert."""
    return {"corp_id": "ww-t", "dedupe_key": dedupe_key, "event_key": "x", "payload": {}, "received_at": utcnow(),
            "status": "pending", "attempts": 0}


def test_the_insert_keeps_its_connection_instead_of_a_pool_checkout(client: Any, services: Services) -> None:
    insert = _inbox_insert(services.engine)
    for n in range(5):
        assert post_event(client, _with_create_time(str(n + 1))).status_code == 200
    assert _inbox_count(services) == 5
    assert len(insert.connections.free) == 1  # one callback at a time here: one connection, kept
    assert insert.engine.pool.checkedout() == 0  # detached: the shared pool's slots are all free


def test_threads_inserting_at_once_lose_nothing_and_keep_few_connections(services: Services) -> None:
    insert = _inbox_insert(services.engine)
    ids: list[int | None] = []

    def record(thread: int) -> None:
        for n in range(25):
            ids.append(insert(_row(f"t{thread}-{n}")))

    threads = [threading.Thread(target=record, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert None not in ids and len(set(ids)) == 100 == _inbox_count(services)
    kept = len(insert.connections.free)
    # SQLite's inserts queue on the writer lock and share one connection; PostgreSQL's run side by side
    assert kept == 1 if services.engine.dialect.name == "sqlite" else 1 <= kept <= 4


def test_a_forked_child_inserts_on_its_own_connection_and_leaves_the_parents_open(
        client: Any, services: Services) -> None:
    insert = _inbox_insert(services.engine)
    assert post_event(client, _with_create_time("1")).status_code == 200
    (kept,) = insert.connections.free

    def child() -> bool:  # one insert, then a full collection (a dropped reference would close the parent's)
        ok = insert(_row("fork-child")) is not None and insert.connections.free[0] is not kept
        ok = ok and insert.connections.inherited == [kept]
        gc.collect()
        return ok

    assert in_forked_child(child) == 0
    assert post_event(client, _with_create_time("2")).status_code == 200
    assert insert.connections.free == [kept]  # still the parent's, still open (PostgreSQL: its session alive)
    assert _inbox_count(services) == 3


def test_an_insert_made_after_a_fork_does_not_take_the_parents_pooled_connection(services: Services) -> None:
    """gunicorn --preload: the engine (and its pool) were made before the fork, the insert in the worker."""
    engine = services.engine
    raw = engine.raw_connection()
    parents = raw.dbapi_connection
    raw.close()  # back in the pool the child inherits

    def child() -> bool:
        insert = _InboxInsert(engine)
        return insert(_row("preload-child")) is not None and insert.connections.free[0] is not parents

    assert in_forked_child(child) == 0
    assert _inbox_count(services) == 1


def test_inbox_row_is_the_row_the_orm_writes(client: Any, services: Services) -> None:
    """The callback binds values through the columns' own types on a DBAPI connection: same row as the ORM's."""
    assert post_event(client, fixture_xml(ADD)).status_code == 200
    with services.transaction() as s:
        ours = s.scalars(select(InboxEvent)).one()
        orm = InboxEvent(corp_id=ours.corp_id, dedupe_key="orm-" + ours.dedupe_key[4:], event_key=ours.event_key,
                         payload=ours.payload, received_at=ours.received_at, status="pending", attempts=0)
        s.add(orm)
    columns = [c.name for c in InboxEvent.__table__.columns if c.name not in ("id", "dedupe_key")]
    with services.engine.connect() as conn:  # raw stored values, as each backend keeps them
        table = InboxEvent.__table__
        rows = conn.execute(select(*[table.c[c] for c in columns]).order_by(table.c.id)).all()
        stored = conn.exec_driver_sql(f"SELECT {', '.join(columns)} FROM inbox_events ORDER BY id").all()
    assert rows[0] == rows[1]
    assert stored[0] == stored[1]
    assert ours.received_at.tzinfo is not None and ours.payload["ExternalUserID"] == "wmQ8xTCwAAb3fFp0Yk2nHs9LdE7uVr1w"


def _signed(body_xml: str, *, sig: str | None = None) -> tuple[bytes, dict[str, str]]:
    p = vector_params()
    enc = wecom_reference.encrypt(body_xml, p["encoding_aes_key"], p["corp_id_receive_id"])
    body = f"<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>".encode()
    return body, {"msg_signature": sig or wecom_reference.sign(p["token"], "1", "2", enc), "timestamp": "1",
                  "nonce": "2"}


BOMB = """<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>
<xml><Encrypt>&lol2;</Encrypt></xml>"""
XXE = """<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><Encrypt>&xxe;</Encrypt></xml>"""


def _bad_cases() -> list[tuple[str, int, Any]]:
    p = vector_params()

    def wrong_receiveid() -> tuple[bytes, dict[str, str]]:
        enc = wecom_reference.encrypt(fixture_xml(ADD), p["encoding_aes_key"], "wwSOMEOTHERCORP000")
        return (f"<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>".encode(),
                {"msg_signature": wecom_reference.sign(p["token"], "1", "2", enc), "timestamp": "1", "nonce": "2"})

    def signed_raw(body: bytes) -> tuple[bytes, dict[str, str]]:
        return body, {"msg_signature": "ab" * 20, "timestamp": "1", "nonce": "2"}

    def inner_not_xml() -> tuple[bytes, dict[str, str]]:
        return _signed("this is not xml")

    def inner_with_dtd() -> tuple[bytes, dict[str, str]]:
        return _signed(BOMB)

    def undecryptable() -> tuple[bytes, dict[str, str]]:
        enc = "QUJDREVGR0hJSktMTU5PUA=="  # 16 bytes that do not decrypt to a frame
        return (f"<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>".encode(),
                {"msg_signature": wecom_reference.sign(p["token"], "1", "2", enc), "timestamp": "1", "nonce": "2"})

    return [
        ("missing signature", 403, lambda: (fixture_xml(ADD).encode(), {})),
        ("bad signature", 403, lambda: _signed(fixture_xml(ADD), sig="0" * 40)),
        ("wrong receiveid", 400, wrong_receiveid),
        ("not xml", 400, lambda: signed_raw(b"hello")),
        ("non-utf8 body", 400, lambda: signed_raw(b"\xff\xfe<xml>\x80</xml>")),
        ("xml bomb", 400, lambda: signed_raw(BOMB.encode())),
        ("xxe", 400, lambda: signed_raw(XXE.encode())),
        ("no Encrypt element", 400, lambda: signed_raw(b"<xml><Foo>1</Foo></xml>")),
        ("inner payload not xml", 400, inner_not_xml),
        ("inner payload with a DTD", 400, inner_with_dtd),
        ("does not decrypt", 400, undecryptable),
        ("oversized body", 413,
         lambda: signed_raw(b"<xml><Encrypt>" + b"A" * (1024 * 1024 + 10) + b"</Encrypt></xml>")),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_is_refused_with_its_status_and_writes_nothing(client: Any, services: Services, case: Any,
                                                                 caplog: Any) -> None:
    name, status, build = case
    body, query = build()
    resp = client.post("/wecom/callback", query_string=query, data=body, content_type="application/json")
    assert resp.status_code == status, (name, resp.data)
    assert _inbox_count(services) == 0
    assert get_queue(services.redis, "default").count == 0
    secret = vector_params()["encoding_aes_key"]
    assert secret not in caplog.text and vector_params()["token"] not in caplog.text
