"""End to end in headless Chromium: a live server of the app, the WeCom simulator, a stand-in `wx`.

The browser goes through OAuth (the authorize page answered with a simulator code), the page signs
wx.config/wx.agentConfig, asks the stand-in for the context and the current customer, and talks to
/sidebar/api like it would inside WeCom. Playwright's `expect` waits for each state; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from bot.models import CorpTag, CustomerTag
from bot.services import Services
from bot.sop.models import SopTask
from bot.wecom.jssdk import sign_jsapi
from tests.conftest import SimHarness, run_worker
from tests.sidebar.conftest import DOCS, add_customer, add_task

pytestmark = pytest.mark.browser


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _ticket(sim: SimHarness, kind: str) -> str:
    tickets = [t for t, v in sim.state.tickets.items() if v["kind"] == kind]
    assert len(tickets) == 1
    return tickets[0]


def test_profile_loads_for_a_follower_with_a_signed_handshake(
        open_sidebar: Callable[..., Any], services: Services, sim: SimHarness, live_server: tuple[str, Any]) -> None:
    expect = _expect()
    ext = add_customer(services, sim)
    page = open_sidebar("WangFang", ext)
    expect(page.locator("#c-name")).to_have_text("周杰")
    expect(page.locator("#tab-profile")).to_contain_text("王芳（我）")
    expect(page.locator("#tab-profile")).to_contain_text("扫描二维码")
    base, authorize = live_server
    assert page.url.split("#")[0] == base + "/sidebar/"  # back from OAuth to the page asked for
    assert authorize.seen[-1]["redirect_uri"] == base + "/sidebar/oauth/callback"

    calls = page.evaluate("window.__wxCalls")
    by_name = {c["name"]: c["args"] for c in calls}
    url = base + "/sidebar/"
    agent = by_name["agentConfig"]
    assert agent["signature"] == sign_jsapi(_ticket(sim, "agent_config"), agent["nonceStr"], agent["timestamp"], url)
    cfg = by_name["config"]
    assert cfg["signature"] == sign_jsapi(_ticket(sim, "corp"), cfg["nonceStr"], cfg["timestamp"], url)
    assert [c["name"] for c in calls if c["name"] in ("getContext", "getCurExternalContact")] == \
        ["getContext", "getCurExternalContact"]

    cookie = next(c for c in page.context.cookies() if c["name"] == "sopbot_sidebar")
    assert cookie["httpOnly"] is True
    assert page.evaluate("document.cookie") == ""  # the session is out of reach of page scripts

    page.get_by_role("tab", name="资料").click()
    expect(page.locator("#tab-profile")).to_be_visible()
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "sidebar.png"), full_page=False)


def test_a_non_follower_sees_403_in_chinese(open_sidebar: Callable[..., Any], services: Services,
                                            sim: SimHarness) -> None:
    expect = _expect()
    ext = add_customer(services, sim)
    page = open_sidebar("ZhaoLei", ext)
    expect(page.locator("#status")).to_contain_text("您不是该客户的跟进人")
    expect(page.locator("#c-name")).to_have_text("客户侧边栏")  # nothing of the customer reached the page
    expect(page.locator("#tab-profile")).to_be_empty()


def test_editing_a_tag_reaches_wecom_mark_tag(open_sidebar: Callable[..., Any], services: Services,
                                             sim: SimHarness) -> None:
    expect = _expect()
    ext = add_customer(services, sim)
    before = len(sim.ok_calls("externalcontact/mark_tag"))
    page = open_sidebar("WangFang", ext)
    expect(page.locator("#c-name")).to_have_text("周杰")
    page.get_by_role("tab", name="标签").click()
    page.locator('#tag-editor input[value="意向程度:高"]').check()
    page.locator("#tag-note").fill("电话里确认了预算")
    page.get_by_role("button", name="保存标签").click()
    group = page.locator("#tab-tags .tagcard").filter(has_text="意向程度")
    expect(group).to_contain_text("王芳 手动，电话里确认了预算")

    run_worker(services)
    marks = sim.ok_calls("externalcontact/mark_tag")[before:]
    assert len(marks) == 1
    body = marks[0]["body"]
    with services.transaction() as s:
        high = s.scalar(select(CorpTag.id).where(CorpTag.group_name == "意向程度", CorpTag.name == "高"))
    assert body["userid"] == "WangFang" and body["external_userid"] == ext
    assert body["add_tag"] == [high] and not body.get("remove_tag")
    with services.transaction() as s:
        row = s.scalar(select(CustomerTag).where(CustomerTag.group_name == "意向程度", CustomerTag.name == "高"))
        assert row is not None and row.source == "manual" and row.reason["by"] == "WangFang"


def test_send_on_a_task_passes_script_and_media_to_send_chat_message_and_marks_it_done(
        open_sidebar: Callable[..., Any], services: Services, sim: SimHarness) -> None:
    expect = _expect()
    ext = add_customer(services, sim)
    task_id = add_task(services, ext, "WangFang", "nurture.day7_case_data", overdue=True)
    page = open_sidebar("WangFang", ext)
    card = page.locator(f'#tab-tasks article[data-task="{task_id}"]')
    expect(card).to_be_visible()  # open tasks come first when there are any
    expect(card).to_contain_text("周杰，一张图看懂 120 家工厂上线后的变化")
    expect(card).to_contain_text("已逾期")

    card.get_by_role("button", name="发送").click()
    expect(card).to_have_count(0)
    expect(page.locator("#toast")).to_have_text("任务已完成")

    sent = [c["args"] for c in page.evaluate("window.__wxCalls") if c["name"] == "sendChatMessage"]
    assert [m["msgtype"] for m in sent] == ["text", "image"]
    assert sent[0]["text"]["content"].startswith("周杰，一张图看懂 120 家工厂上线后的变化")
    assert sent[0]["enterChat"] is True
    media_id = sent[1]["image"]["mediaid"]
    assert sim.state.media[media_id]["filename"] == "roi_infographic.png"  # uploaded as WeCom temp media
    with services.transaction() as s:
        task = s.get(SopTask, task_id)
        assert task is not None and task.state == "done" and task.completed_by == "WangFang"


def test_quick_reply_search_finds_a_script_by_a_chinese_word(open_sidebar: Callable[..., Any], services: Services,
                                                              sim: SimHarness) -> None:
    expect = _expect()
    ext = add_customer(services, sim)
    page = open_sidebar("WangFang", ext)
    expect(page.locator("#c-name")).to_have_text("周杰")
    page.get_by_role("tab", name="话术").click()
    page.locator("#reply-q").fill("白皮书")
    hit = page.locator('#reply-list article[data-script="nurture.day0_materials"]')
    expect(hit).to_be_visible()
    from scripts_library import load_library

    expect(page.locator("#reply-list article")).to_have_count(len(load_library().search("白皮书")))
    expect(page.locator('#reply-list article[data-script="newcust.intro"]')).to_have_count(0)
    page.locator("#reply-q").fill("没有这种话术")
    expect(page.locator("#reply-list")).to_contain_text("没有找到相关话术")


def test_task_list_from_the_reminder_link_goes_through_oauth(open_sidebar: Callable[..., Any], services: Services,
                                                             sim: SimHarness, live_server: tuple[str, Any]) -> None:
    expect = _expect()
    ext = add_customer(services, sim)
    task_id = add_task(services, ext, "WangFang", "newcust.intro")
    page = open_sidebar("WangFang", path="/sidebar/tasks")
    assert page.url.split("#")[0] == live_server[0] + "/sidebar/tasks"
    card = page.locator(f'article[data-task="{task_id}"]')
    expect(card).to_contain_text("周杰")
    card.get_by_role("button", name="已完成").click()
    expect(card).to_have_count(0)
    with services.transaction() as s:
        task = s.get(SopTask, task_id)
        assert task is not None and task.state == "done"
