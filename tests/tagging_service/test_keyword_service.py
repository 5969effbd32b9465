"""Service-level keyword tagging: archive records in through the API, a real worker, tags out with reasons."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.actions import RemoveTags, TagRef
from bot.apply import apply
from bot.models import CustomerTag, TimelineEntry
from bot.services import Services
from bot.tagging.models import RuleHit, TaggingMessage
from tests.conftest import ADMIN, run_worker

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
CUSTOMER = "wmCUSTOMER000000000000000000001"

RULES = """
keyword_rules:
  - id: pricing
    name: 询价
    keywords: [价格, {text: price, mode: word}]
    negatives: [不需要]
    add_tags: ["意向:询价"]
  - id: exact_no
    name: 无意向
    mode: exact
    keywords: [不用了]
    add_tags: ["状态:无意向"]
    remove_tags: ["意向:询价"]
  - id: prefix_hi
    name: 开场
    mode: prefix
    keywords: [你好]
    add_tags: ["互动:开场"]
  - id: suffix_thanks
    name: 致谢
    mode: suffix
    keywords: [谢谢]
    add_tags: ["互动:致谢"]
  - id: seats
    name: 席位
    keywords: [{text: '\\d+\\s*个?账号', mode: regex}]
    add_tags: ["意向:多账号"]
  - id: trial_group_only
    name: 群里问试用
    keywords: [试用]
    scope: {chat_types: [group]}
    add_tags: ["意向:试用"]
  - id: contract_kf_only
    name: 合同
    keywords: [合同]
    scope: {sources: [kf]}
    add_tags: ["阶段:商务"]
  - id: objection
    name: 嫌贵
    keywords: [太贵]
    threshold: {count: 3, window: 7d}
    add_tags: ["风险:价格敏感"]
  - id: invoice
    name: 发票
    keywords: [发票]
    cooldown: 2d
    add_tags: ["阶段:开票"]
    remove_tags: []
"""


def record(msgid: str, text: str, at: datetime, *, sender: str = CUSTOMER, to: str = "WangFang",
           room: str = "", msgtype: str = "text") -> dict[str, Any]:
    rec: dict[str, Any] = {"msgid": msgid, "action": "send", "from": sender, "tolist": [to], "roomid": room,
                           "msgtime": int(at.timestamp() * 1000), "msgtype": msgtype}
    if msgtype == "text":
        rec["text"] = {"content": text}
    return rec


def post(client: Any, services: Services, records: list[dict[str, Any]]) -> dict[str, Any]:
    resp = client.post("/api/v1/messages", json=records, headers=ADMIN)
    assert resp.status_code == 202, resp.get_json()
    run_worker(services)
    return dict(resp.get_json())


def active_tags(services: Services, ext: str = CUSTOMER) -> dict[str, CustomerTag]:
    from bot.models import Customer

    with services.transaction() as s:
        rows = s.scalars(select(CustomerTag).join(Customer, Customer.id == CustomerTag.customer_id).where(
            Customer.external_userid == ext, CustomerTag.removed_at.is_(None))).all()
    return {f"{r.group_name}:{r.name}": r for r in rows}


@pytest.fixture
def rules(rules_dir: Callable[[str], Path]) -> Path:
    return rules_dir(RULES)


@pytest.mark.parametrize(("text", "tag"), [
    ("请问价格", "意向:询价"),                     # contains
    ("請問價格是多少", "意向:询价"),                # traditional -> simplified
    ("What's the PRICE?", "意向:询价"),            # case, whole word
    ("ＰＲＩＣＥ　ｐｌｅａｓｅ", "意向:询价"),      # full-width -> half-width
    ("不用了", "状态:无意向"),                      # exact
    ("你好，在吗", "互动:开场"),                    # prefix
    ("收到了谢谢", "互动:致谢"),                    # suffix
    ("我们要50个账号", "意向:多账号"),              # regex
])
def test_each_match_mode_tags_through_the_service(client: Any, services: Services, rules: Path, text: str,
                                                   tag: str) -> None:
    post(client, services, [record("m1", text, T0)])
    tags = active_tags(services)
    assert set(tags) == {tag}
    assert tags[tag].source == "keyword_rule" and tags[tag].reason["msgid"] == "m1"


@pytest.mark.parametrize("text", ["不需要价格表", "prices", "不用了谢谢你们", "在吗你好", "谢谢啦收到",
                                  "我们要多个账号"])
def test_non_matches_do_not_tag(client: Any, services: Services, rules: Path, text: str) -> None:
    post(client, services, [record("m1", text, T0)])
    assert active_tags(services) == {}


def test_only_customer_text_is_matched_and_employee_text_is_timeline_only(client: Any, services: Services,
                                                                           rules: Path) -> None:
    post(client, services, [record("e1", "价格表发您了", T0, sender="WangFang", to=CUSTOMER),
                            record("img", "", T0, msgtype="image")])
    assert active_tags(services) == {}
    with services.transaction() as s:
        entries = {e.kind: e.detail for e in s.scalars(select(TimelineEntry)).all()}
    assert entries["message_sent"] == {"direction": "employee", "source": "archive", "msgid": "e1",
                                       "excerpt": "价格表发您了"}
    assert entries["message_received"]["excerpt"] == "[image]"


def test_scope_group_vs_single_and_source(client: Any, services: Services, rules: Path) -> None:
    post(client, services, [record("s1", "想试用一下", T0), record("c1", "合同怎么签", T0)])
    assert active_tags(services) == {}  # 试用 is group-only; 合同 is kf-only and this is the archive
    post(client, services, [record("g1", "想试用一下", T0, room="wrROOM1")])
    assert set(active_tags(services)) == {"意向:试用"}
    with services.transaction() as s:
        hit = s.scalar(select(RuleHit).where(RuleHit.rule_id == "trial_group_only"))
    assert hit is not None and hit.evidence["chat_id"] == "wrROOM1"


def test_threshold_counts_hits_in_the_window(client: Any, services: Services, rules: Path) -> None:
    post(client, services, [record("o1", "太贵了", T0)])
    post(client, services, [record("o2", "还是太贵", T0 + timedelta(days=8))])  # o1 is outside 7 days
    post(client, services, [record("o3", "真的太贵", T0 + timedelta(days=9))])
    assert "风险:价格敏感" not in active_tags(services)
    post(client, services, [record("o4", "太贵", T0 + timedelta(days=10))])
    tag = active_tags(services)["风险:价格敏感"]
    assert tag.reason["decision"] == "apply:threshold:3/3" and tag.reason["msgid"] == "o4"
    with services.transaction() as s:
        decisions = s.scalars(select(RuleHit.decision).where(RuleHit.rule_id == "objection")
                              .order_by(RuleHit.at)).all()
    assert decisions == ["threshold:1/3", "threshold:1/3", "threshold:2/3", "apply:threshold:3/3"]


def test_cooldown_and_manual_removal_block_re_adding(client: Any, services: Services, rules: Path) -> None:
    post(client, services, [record("i1", "发票怎么开", T0)])
    assert "阶段:开票" in active_tags(services)
    # A person removes the tag in the WeCom client (mirrored by fetch_contact as a manual removal).
    with services.transaction() as s:
        apply([RemoveTags(CUSTOMER, (TagRef("阶段", "开票"),), source="wecom", reason={"manual": True},
                          at=T0 + timedelta(hours=1), mark_in_wecom=False)], s, now=T0, context_key="test:rm")
    post(client, services, [record("i2", "发票呢", T0 + timedelta(days=1))])
    assert "阶段:开票" not in active_tags(services)  # within the 2d cooldown of the manual removal
    post(client, services, [record("i3", "发票好了吗", T0 + timedelta(days=3))])
    assert active_tags(services)["阶段:开票"].reason["msgid"] == "i3"
    with services.transaction() as s:
        rows = s.execute(select(RuleHit.hit_key, RuleHit.decision, RuleHit.applied)
                         .where(RuleHit.rule_id == "invoice").order_by(RuleHit.at)).all()
    assert [(k, a) for k, _, a in rows] == [("invoice:archive:i1", True), ("invoice:archive:i2", False),
                                            ("invoice:archive:i3", True)]
    assert rows[1][1].startswith("manual_removal:until=")


def test_cooldown_since_last_application(client: Any, services: Services, rules: Path) -> None:
    post(client, services, [record("i1", "发票", T0)])
    with services.transaction() as s:  # removed by another rule (not a person): only the cooldown holds
        apply([RemoveTags(CUSTOMER, (TagRef("阶段", "开票"),), source="keyword_rule", reason={"rule_id": "x"},
                          mark_in_wecom=False)], s, now=T0 + timedelta(minutes=1), context_key="test:rm")
    post(client, services, [record("i2", "发票", T0 + timedelta(days=1))])
    assert "阶段:开票" not in active_tags(services)
    with services.transaction() as s:
        decision = s.scalar(select(RuleHit.decision).where(RuleHit.hit_key == "invoice:archive:i2"))
    assert decision is not None and decision.startswith("cooldown:until=")


def test_duplicate_messages_are_stored_and_matched_once(client: Any, services: Services, rules: Path) -> None:
    first = post(client, services, [record("d1", "价格", T0), record("d1", "价格", T0)])
    again = post(client, services, [record("d1", "价格", T0)])
    assert first == {"accepted": 1, "duplicates": 1, "errors": []}
    assert again == {"accepted": 0, "duplicates": 1, "errors": []}
    with services.transaction() as s:
        assert len(s.scalars(select(TaggingMessage)).all()) == 1
        assert len(s.scalars(select(RuleHit)).all()) == 1
        assert len(s.scalars(select(TimelineEntry).where(TimelineEntry.kind == "tag_added")).all()) == 1


def test_invalid_archive_records_are_refused(client: Any, services: Services, rules: Path) -> None:
    resp = client.post("/api/v1/messages", json=[{"msgid": "x", "msgtime": "soon"}], headers=ADMIN)
    assert resp.status_code == 400 and "msgtime" in resp.get_json()["error"]
    assert client.post("/api/v1/messages", json=[{"msgid": "x"}]).status_code == 401


def test_removing_rule_removes_its_remove_tags(client: Any, services: Services, rules: Path) -> None:
    post(client, services, [record("a", "价格多少", T0)])
    post(client, services, [record("b", "不用了", T0 + timedelta(minutes=5))])
    tags = active_tags(services)
    assert set(tags) == {"状态:无意向"}
    with services.transaction() as s:
        removed = s.scalar(select(CustomerTag).where(CustomerTag.name == "询价"))
    assert removed is not None and removed.removed_reason is not None
    assert removed.removed_reason["rule_id"] == "exact_no" and removed.removed_reason["source"] == "keyword_rule"
