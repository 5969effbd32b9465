"""Every known answer in shared/wecom/vectors.json, through bot.wecom.crypto and the reference."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

import pytest

from bot.wecom.crypto import CryptoError, ReceiveIdError, SignatureError, WeComCrypto, decode_aes_key
from tests import wecom_reference
from tests.conftest import VECTORS

pytestmark = pytest.mark.skipif(VECTORS is None, reason="shared/wecom/vectors.json not beside the checkout")


def _crypto() -> WeComCrypto:
    p = VECTORS["params"]
    return WeComCrypto(p["token"], p["encoding_aes_key"], p["corp_id_receive_id"])


def _encrypt_of(vector: dict) -> str:
    if vector.get("echostr"):
        return vector["echostr"]
    if vector.get("encrypt"):
        return vector["encrypt"]
    body = vector["http"]["body"]
    found = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]></Encrypt>", body)
    assert found, vector["id"]
    return found.group(1)


def test_key_derivation_is_lenient_about_trailing_bits() -> None:
    p = VECTORS["params"]
    assert decode_aes_key(p["encoding_aes_key"]).hex() == p["aes_key_hex"]
    assert p["iv_hex"] == p["aes_key_hex"][:32]


@pytest.mark.parametrize("vector", VECTORS["vectors"] if VECTORS else [], ids=lambda v: v["id"])
def test_vector_decrypts_to_expected_plaintext(vector: dict) -> None:
    crypto = _crypto()
    encrypt = _encrypt_of(vector)
    if vector["id"] == "passive_reply_text":
        sig, ts, nonce = vector.get("msg_signature"), vector.get("timestamp"), vector.get("nonce")
        assert crypto.verify_and_decrypt(sig, ts, nonce, encrypt) == vector["expected_plaintext"]
        return
    plain = crypto.verify_and_decrypt(vector["msg_signature"], vector["timestamp"], vector["nonce"], encrypt)
    assert plain == vector["expected_plaintext"]
    # the reference implementation agrees, and signs the same way
    ref_plain, ref_id = wecom_reference.decrypt(encrypt, VECTORS["params"]["encoding_aes_key"])
    assert (ref_plain, ref_id) == (plain, VECTORS["params"]["corp_id_receive_id"])
    assert wecom_reference.sign(VECTORS["params"]["token"], vector["timestamp"], vector["nonce"], encrypt) == \
        vector["msg_signature"]


def test_url_verification_query_is_url_decoded() -> None:
    vector = next(v for v in VECTORS["vectors"] if v["id"] == "url_verification_echostr")
    q = {k: v[0] for k, v in parse_qs(vector["http"]["query_string"]).items()}
    assert q["echostr"] == vector["echostr"]
    assert _crypto().verify_and_decrypt(q["msg_signature"], q["timestamp"], q["nonce"], q["echostr"]) == \
        vector["expected_http_response_body"]


def test_full_32_byte_padding_block() -> None:
    vector = next(v for v in VECTORS["vectors"] if v["id"] == "edge_full_32_byte_padding_block")
    assert vector["frame"]["pkcs7_pad_len"] == 32
    plain = _crypto().verify_and_decrypt(vector["msg_signature"], vector["timestamp"], vector["nonce"],
                                         _encrypt_of(vector))
    assert plain == vector["expected_plaintext"]


def test_negative_bad_signature_is_rejected() -> None:
    v = next(v for v in VECTORS["negative_vectors"] if v["id"] == "bad_signature")
    with pytest.raises(SignatureError):
        _crypto().verify_and_decrypt(v["msg_signature"], v["timestamp"], v["nonce"], v["encrypt"])


def test_negative_wrong_receive_id_is_rejected() -> None:
    v = next(v for v in VECTORS["negative_vectors"] if v["id"] == "wrong_receive_id")
    with pytest.raises(ReceiveIdError):
        _crypto().verify_and_decrypt(v["msg_signature"], v["timestamp"], v["nonce"], v["encrypt"])


def test_tencent_sample_known_answers() -> None:
    s = VECTORS["tencent_sample_known_answer"]
    p = s["params"]
    crypto = WeComCrypto(p["token"], p["encoding_aes_key"], p["receive_id"])
    u = s["url_verification"]
    assert crypto.verify_and_decrypt(u["msg_signature"], u["timestamp"], u["nonce"], u["echostr"]) == \
        u["expected_plaintext"]
    post = s["post"]
    assert crypto.verify_and_decrypt(post["msg_signature"], post["timestamp"], post["nonce"], post["encrypt"]) == \
        post["expected_plaintext"]


def test_round_trip_with_reference_both_ways() -> None:
    p = VECTORS["params"]
    crypto = _crypto()
    text = "<xml><Content><![CDATA[你好 📄 " + "长" * 123 + "]]></Content></xml>"
    assert crypto.decrypt(wecom_reference.encrypt(text, p["encoding_aes_key"], p["corp_id_receive_id"])) == text
    assert wecom_reference.decrypt(crypto.encrypt(text), p["encoding_aes_key"]) == (text, p["corp_id_receive_id"])


@pytest.mark.parametrize("bad", ["not base64 !!", "", "QUJD", "A" * 44])
def test_garbage_ciphertext_is_a_crypto_error(bad: str) -> None:
    with pytest.raises(CryptoError):
        _crypto().decrypt(bad)


def test_inconsistent_padding_is_rejected() -> None:
    # A frame whose last byte claims 5 pad bytes but the bytes before it differ: wechatpy would accept it.
    import base64
    import struct

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    crypto = _crypto()
    msg = b"<xml/>"
    frame = b"0" * 16 + struct.pack(">I", len(msg)) + msg + crypto.receive_id.encode()
    frame += b"\x00" * (32 - len(frame) % 32 - 1) + b"\x05"
    key = crypto.key
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    with pytest.raises(CryptoError, match="padding"):
        crypto.decrypt(base64.b64encode(enc.update(frame) + enc.finalize()).decode())
