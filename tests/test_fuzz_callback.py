"""Fuzzing /wecom/callback: arbitrary requests never 5xx and never record; signed garbage is 200 or 400.

Three families of input, all through the real app, database and Redis:
- anything at all (method, query, content type, body; including signed envelopes around garbage `Encrypt`):
  never a 5xx, never a 200 (OPTIONS aside: Flask answers it with the allowed methods), nothing recorded;
- properly signed and encrypted frames around mutated plaintexts (random XML, random fields, non-UTF-8 bytes,
  huge fields, DTDs and entities): 200 (recorded once) or 400 (nothing recorded), never a 5xx; every recorded
  row is then processed by the worker's job function without crashing it;
- fixed attacks: XML bombs, XXE, deep nesting, oversized bodies, wrong content types, non-UTF-8.

Signing and encryption come from tests/wecom_reference.py's algorithm (an independent implementation).
"""

from __future__ import annotations

import base64
import os
import struct
from typing import Any
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.models import InboxEvent
from bot.queues import QUEUE_NAMES, get_queue
from bot.services import Services
from jobs.events import process_inbox_row
from tests import wecom_reference
from tests.conftest import fixture_xml, vector_params

CI = bool(os.environ.get("CI"))
EXAMPLES = int(os.environ.get("SOPBOT_FUZZ_EXAMPLES", "200" if CI else "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not CI,
                suppress_health_check=list(HealthCheck))

TS, NONCE = "1735689600", "480916352"


# -- helpers ---------------------------------------------------------------------------------------

def _encrypt_bytes(message: bytes, receive_id: bytes | None = None) -> str:
    """A WeCom frame around raw bytes (the reference encrypts str; non-UTF-8 needs bytes)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    p = vector_params()
    key = base64.b64decode(p["encoding_aes_key"] + "=")
    rid = p["corp_id_receive_id"].encode() if receive_id is None else receive_id
    frame = os.urandom(16) + struct.pack(">I", len(message)) + message + rid
    pad = 32 - len(frame) % 32
    frame += bytes([pad]) * pad
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(frame) + enc.finalize()).decode()


def _signed(encrypt: str, nonce: str = NONCE) -> tuple[bytes, dict[str, str]]:
    p = vector_params()
    body = f"<xml><ToUserName><![CDATA[{p['corp_id_receive_id']}]]></ToUserName>" \
           f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    query = {"msg_signature": wecom_reference.sign(p["token"], TS, nonce, encrypt), "timestamp": TS, "nonce": nonce}
    return body.encode(), query


def _inbox(services: Services) -> int:
    with services.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(InboxEvent)) or 0)


def _jobs(services: Services) -> int:
    return sum(get_queue(services.redis, q).count for q in QUEUE_NAMES)


def _state(services: Services) -> tuple[int, int]:
    return _inbox(services), _jobs(services)


# -- strategies ------------------------------------------------------------------------------------

printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=200)
KNOWN_TYPES = ["event", "text", "image", "voice", "video", "file", "link", "location", "", "unknown"]
KNOWN_EVENTS = ["change_external_contact", "change_external_chat", "change_external_tag", "change_contact",
                "kf_msg_or_event", "msgaudit_notify", "enter_agent", "click", "", "unknown_event"]
KNOWN_CHANGES = ["add_external_contact", "del_external_contact", "del_follow_user", "edit_external_contact",
                 "add_half_external_contact", "transfer_fail", "create", "update", "dismiss", "delete",
                 "create_user", "update_user", "delete_user", "shuffle", "", "?"]
FIELDS = ["ToUserName", "FromUserName", "CreateTime", "UserID", "ExternalUserID", "State", "WelcomeCode",
          "ChatId", "UpdateDetail", "JoinScene", "QuitScene", "MemChangeCnt", "Id", "TagType", "Token",
          "OpenKfId", "Content", "MsgId", "AgentID", "FailReason", "Source", "StrategyId"]


def _element(name: str, value: str) -> str:
    return f"<{name}>{escape(value)}</{name}>"


@st.composite
def random_events(draw: st.DrawFn) -> str:
    """Well-formed WeCom-like XML: plausible routing keys with random, missing, repeated or nested fields."""
    parts = [_element("MsgType", draw(st.sampled_from(KNOWN_TYPES) | xml_text)),
             _element("Event", draw(st.sampled_from(KNOWN_EVENTS) | xml_text)),
             _element("ChangeType", draw(st.sampled_from(KNOWN_CHANGES) | xml_text))]
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(FIELDS) | names)
        shape = draw(st.integers(0, 3))
        if shape == 0:
            parts.append(_element(name, draw(xml_text)))
        elif shape == 1:
            parts.append(_element(name, draw(st.integers(-2**70, 2**70)).__str__()))
        elif shape == 2:  # a list of <Item>s, as tag events carry
            items = "".join(f"<Item>{_element('TagId', draw(xml_text))}</Item>" for _ in range(draw(st.integers(0, 3))))
            parts.append(f"<{name}>{items}</{name}>")
        else:
            parts.append(f"<{name}>{_element(draw(names), draw(xml_text))}</{name}>")
    parts = draw(st.permutations(parts))
    parts = parts[:draw(st.integers(1, len(parts)))] if draw(st.booleans()) else parts  # `<xml></xml>` is a 400
    return "<xml>" + "".join(parts) + "</xml>"


BOMB = ('<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa">'
        + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
        + ']><xml><Content>&i;</Content></xml>')
XXE = '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><Content>&x;</Content></xml>'
XXE_PARAM = '<!DOCTYPE xml [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]><xml><A>1</A></xml>'
DEEP = "<xml>" + "<a>" * 5000 + "x" + "</a>" * 5000 + "</xml>"

plaintexts = st.one_of(
    random_events().map(lambda s: (s.encode(), True)),
    st.binary(max_size=600).map(lambda b: (b, False)),  # mostly not UTF-8, never WeCom XML
    st.text(max_size=300).map(lambda s: (s.encode("utf-8", "surrogatepass"), False)),
    st.sampled_from([BOMB, XXE, XXE_PARAM, DEEP, "<xml/>", "<xml></xml>", "<notxml><a>1</a></notxml>",
                     "<xml><a>1</a>", "\ufeff<xml><A>1</A></xml>"]).map(lambda s: (s.encode(), False)),
    st.tuples(st.sampled_from(["gbk", "utf-16", "latin-1"]), random_events()).map(
        lambda t: (t[1].replace("<xml>", "<xml><Content>中文内容é</Content>", 1).encode(t[0], "replace"), False)),
    st.tuples(st.sampled_from(["MsgType", "Event", "ChangeType"]), st.integers(100, 3000)).map(  # long keys
        lambda t: (f"<xml><MsgType>event</MsgType><Event>e</Event><{t[0]}>{'k' * t[1]}</{t[0]}></xml>".encode(),
                   True)),
    st.integers(50_000, 200_000).map(  # up to 600 kB of UTF-8: the envelope stays under the 1 MiB limit
        lambda n: (f"<xml><MsgType>text</MsgType><Content>{'长' * n}</Content></xml>".encode(), True)),
)

any_body = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=1000).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([BOMB, XXE, XXE_PARAM, DEEP, "<xml><Encrypt></Encrypt></xml>", "<xml><Encrypt>!!</Encrypt></xml>",
                     "<xml><Encrypt><a>b</a></Encrypt></xml>", "", "<xml>", "{\"Encrypt\": \"x\"}"]).map(str.encode),
    random_events().map(str.encode),
)
content_types = st.sampled_from([None, "text/xml", "application/xml", "application/json", "text/plain; charset=gbk",
                                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=zz",
                                 "application/octet-stream", "text/xml; charset=utf-16"]) | printable
query_keys = st.sampled_from(["msg_signature", "timestamp", "nonce", "echostr"]) | st.text(max_size=8)
queries = st.dictionaries(query_keys, st.text(max_size=80), max_size=5)


# -- 1. anything at all ----------------------------------------------------------------------------

def test_arbitrary_requests_never_5xx_never_200_and_record_nothing(client: Any, services: Services) -> None:
    before = _state(services)
    seen: set[int] = set()

    @FUZZ
    @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
           query=queries, body=any_body, content_type=content_types,
           sign_garbage=st.booleans(), garbage=st.text(max_size=300))
    def run(method: str, query: dict[str, str], body: bytes, content_type: str | None, sign_garbage: bool,
            garbage: str) -> None:
        if sign_garbage:  # a valid signature over an Encrypt that is not a frame of ours
            p = vector_params()
            body = f"<xml><Encrypt><![CDATA[{garbage}]]></Encrypt></xml>".encode()
            query = {"msg_signature": wecom_reference.sign(p["token"], TS, NONCE, garbage.strip()),
                     "timestamp": TS, "nonce": NONCE, **({"echostr": garbage} if method == "GET" else {})}
        resp = client.open("/wecom/callback", method=method, query_string=query, data=body,
                           content_type=content_type)
        seen.add(resp.status_code)
        assert resp.status_code < 500, (method, query, body[:200], resp.data[:200])
        if method != "OPTIONS":
            assert resp.status_code != 200, (method, query, body[:200])
            assert resp.status_code in (400, 403, 405, 413), resp.status_code
            if resp.status_code in (400, 403) and method != "HEAD":
                assert resp.data, "a refusal says why"
        assert _state(services) == before

    run()
    assert {400, 403} <= seen  # both refusal paths were reached, not just the cheap one


# -- 2. signed and encrypted, mutated plaintexts ---------------------------------------------------

def test_signed_mutated_plaintexts_are_200_or_400_and_the_worker_survives_them(client: Any,
                                                                                services: Services) -> None:
    outcomes: dict[int, int] = {}

    @FUZZ
    @given(plain=plaintexts, nonce=st.integers(0, 10**9).map(str))
    def run(plain: tuple[bytes, bool], nonce: str) -> None:
        message, well_formed = plain
        body, query = _signed(_encrypt_bytes(message), nonce)
        rows, jobs = _state(services)
        resp = client.post("/wecom/callback", query_string=query, data=body, content_type="text/xml")
        outcomes[resp.status_code] = outcomes.get(resp.status_code, 0) + 1
        assert resp.status_code in (200, 400), (resp.status_code, message[:200], resp.data[:300])
        if well_formed:
            assert resp.status_code == 200, (message[:300], resp.data)
        if resp.status_code == 400:
            assert resp.data and _state(services) == (rows, jobs)
            return
        assert resp.data == b""
        new_rows = _inbox(services) - rows
        assert new_rows in (0, 1)  # 0: the same plaintext came before (a WeCom retry)
        assert _jobs(services) - jobs == new_rows
        if new_rows:
            with services.transaction() as s:
                row_id = int(s.scalar(select(func.max(InboxEvent.id))) or 0)
            # The worker's job function: whatever was recorded is handled or acknowledged, never a crash.
            assert process_inbox_row(services, row_id) == "done"
            with services.transaction() as s:
                row = s.get(InboxEvent, row_id)
                assert row is not None and row.status in ("done", "ignored"), (row.status if row else None)

    run()
    assert outcomes.get(200) and outcomes.get(400), outcomes  # both outcomes were exercised


def test_signed_frames_for_another_corp_or_truncated_are_400(client: Any, services: Services) -> None:
    xml = fixture_xml("change_external_contact__add_external_contact").encode()
    for encrypt in (_encrypt_bytes(xml, b"wwSomeoneElse"), _encrypt_bytes(xml, b""),
                    _encrypt_bytes(xml)[:-4], _encrypt_bytes(b"")[:24]):
        body, query = _signed(encrypt)
        resp = client.post("/wecom/callback", query_string=query, data=body, content_type="text/xml")
        assert resp.status_code == 400 and resp.data
    assert _state(services) == (0, 0)


# -- 3. fixed attacks ------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", [BOMB, XXE, XXE_PARAM, DEEP], ids=["bomb", "xxe", "xxe-param", "deep"])
def test_xml_attacks_in_the_envelope_and_in_the_frame_are_400(client: Any, services: Services, doc: str) -> None:
    p = vector_params()
    query = {"msg_signature": "0" * 40, "timestamp": TS, "nonce": NONCE}
    outer = client.post("/wecom/callback", query_string=query, data=doc.encode(), content_type="text/xml")
    assert outer.status_code == 400 and b"XML" in outer.data
    body, query = _signed(_encrypt_bytes(doc.encode()))
    inner = client.post("/wecom/callback", query_string=query, data=body, content_type="text/xml")
    assert inner.status_code == 400 and b"XML" in inner.data
    assert b"root:" not in inner.data and p["encoding_aes_key"].encode() not in inner.data
    assert _state(services) == (0, 0)


def test_oversized_bodies_are_413_before_anything_is_read(client: Any, services: Services) -> None:
    limit = services.settings.max_callback_bytes
    body, query = _signed(_encrypt_bytes(b"<xml><Content>" + b"x" * limit + b"</Content></xml>"))
    assert len(body) > limit
    assert client.post("/wecom/callback", query_string=query, data=body, content_type="text/xml").status_code == 413
    # The same without a Content-Length (chunked): werkzeug stops reading at the limit.
    resp = client.post("/wecom/callback", query_string=query, input_stream=__import__("io").BytesIO(body),
                       content_type="text/xml", headers={"Transfer-Encoding": "chunked"})
    assert resp.status_code in (400, 413)
    assert _state(services) == (0, 0)


@pytest.mark.parametrize("content_type", [None, "application/json", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=zz", "text/plain; charset=gbk"])
def test_a_valid_delivery_is_accepted_whatever_its_content_type(client: Any, services: Services,
                                                                content_type: str | None) -> None:
    # WeCom's Content-Type is not to be trusted: the raw body is read, never a parsed form.
    body, query = _signed(_encrypt_bytes(fixture_xml("change_external_contact__add_external_contact").encode()))
    resp = client.post("/wecom/callback", query_string=query, data=body, content_type=content_type)
    assert resp.status_code == 200
    assert _state(services) == (1, 1)


def test_url_verification_with_signed_garbage_echostr_is_400(client: Any, services: Services) -> None:
    p = vector_params()
    for echostr in ("!!!", "QUJD", base64.b64encode(b"x" * 31).decode(), _encrypt_bytes(b"\xff\xfe")):
        query = {"msg_signature": wecom_reference.sign(p["token"], TS, NONCE, echostr), "timestamp": TS,
                 "nonce": NONCE, "echostr": echostr}
        resp = client.get("/wecom/callback", query_string=query)
        assert resp.status_code == 400 and b"echostr" in resp.data
    good = _encrypt_bytes("中文 echo".encode())
    query = {"msg_signature": wecom_reference.sign(p["token"], TS, NONCE, good), "timestamp": TS, "nonce": NONCE,
             "echostr": good}
    assert client.get("/wecom/callback", query_string=query).data == "中文 echo".encode()
    assert _state(services) == (0, 0)
