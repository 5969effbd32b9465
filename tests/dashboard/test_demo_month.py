"""The demo month (`sopbot dev` on an empty database): played through the pipeline, every dashboard chart has data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bot.models import Customer, InboxEvent, TimelineEntry
from bot.services import Services
from bot.sop.models import SopTask
from bot.wecom.simulator.month import MonthResult, database_is_empty
from tests.conftest import ADMIN
from tests.dashboard.conftest import DEMO_DAYS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _report(client: Any, name: str) -> dict[str, Any]:
    resp = client.get(f"/api/v1/reports/{name}", headers=ADMIN)  # the default period: the last 30 days
    assert resp.status_code == 200, resp.get_json()
    return dict(resp.get_json())


def test_demo_month_fills_funnel_channel_sop_and_ab_charts(services: Services, client: Any,
                                                            demo_month: MonthResult) -> None:
    assert not database_is_empty(services)
    assert demo_month.customers >= DEMO_DAYS and demo_month.tasks_done > 0 and demo_month.messages > 0
    with services.transaction() as s:
        # Through the pipeline: every customer arrived as a callback, and the history spans the simulated days.
        assert s.scalar(select(func.count()).select_from(InboxEvent).where(
            InboxEvent.status.notin_(("done", "ignored")))) == 0
        assert s.scalar(select(func.count()).select_from(Customer)) == demo_month.customers
        first, last = s.execute(select(func.min(TimelineEntry.at), func.max(TimelineEntry.at)).where(
            TimelineEntry.kind == "customer_added")).one()
        assert (last - first).days >= DEMO_DAYS - 3
        assert s.scalar(select(func.count()).select_from(SopTask).where(SopTask.variant_id.is_not(None))) > 0

    funnel = _report(client, "funnel")
    reached = {r["stage"]: r["reached"] for r in funnel["rows"]}
    assert reached["new"] == demo_month.customers and reached["engaged"] > 0
    channels = _report(client, "channels")
    assert sum(r["customers"] for r in channels["rows"]) >= demo_month.customers
    assert "9月直播报名页" in {r["channel"] for r in channels["rows"]}
    execution = _report(client, "sop_execution")
    assert execution["rows"] and execution["summary"]["done_on_time"] > 0
    steps = _report(client, "sop_steps")["rows"]
    assert sum(r["done"] for r in steps) == demo_month.tasks_done
    ab = [r for r in steps if r["variant"]]
    assert ab and {r["step"] for r in ab} == {"d7_case_study"}
    assert any(r["replied"] for r in steps)  # customers answered some steps within 48 h
    assert _report(client, "keyword_hits")["rows"]


def test_dashboard_of_the_demo_month_in_a_real_browser(services: Services, demo_month: MonthResult, browser: Any,
                                                       live_server: Any) -> None:
    base, authorize = live_server
    services.settings = services.settings.with_overrides(dashboard_admins=frozenset({"LiMing"}))
    authorize.userid = "LiMing"
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    try:
        page = context.new_page()
        page.goto(f"{base}/dashboard")
        page.locator("#wecom-login-button").click()  # WeCom OAuth through the authorize stand-in
        page.locator("section[data-report]").first.wait_for()
        assert page.url.split("#")[0] == f"{base}/dashboard"  # browsers keep the #wechat_redirect fragment
        assert authorize.seen and authorize.seen[-1]["redirect_uri"] == f"{base}/dashboard/oauth/callback"
        assert page.locator("section[data-report]").count() == 6
        assert page.locator("section#funnel svg rect").count() == 5
        assert page.locator("section#channels svg > text", has_text="9月直播报名页").count() == 1
        for chart in ("funnel", "channels", "sop_execution", "sop_steps"):
            assert int(page.locator(f"section#{chart}").get_attribute("data-rows") or 0) > 0, chart
        assert page.locator("section#sop_steps svg text", has_text="d7_case_study [").count() >= 1  # A/B
        with page.expect_download() as download:
            page.locator("section#funnel a[download]").click()
        assert download.value.suggested_filename.startswith("funnel_")
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)
    finally:
        context.close()
