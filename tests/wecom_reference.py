"""An independent implementation of WeCom's callback encryption, built only on `cryptography`.

Tests encrypt and sign fixtures with this (not with the code under test), so a bug shared by
wechatpy and bot/wecom/crypto.py cannot hide (ARCHITECTURE.md rule 3; PROTOCOL.md §1).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def _key(encoding_aes_key: str) -> bytes:
    return base64.b64decode(encoding_aes_key + "=")


def sign(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()  # noqa: S324


def encrypt(plaintext: str, encoding_aes_key: str, receive_id: str, random16: bytes | None = None) -> str:
    key = _key(encoding_aes_key)
    msg = plaintext.encode("utf-8")
    frame = (random16 or os.urandom(16)) + struct.pack(">I", len(msg)) + msg + receive_id.encode()
    pad = 32 - len(frame) % 32
    frame += bytes([pad]) * pad
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(frame) + enc.finalize()).decode()


def decrypt(encrypted: str, encoding_aes_key: str) -> tuple[str, str]:
    key = _key(encoding_aes_key)
    dec = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    frame = dec.update(base64.b64decode(encrypted)) + dec.finalize()
    frame = frame[: -frame[-1]]
    (n,) = struct.unpack(">I", frame[16:20])
    return frame[20 : 20 + n].decode(), frame[20 + n :].decode()


def post_body(plaintext: str, token: str, encoding_aes_key: str, receive_id: str,
              timestamp: str = "1735689600", nonce: str = "480916352") -> tuple[bytes, dict[str, str]]:
    """The POST body and query string WeCom would send for this inner XML."""
    enc = encrypt(plaintext, encoding_aes_key, receive_id)
    body = f"<xml><ToUserName><![CDATA[{receive_id}]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt>" \
           f"<AgentID><![CDATA[1000002]]></AgentID></xml>"
    return body.encode(), {"msg_signature": sign(token, timestamp, nonce, enc), "timestamp": timestamp,
                           "nonce": nonce}
