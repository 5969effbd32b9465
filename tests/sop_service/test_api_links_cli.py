"""Admin API (scripts, SOPs, preview, tasks), tracked links and the CLI."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from bot.cli import main as cli_main
from bot.models import TimelineEntry
from bot.services import Services
from bot.sop.models import SopTask
from bot.sop.service import render_task
from tests.conftest import ADMIN, env_for_tests
from tests.sop_service.helpers import add_customer, make_library, tasks

START = datetime(2025, 9, 22, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai


@pytest.fixture
def content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_library(tmp_path, keep_shipped=True)
    monkeypatch.setenv("SOPBOT_CONTENT_DIR", str(root))
    return root


NEW_SCRIPT = {"id": "test.hello", "title": "测试问候", "tags": ["测试"],
              "parts": [{"text": "{{ customer.name }}您好，我是{{ owner.name }}"}],
              "example": {"customer": {"name": "李雷"}, "owner": {"name": "王芳", "userid": "wangfang"}}}


def test_scripts_crud_validated_before_write(client: Any, content: Path) -> None:
    listed = client.get("/api/v1/scripts?q=直播 回放", headers=ADMIN).get_json()
    assert [s["id"] for s in listed["items"]] == ["nurture.day1_replay"]
    got = client.get("/api/v1/scripts/nurture.day1_replay", headers=ADMIN).get_json()
    assert got["parts"][1]["type"] == "link"

    resp = client.post("/api/v1/scripts", json={"category": "测试", "script": NEW_SCRIPT}, headers=ADMIN)
    assert resp.status_code == 201, resp.get_json()
    assert client.get("/api/v1/scripts/test.hello", headers=ADMIN).status_code == 200  # visible at once
    assert (content / "scripts" / "测试.yaml").is_file()

    broken = {**NEW_SCRIPT, "parts": [{"text": "{{ customer.nmae }}"}]}
    resp = client.put("/api/v1/scripts/test.hello", json={"script": broken}, headers=ADMIN)
    assert resp.status_code == 422 and "测试.yaml:" in resp.get_json()["error"]
    assert "customer.nmae" in resp.get_json()["error"]
    assert "nmae" not in (content / "scripts" / "测试.yaml").read_text(encoding="utf-8")  # nothing written

    changed = {**NEW_SCRIPT, "title": "新标题"}
    assert client.put("/api/v1/scripts/test.hello", json={"script": changed}, headers=ADMIN).status_code == 200
    assert client.get("/api/v1/scripts/test.hello", headers=ADMIN).get_json()["title"] == "新标题"

    # A script an SOP uses cannot be deleted; an unused one can.
    resp = client.delete("/api/v1/scripts/nurture.day1_replay", headers=ADMIN)
    assert resp.status_code == 422 and "unknown script 'nurture.day1_replay'" in resp.get_json()["error"]
    assert client.delete("/api/v1/scripts/test.hello", headers=ADMIN).status_code == 200
    assert client.get("/api/v1/scripts/test.hello", headers=ADMIN).status_code == 404


def test_sops_crud_and_preview_without_side_effects(client: Any, services: Services, content: Path) -> None:
    assert "nurture_webinar" in [s["id"] for s in client.get("/api/v1/sops", headers=ADMIN).get_json()["items"]]
    doc = {"id": "api_sop", "name": "API SOP", "crowd": {"filter": {"tag_has": "行业:制造"}},
           "steps": [{"id": "hi", "day": 0, "content": "newcust.intro"}]}
    assert client.post("/api/v1/sops", json={"sop": doc}, headers=ADMIN).status_code == 201
    bad = {**doc, "steps": [{"id": "hi", "day": 0, "content": "no.such.script"}]}
    resp = client.put("/api/v1/sops/api_sop", json={"sop": bad}, headers=ADMIN)
    assert resp.status_code == 422 and "api_sop.yaml:" in resp.get_json()["error"]
    assert client.get("/api/v1/sops/api_sop", headers=ADMIN).get_json()["steps"][0]["scripts"] == ["newcust.intro"]

    add_customer(services, "wmP", "wangfang", START, state="webinar", name="韩梅梅")
    with services.transaction() as s:
        before = (s.scalar(select(func.count()).select_from(SopTask)),
                  s.scalar(select(func.count()).select_from(TimelineEntry)))
    resp = client.post("/api/v1/sops/welcome_new_customer/preview",
                       json={"days": 30, "now": "2025-09-23T10:00:00+08:00"}, headers=ADMIN)
    rows = resp.get_json()["items"]
    assert resp.status_code == 200 and [r["step"] for r in rows if r["customer"] == "wmP"]
    with services.transaction() as s:
        after = (s.scalar(select(func.count()).select_from(SopTask)),
                 s.scalar(select(func.count()).select_from(TimelineEntry)))
    assert before == after
    assert client.delete("/api/v1/sops/api_sop", headers=ADMIN).status_code == 200
    assert client.get("/api/v1/sops/api_sop", headers=ADMIN).status_code == 404


def test_skip_needs_a_reason_and_is_recorded(client: Any, services: Services) -> None:
    add_customer(services, "wmK", "wangfang", START, state="webinar")
    task = next(t for t in tasks(services, "wmK") if t.state == "pending")
    assert client.post(f"/api/v1/tasks/{task.id}/skip", json={}, headers=ADMIN).status_code == 400
    resp = client.post(f"/api/v1/tasks/{task.id}/skip", json={"reason": "客户出差"}, headers=ADMIN)
    assert resp.status_code == 200 and resp.get_json()["state"] == "skipped"
    assert resp.get_json()["reason"] == "客户出差"
    body = client.get("/api/v1/customers/wmK", headers=ADMIN).get_json()
    assert any(e["kind"] == "sop_step_skipped" and e["detail"]["reason"] == "客户出差" for e in body["timeline"])


def test_tracked_link_records_and_redirects_forged_is_404(client: Any, services: Services) -> None:
    add_customer(services, "wmL", "wangfang", START, state="webinar", name="周杰")
    settings = services.settings
    with services.transaction() as s:
        real = s.scalars(select(SopTask).where(SopTask.sop_id == "nurture_webinar")).first()
        assert real is not None
        # The day-1 step (two links) as it will be when it comes due.
        task = SopTask(customer_id=real.customer_id, owner_userid=real.owner_userid, sop_id=real.sop_id,
                       step_id="d1_replay_case", script_id="nurture.day1_replay")
        rendered = render_task(s, task, secret=settings.secret_key, public_url=settings.public_url,
                               company="云帆", now=START, tz=settings.tz)
    urls = [p.url for p in rendered.parts if p.type == "link"]
    assert len(urls) == 2 and all(re.fullmatch(rf"{settings.public_url}/t/[0-9a-z]+\.[\w-]+", u) for u in urls)
    assert all(len(u.rsplit("/", 1)[1]) < 40 for u in urls)  # compact
    path = urls[1].removeprefix(settings.public_url)
    resp = client.get(path)  # public: no admin token
    assert resp.status_code == 302 and resp.headers["Location"] == "https://www.example.com/cases/xinghai"
    body = client.get("/api/v1/customers/wmL", headers=ADMIN).get_json()
    (opened,) = [e for e in body["timeline"] if e["kind"] == "link_opened"]
    assert opened["detail"]["script"] == "nurture.day1_replay" and opened["detail"]["step"] == "d1_replay_case"
    assert opened["detail"]["material"].startswith("案例｜星海精密") and opened["detail"]["sop"] == "nurture_webinar"

    token = path.rsplit("/", 1)[1]
    link_id, sig = token.split(".", 1)
    forged = [f"{int(link_id, 36) + 1:x}.{sig}", f"{link_id}.{sig[:-1]}{'A' if sig[-1] != 'A' else 'B'}", "abc",
              f"{link_id}"]
    for bad in forged:
        assert client.get(f"/t/{bad}").status_code == 404
    body = client.get("/api/v1/customers/wmL", headers=ADMIN).get_json()
    assert [e["kind"] for e in body["timeline"]].count("link_opened") == 1


def test_cli_check_and_preview(services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               database_url: str, redis_url: str) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli_main, ["check"])
    assert ok.exit_code == 0 and ok.output.startswith("ok:")
    root = make_library(tmp_path, keep_shipped=True)
    (root / "sops" / "broken.yaml").write_text("id: broken\ncrowd: {trigger: [{event: customer_added}]}\n"
                                               "steps:\n  - {id: a, day: 0, content: no.such}\n", encoding="utf-8")
    bad = runner.invoke(cli_main, ["check", str(root)])
    assert bad.exit_code == 1 and f"{root / 'sops' / 'broken.yaml'}:4: step 'a' uses unknown script" in bad.output

    for key, value in env_for_tests(database_url, redis_url).items():
        monkeypatch.setenv(key, value)
    add_customer(services, "wmV", "wangfang", START, state="website")  # not enrolled in the nurture yet
    out = runner.invoke(cli_main, ["sop", "preview", "nurture_webinar", "--days", "30",
                                   "--now", (START + timedelta(hours=1)).isoformat()])
    assert out.exit_code == 0, out.output
    assert "wmV" in out.output and "d7_case_study/" in out.output and "d30_last_call" not in out.output
