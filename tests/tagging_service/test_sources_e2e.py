"""Callbacks end to end (encrypted POST -> inbox -> worker) for the app-text and archive-notify sources, and the
archive RSA key vector."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from bot.models import KV, InboxEvent, TimelineEntry
from bot.services import Services
from bot.tagging.archive import ArchiveKeyError, ArchiveKeys
from bot.tagging.models import RuleHit, TaggingMessage
from tests.conftest import VECTORS, fixture_xml, post_event, run_worker


def test_member_text_callback_is_stored_once_and_not_matched(client: Any, services: Services) -> None:
    assert post_event(client, fixture_xml("text")).status_code == 200
    assert post_event(client, fixture_xml("text"), nonce="1").status_code == 200  # same MsgId, another delivery
    run_worker(services)
    with services.transaction() as s:
        rows = s.scalars(select(TaggingMessage)).all()
        statuses = s.scalars(select(InboxEvent.status)).all()
        assert s.scalars(select(RuleHit)).all() == [] and s.scalars(select(TimelineEntry)).all() == []
    assert [(r.source, r.msgid, r.direction, r.userid) for r in rows] == [
        ("app", "7455012345678901234", "employee", "LiMing")]
    assert statuses == ["done"]  # the redelivery has the same payload: one inbox row


def test_msgaudit_notify_callback_is_recorded(client: Any, services: Services) -> None:
    assert post_event(client, fixture_xml("msgaudit_notify")).status_code == 200
    run_worker(services)
    with services.transaction() as s:
        row = s.get(KV, "tagging:msgaudit_notify")
    assert row is not None and row.value["count"] == 1 and row.value["agent_id"] == "2000004"
    assert row.value["puller"] is None


def test_archive_random_key_vector(tmp_path: Any) -> None:
    assert VECTORS is not None
    v = VECTORS["msgaudit_rsa_vector"]
    (tmp_path / f"{v['publickey_ver']}.pem").write_text(v["private_key_pem_pkcs1"], encoding="utf-8")
    keys = ArchiveKeys.from_directory(tmp_path)
    assert keys.versions == [v["publickey_ver"]]
    assert keys.decrypt_random_key(v["publickey_ver"], v["encrypt_random_key"]) == v["expected_decrypted_random_key"]
    with pytest.raises(ArchiveKeyError, match="no private key for publickey_ver 9"):
        keys.decrypt_random_key(9, v["encrypt_random_key"])
    other = ArchiveKeys({1: rsa.generate_private_key(public_exponent=65537, key_size=2048)})
    with pytest.raises(ArchiveKeyError, match="does not decrypt"):
        other.decrypt_random_key(1, v["encrypt_random_key"])
    with pytest.raises(ArchiveKeyError, match="not base64"):
        keys.decrypt_random_key(1, "***")
    assert base64.b64decode(v["encrypt_random_key"])  # the vector itself is well-formed


def test_archive_key_directory_refuses_unversioned_names(tmp_path: Any) -> None:
    (tmp_path / "current.pem").write_text("x", encoding="utf-8")
    with pytest.raises(ArchiveKeyError, match="<publickey_ver>.pem"):
        ArchiveKeys.from_directory(tmp_path)
