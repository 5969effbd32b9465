"""WeCom callback crypto (回调加解密), on top of wechatpy's cipher and signer.

wechatpy's decrypt trusts the last pad byte and never checks the frame lengths
(PROTOCOL.md §1.4, §6.2). A receiver that skips those checks can be fed truncated
or garbage frames, so this module keeps wechatpy for the AES-CBC cipher, the frame
encoder and the SHA-1 signer, and redoes the unpadding with every check, in order:
signature -> base64 -> length multiple of 16 -> decrypt -> pad 1..32, all equal ->
frame >= 20 bytes -> 20 + msg_len fits -> receiveid equals the corp id -> UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import struct
import time
from dataclasses import dataclass

from wechatpy.crypto import _get_signature
from wechatpy.crypto.base import WeChatCipher
from wechatpy.work.crypto import PrpCrypto

__all__ = ["CryptoError", "SignatureError", "ReceiveIdError", "WeComCrypto", "EncryptedEnvelope"]

_BLOCK = 32  # WeCom pads to 32-byte blocks, not AES's 16 (PROTOCOL.md §1.4)


class CryptoError(ValueError):
    """The payload does not decrypt to a well-formed WeCom frame (HTTP 400)."""

    code = -40007


class SignatureError(CryptoError):
    """msg_signature does not match (HTTP 403)."""

    code = -40001


class ReceiveIdError(CryptoError):
    """The frame was encrypted for another corp id (HTTP 400)."""

    code = -40005


@dataclass(frozen=True)
class EncryptedEnvelope:
    """What WeCom POSTs: the outer XML body and the query parameters that sign it."""

    body: str
    msg_signature: str
    timestamp: str
    nonce: str
    encrypt: str

    @property
    def query(self) -> dict[str, str]:
        return {"msg_signature": self.msg_signature, "timestamp": self.timestamp, "nonce": self.nonce}


def decode_aes_key(encoding_aes_key: str) -> bytes:
    """43 base64 chars -> 32-byte key; lenient about the 2 surplus low bits WeCom leaves set."""
    if len(encoding_aes_key) != 43 or not encoding_aes_key.isalnum() or not encoding_aes_key.isascii():
        raise ValueError("EncodingAESKey must be exactly 43 characters from [A-Za-z0-9]")
    key = base64.b64decode(encoding_aes_key + "=")
    if len(key) != 32:  # pragma: no cover - 43 valid chars always give 32 bytes
        raise ValueError("EncodingAESKey does not decode to 32 bytes")
    return key


class WeComCrypto:
    """Encrypt/decrypt/sign WeCom callback frames for one (token, EncodingAESKey, corp id)."""

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        self.token = token
        self.key = decode_aes_key(encoding_aes_key)
        self.receive_id = receive_id
        self._prp = PrpCrypto(self.key)
        self._cipher = WeChatCipher(self.key)  # AES-256-CBC, IV = key[:16]; each decrypt makes its own decryptor

    # -- signature -----------------------------------------------------------------------------
    def signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        return str(_get_signature(self.token, timestamp, nonce, encrypt))

    def verify(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        expected = self.signature(timestamp, nonce, encrypt)
        if not hmac.compare_digest(expected.encode(), (msg_signature or "").encode()):
            raise SignatureError("bad msg_signature")

    # -- frames --------------------------------------------------------------------------------
    def encrypt(self, plaintext: str) -> str:
        """Base64 ciphertext of one frame (random prefix from wechatpy)."""
        raw = self._prp.encrypt(plaintext, self.receive_id)
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def decrypt(self, encrypt: str) -> str:
        """Decrypt one frame with all the checks of PROTOCOL.md §1.4."""
        try:
            ciphertext = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CryptoError("Encrypt is not base64") from exc
        if not ciphertext or len(ciphertext) % 16:
            raise CryptoError("ciphertext length is not a multiple of 16")
        frame = self._cipher.decrypt(ciphertext)
        pad = frame[-1]
        if not 1 <= pad <= _BLOCK or frame[-pad:] != bytes([pad]) * pad:
            raise CryptoError("bad padding")
        body = frame[:-pad]
        if len(body) < 20:
            raise CryptoError("frame too short")
        (msg_len,) = struct.unpack(">I", body[16:20])
        if 20 + msg_len > len(body):
            raise CryptoError("msg_len runs past the frame")
        receive_id = body[20 + msg_len :]
        if not hmac.compare_digest(receive_id, self.receive_id.encode()):
            raise ReceiveIdError("receiveid does not match the corp id")
        try:
            return body[20 : 20 + msg_len].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CryptoError("message is not UTF-8") from exc

    def verify_and_decrypt(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> str:
        self.verify(msg_signature, timestamp, nonce, encrypt)
        return self.decrypt(encrypt)

    def envelope(
        self, plaintext_xml: str, *, timestamp: str | None = None, nonce: str | None = None,
        agent_id: str | None = None,
    ) -> EncryptedEnvelope:
        """Build the POST body + signed query WeCom would send for this inner XML."""
        timestamp = timestamp or str(int(time.time()))
        nonce = nonce or str(secrets.randbelow(10**10))
        encrypt = self.encrypt(plaintext_xml)
        agent = f"<AgentID><![CDATA[{agent_id}]]></AgentID>" if agent_id else ""
        body = (
            f"<xml><ToUserName><![CDATA[{self.receive_id}]]></ToUserName>"
            f"<Encrypt><![CDATA[{encrypt}]]></Encrypt>{agent}</xml>"
        )
        return EncryptedEnvelope(body, self.signature(timestamp, nonce, encrypt), timestamp, nonce, encrypt)
