"""Rules as data: /api/v1/rules CRUD, rebuild on version change (no restart), the rule tester, explain."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bot.models import KV
from bot.services import Services
from bot.tagging import service
from tests.conftest import ADMIN, run_worker
from tests.tagging_service.test_keyword_service import CUSTOMER, T0, active_tags, post, record

FILE_RULES = """
keyword_rules:
  - id: file_pricing
    name: 询价
    keywords: [价格]
    negatives: [不需要]
    add_tags: ["意向:询价"]
  - id: file_objection
    name: 嫌贵
    keywords: [太贵]
    threshold: {count: 2, window: 7d}
    cooldown: 30d
    add_tags: ["风险:价格敏感"]
  - id: file_group
    name: 群
    keywords: [报名]
    scope: {chat_types: [group]}
    add_tags: ["活动:报名"]
"""

DEMO = {"id": "demo_req", "name": "要演示", "keywords": ["演示", {"text": "demo", "mode": "word"}],
        "negatives": ["不用"], "add_tags": ["意向:演示"]}


@pytest.fixture
def rules(rules_dir: Callable[[str], Path]) -> Path:
    return rules_dir(FILE_RULES)


def test_api_rule_crud_takes_effect_without_restart(client: Any, services: Services, rules: Path) -> None:
    post(client, services, [record("m1", "能演示一下吗", T0)])
    assert "意向:演示" not in active_tags(services)

    created = client.post("/api/v1/rules", json=DEMO, headers=ADMIN)
    assert created.status_code == 201 and created.get_json()["kind"] == "keyword"
    post(client, services, [record("m2", "能演示一下吗", T0 + timedelta(minutes=1))])
    assert active_tags(services)["意向:演示"].reason["rule_id"] == "demo_req"

    # Replace: the new definition is what the next message sees (the compiled matcher was rebuilt).
    replaced = client.put("/api/v1/rules/demo_req", json={**DEMO, "keywords": ["方案"], "add_tags": ["意向:方案"]},
                          headers=ADMIN)
    assert replaced.status_code == 200
    post(client, services, [record("m3", "发个方案", T0 + timedelta(minutes=2))])
    assert "意向:方案" in active_tags(services)

    assert client.delete("/api/v1/rules/demo_req", headers=ADMIN).status_code == 200
    post(client, services, [record("m4", "再发个方案", T0 + timedelta(minutes=3))])
    with services.transaction() as s:
        version = s.get(KV, service.RULES_VERSION_KEY)
    assert version is not None and version.value["n"] == 3
    listing = {r["id"]: r for r in client.get("/api/v1/rules", headers=ADMIN).get_json()["items"]}
    assert "demo_req" not in listing and listing["file_pricing"]["read_only"] is True


def test_rules_version_change_rebuilds_the_cached_matcher(services: Services, rules: Path) -> None:
    with services.transaction() as s:
        first = service.current_rules(s)
        assert service.current_rules(s) is first  # cached while the version is unchanged
        service.bump_rules_version(s, T0)
    with services.transaction() as s:
        second = service.current_rules(s)
    assert second is not first and second.token != first.token


def test_api_rule_validation_and_file_rules_are_read_only(client: Any, services: Services, rules: Path) -> None:
    bad = client.post("/api/v1/rules", json={"id": "x", "name": "x", "keywords": [], "add_tags": ["a:b"]},
                      headers=ADMIN)
    assert bad.status_code == 400 and "keywords" in bad.get_json()["error"]
    clash = client.post("/api/v1/rules", json={**DEMO, "id": "file_pricing"}, headers=ADMIN)
    assert clash.status_code == 409
    assert client.delete("/api/v1/rules/file_pricing", headers=ADMIN).status_code == 409
    assert client.put("/api/v1/rules/nope", json={**DEMO, "id": "nope"}, headers=ADMIN).status_code == 404
    assert client.post("/api/v1/rules", json=DEMO, headers=ADMIN).status_code == 201
    assert client.post("/api/v1/rules", json=DEMO, headers=ADMIN).status_code == 409
    behaviour = client.post("/api/v1/rules", json={"id": "b1", "name": "群", "kind": "joined_group",
                                                   "add_tags": ["活动:进群"]}, headers=ADMIN)
    assert behaviour.status_code == 201 and behaviour.get_json()["kind"] == "behaviour"
    assert client.get("/api/v1/rules/b1", headers=ADMIN).get_json()["definition"]["kind"] == "joined_group"


def _results(client: Any, **body: Any) -> dict[str, dict[str, Any]]:
    resp = client.post("/api/v1/rules/test", json=body, headers=ADMIN)
    assert resp.status_code == 200, resp.get_json()
    return {r["rule_id"]: r for r in resp.get_json()["results"]}


def test_rule_tester_says_why_and_why_not(client: Any, services: Services, rules: Path) -> None:
    fired = _results(client, text="价格多少")["file_pricing"]
    assert fired["fired"] and fired["would_apply"] and fired["keyword"] == "价格"
    blocked = _results(client, text="不需要价格表")["file_pricing"]
    assert not blocked["fired"] and "negative:不需要" in blocked["reason"]
    scoped = _results(client, text="我要报名", chat_type="single")["file_group"]
    assert not scoped["fired"] and "scope:chat_type" in scoped["reason"]
    assert _results(client, text="我要报名", chat_type="group")["file_group"]["fired"]
    threshold = _results(client, text="太贵了")["file_objection"]
    assert threshold["fired"] and not threshold["would_apply"] and threshold["decision"] == "threshold:1/2"


def test_rule_tester_uses_the_customer_history(client: Any, services: Services, rules: Path) -> None:
    now = datetime.now(UTC)
    post(client, services, [record("o1", "太贵", now - timedelta(days=2)),
                            record("o2", "太贵了", now - timedelta(days=1))])
    assert "风险:价格敏感" in active_tags(services)
    result = _results(client, text="太贵", external_userid=CUSTOMER)["file_objection"]
    assert result["fired"] and not result["would_apply"] and result["decision"].startswith("cooldown:until=")
    assert client.post("/api/v1/rules/test", json={"text": ""}, headers=ADMIN).status_code == 400
    assert client.post("/api/v1/rules/test", json={"text": "x", "source": "sms"}, headers=ADMIN).status_code == 400


def test_explain_prints_rule_source_excerpt_and_removal(client: Any, services: Services, rules: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.tagging import cli

    post(client, services, [record("p1", "请问价格多少？", T0)])
    monkeypatch.setattr(cli, "_services", lambda: services)
    out = CliRunner().invoke(cli.explain, [CUSTOMER, "意向:询价"])
    assert out.exit_code == 0, out.output
    assert "当前在客户" in out.output and "file_pricing" in out.output and "请问价格多少" in out.output
    assert "archive msgid=p1" in out.output and "2026-03-02 10:00:00" in out.output  # Asia/Shanghai

    from bot.actions import RemoveTags, TagRef
    from bot.apply import apply

    with services.transaction() as s:
        apply([RemoveTags(CUSTOMER, (TagRef("意向", "询价"),), source="manual", reason={"userid": "WangFang"},
                          mark_in_wecom=False)], s, now=T0 + timedelta(days=1), context_key="test:manual")
    out = CliRunner().invoke(cli.explain, [CUSTOMER, "意向:询价"])
    assert "已于 2026-03-03 10:00:00" in out.output and "来源 manual" in out.output and "userid=WangFang" in out.output
    assert "历史:" in out.output and "移除" in out.output
    missing = CliRunner().invoke(cli.explain, [CUSTOMER, "意向:不存在"])
    assert "从未有过标签" in missing.output


def test_ingest_command_reads_json_lines_and_arrays(client: Any, services: Services, rules: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from bot.tagging import cli

    monkeypatch.setattr(cli, "_services", lambda: services)
    lines = tmp_path / "a.jsonl"
    lines.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        record("j1", "价格", T0), record("j2", "你好", T0), {"msgid": ""}]) + "\n", encoding="utf-8")
    array = tmp_path / "b.json"
    array.write_text(json.dumps([record("j1", "价格", T0)]), encoding="utf-8")
    out = CliRunner().invoke(cli.ingest, [str(lines)])
    assert out.exit_code == 0 and "2 stored, 0 already known, 1 invalid" in out.output
    out = CliRunner().invoke(cli.ingest, [str(array)])
    assert "0 stored, 1 already known" in out.output
    run_worker(services)
    assert "意向:询价" in active_tags(services)
    with services.transaction() as s:
        assert s.scalar(select(KV).where(KV.key == service.RULES_VERSION_KEY)) is None
