"""Structured logs: JSON lines, the inbox/job context on every line of a task, secrets never written."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.config import ConfigError, load_settings
from bot.logs import configure, log_context, secrets_of
from bot.models import InboxEvent
from bot.services import Services
from tests.conftest import env_for_tests, fixture_xml, post_event, run_worker

ADD = "change_external_contact__add_external_contact"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def captured() -> Iterator[Any]:
    """`configure(...)` writing into a buffer; the root logger's previous handlers come back afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    buffers: list[io.StringIO] = []

    def install(fmt: str = "json", secrets: list[str] | None = None) -> io.StringIO:
        buf = io.StringIO()
        configure(fmt, secrets=secrets or [], stream=buf)
        buffers.append(buf)
        return buf

    yield install
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_level_logger_message_and_extra(captured: Any) -> None:
    buf = captured("json")
    log = logging.getLogger("sopbot.test")
    log.info("hello %s", "世界", extra={"outbox_id": 7})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    first, second = lines(buf)
    assert first["msg"] == "hello 世界" and first["level"] == "INFO" and first["logger"] == "sopbot.test"
    assert first["outbox_id"] == 7 and first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


def test_context_is_bound_inside_the_block_only(captured: Any) -> None:
    buf = captured("json")
    log = logging.getLogger("sopbot.test")
    with log_context(inbox_id=1), log_context(job_id="event-1"):
        log.info("inside")
        log.info("explicit wins", extra={"inbox_id": 2})
    log.info("outside")
    inside, explicit, outside = lines(buf)
    assert (inside["inbox_id"], inside["job_id"]) == (1, "event-1")
    assert explicit["inbox_id"] == 2
    assert "inbox_id" not in outside and "job_id" not in outside


def test_lines_logged_while_processing_an_event_carry_inbox_and_job_ids(
        captured: Any, client: Any, services: Services, sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import handlers

    real = handlers.REGISTRY["change_external_contact:add_external_contact"]

    def chatty(event: Any, store: Any) -> Any:
        logging.getLogger("sopbot.handlers.test").info("handling %s", event.key)
        return real(event, store)

    monkeypatch.setitem(handlers.REGISTRY, "change_external_contact:add_external_contact", chatty)
    assert post_event(client, fixture_xml(ADD)).status_code == 200
    with services.transaction() as s:
        inbox_id = s.scalars(select(InboxEvent.id)).one()
    buf = captured("json")
    run_worker(services)
    logged = lines(buf)
    (handling,) = [r for r in logged if r["msg"].startswith("handling")]
    assert handling["inbox_id"] == inbox_id
    assert handling["job_id"] == f"event-{inbox_id}" and handling["job_kind"] == "process_event"
    # the outbox jobs that followed carry their own job and row ids
    outbox_lines = [r for r in logged if r.get("job_kind") == "run_outbox" and r["logger"].startswith("sopbot")]
    assert outbox_lines and all(r["job_id"] == f"outbox-{r['outbox_id']}" for r in outbox_lines)
    assert all("inbox_id" not in r for r in outbox_lines)


def test_secrets_are_masked_in_messages_and_tracebacks(captured: Any, settings: Any) -> None:
    secrets = secrets_of(settings)
    assert {settings.admin_token, settings.encoding_aes_key, settings.agent_secret, settings.callback_token} <= set(
        secrets)
    buf = captured("json", secrets)
    log = logging.getLogger("sopbot.test")
    log.warning("config %s %s %s %s", settings.admin_token, settings.encoding_aes_key, settings.agent_secret,
                settings.callback_token)
    log.warning("GET https://qyapi.weixin.qq.com/cgi-bin/user/get?userid=LiMing&access_token=TOK3n-value_123")
    log.info("gettoken?corpid=ww1&corpsecret=someOtherSecret99 answered", extra={"url": "x?access_token=abc123"})
    log.info("header Authorization: Bearer sk-live-abcdef0123")
    try:
        raise ConnectionError(f"refused: /cgi-bin/message/send?access_token=zzTOKzz ({settings.agent_secret})")
    except ConnectionError:
        log.exception("send failed")
    out = buf.getvalue()
    for secret in (*secrets, "TOK3n-value_123", "someOtherSecret99", "abc123", "sk-live-abcdef0123", "zzTOKzz"):
        assert secret not in out, secret
    records = lines(buf)
    assert records[1]["msg"].endswith("userid=LiMing&access_token=***")
    assert records[2]["url"] == "x?access_token=***"
    assert "refused" in records[4]["exc"] and "***" in records[4]["exc"]


def test_text_format_appends_the_context(captured: Any) -> None:
    buf = captured("text")
    with log_context(inbox_id=5):
        logging.getLogger("sopbot.test").info("plain")
    line = buf.getvalue().strip()
    assert line.endswith("sopbot.test: plain inbox_id=5") and " INFO " in line


def test_log_format_setting_is_validated(database_url: str, redis_url: str) -> None:
    env = env_for_tests(database_url, redis_url)
    assert load_settings(env).log_format is None  # each command picks its default
    assert load_settings({**env, "SOPBOT_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="SOPBOT_LOG_FORMAT"):
        load_settings({**env, "SOPBOT_LOG_FORMAT": "xml"})


def test_sopbot_worker_writes_json_lines_with_job_ids(client: Any, services: Services) -> None:
    """The real entry point: `sopbot worker --burst` configured from SOPBOT_LOG_FORMAT."""
    xml = ("<xml><ToUserName><![CDATA[ww59709431338c5fb3]]></ToUserName><FromUserName><![CDATA[sys]]>"
           "</FromUserName><CreateTime>1735690000</CreateTime><MsgType><![CDATA[event]]></MsgType>"
           "<Event><![CDATA[some_future_event]]></Event></xml>")
    assert post_event(client, xml).status_code == 200
    with services.transaction() as s:
        inbox_id = s.scalars(select(InboxEvent.id)).one()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPBOT_", "WECOM_", "PROMETHEUS_"))}
    env.update(env_for_tests(services.settings.database_url, services.redis_url), SOPBOT_LOG_FORMAT="json")
    done = subprocess.run([sys.executable, "-m", "bot.cli", "worker", "--burst"], cwd=ROOT, env=env,  # noqa: S603
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert records and len(records) == len([ln for ln in done.stderr.splitlines() if ln.strip()])  # JSON only
    (unknown,) = [r for r in records if r["msg"].startswith("no handler for some_future_event")]
    assert unknown["inbox_id"] == inbox_id and unknown["job_id"] == f"event-{inbox_id}"
    rq_lines = [r for r in records if r["logger"] == "rq.worker" and r.get("job_id") == f"event-{inbox_id}"]
    assert any("Job OK" in r["msg"] for r in rq_lines)  # rq's own lines inside the job carry the id too
    assert "test-admin-token" not in done.stderr and "test-agent-secret" not in done.stderr
