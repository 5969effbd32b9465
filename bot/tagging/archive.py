"""Chat archive (会话内容存档) key handling: RSA-decrypting ``encrypt_random_key`` (PROTOCOL.md §5 step 3).

Every GetChatData record names the ``publickey_ver`` it was encrypted for; old private keys must be kept,
because records stay encrypted with the key that was current when they were archived. The keys live in
the directory ``SOPBOT_ARCHIVE_PRIVATE_KEYS`` as ``<publickey_ver>.pem`` (PKCS#1 ``BEGIN RSA PRIVATE KEY``
or PKCS#8 ``BEGIN PRIVATE KEY``; the padding is RSAES-PKCS1-v1_5 either way — OAEP is wrong).

The rest of the pipeline (GetChatData, DecryptData of ``encrypt_chat_msg``, media) needs Tencent's
proprietary SDK and is not part of sopbot: a puller built on the SDK posts the decrypted JSON records to
``POST /api/v1/messages`` (or ``sopbot ingest``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["ArchiveKeyError", "ArchiveKeys", "decrypt_random_key"]


class ArchiveKeyError(ValueError):
    """No key for a publickey_ver, an unreadable key file, or a random key that does not decrypt."""


def _load_private_key(pem: bytes, where: str) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ArchiveKeyError(f"{where}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ArchiveKeyError(f"{where}: not an RSA key")
    return key


def decrypt_random_key(private_key: rsa.RSAPrivateKey, encrypt_random_key: str) -> str:
    """base64-decode, then RSAES-PKCS1-v1_5: the string handed to the SDK's DecryptData."""
    try:
        blob = base64.b64decode(encrypt_random_key, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ArchiveKeyError(f"encrypt_random_key is not base64: {exc}") from exc
    try:
        plain = private_key.decrypt(blob, padding.PKCS1v15())
    except ValueError as exc:
        raise ArchiveKeyError("encrypt_random_key does not decrypt with this key (wrong publickey_ver?)") from exc
    # OpenSSL 3 answers a wrong key with implicit rejection (random bytes, no error) to defeat padding oracles;
    # the real random key is printable ASCII, so anything else means the wrong key.
    try:
        text = plain.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ArchiveKeyError("encrypt_random_key does not decrypt with this key (wrong publickey_ver?)") from exc
    if not text.isprintable():
        raise ArchiveKeyError("encrypt_random_key does not decrypt with this key (wrong publickey_ver?)")
    return text


class ArchiveKeys:
    """Private keys by publickey_ver."""

    def __init__(self, keys: Mapping[int, rsa.RSAPrivateKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_pems(cls, pems: Mapping[int, str | bytes]) -> ArchiveKeys:
        return cls({int(ver): _load_private_key(pem.encode() if isinstance(pem, str) else pem, f"version {ver}")
                    for ver, pem in pems.items()})

    @classmethod
    def from_directory(cls, directory: str | Path) -> ArchiveKeys:
        """``<ver>.pem`` files (any other name is refused: a key that cannot be matched to a version is a
        configuration mistake)."""
        root = Path(directory)
        if not root.is_dir():
            raise ArchiveKeyError(f"SOPBOT_ARCHIVE_PRIVATE_KEYS={root} is not a directory")
        keys: dict[int, rsa.RSAPrivateKey] = {}
        for path in sorted(root.glob("*.pem")):
            if not path.stem.isdigit():
                raise ArchiveKeyError(f"{path}: name it <publickey_ver>.pem, e.g. 3.pem")
            keys[int(path.stem)] = _load_private_key(path.read_bytes(), str(path))
        return cls(keys)

    @property
    def versions(self) -> list[int]:
        return sorted(self._keys)

    def decrypt_random_key(self, publickey_ver: int, encrypt_random_key: str) -> str:
        key = self._keys.get(int(publickey_ver))
        if key is None:
            raise ArchiveKeyError(f"no private key for publickey_ver {publickey_ver} (have {self.versions})")
        return decrypt_random_key(key, encrypt_random_key)
