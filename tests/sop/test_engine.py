from __future__ import annotations

import copy
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.sop.definition import Calendar, Executor, SopDefinition, load_sops, parse_sop
from bot.sop.engine import (
    CustomerView,
    EnrollmentRecord,
    FrequencyBudget,
    Touch,
    TriggerEvent,
    check_exit,
    choose_variant,
    crowd_matches,
    enrollment_seed,
    plan_steps,
    preview,
    resolve_executor,
    should_enroll,
)
from scripts_library import CONTENT_ROOT

CST = ZoneInfo("Asia/Shanghai")
NOW = datetime(2025, 9, 26, 7, 0, tzinfo=UTC)  # Fri 15:00 in Shanghai
SOPS = load_sops(CONTENT_ROOT / "sops")
NURTURE = SOPS["nurture_webinar"]


def cst(*args: int) -> datetime:
    return datetime(*args, tzinfo=CST)  # type: ignore[arg-type,misc]


def customer(**over: Any) -> CustomerView:
    base: dict[str, Any] = {
        "id": "c1",
        "tags": frozenset({"来源:直播"}),
        "stage": "engaged",
        "channel": "webinar",
        "score": 30.0,
        "added_at": NOW - timedelta(days=2),
        "owner": "wangfang",
    }
    base.update(over)
    return CustomerView(**base)


def filter_sop(flt: dict[str, Any], **over: Any) -> SopDefinition:
    data: dict[str, Any] = {"id": "f", "crowd": {"filter": flt}, "steps": [{"id": "a", "day": 0, "content": "x"}]}
    data.update(over)
    return parse_sop(data)


# ------------------------------------------------------------------------------------------ crowd


def test_crowd_and_or_tree() -> None:
    sop = filter_sop(
        {
            "all": [
                {"any": [{"tag_has": "行业:制造"}, {"channel_in": ["webinar", "website"]}]},
                {"stage_at_least": "engaged"},
                {"score_gte": 20},
                {"score_lte": 80},
                {"tag_has_not": "意向:询价"},
                {"added_within_days": 7},
            ]
        }
    )
    assert crowd_matches(sop.crowd, customer(), NOW)
    assert not crowd_matches(sop.crowd, customer(channel="expo2025_booth12"), NOW)
    assert crowd_matches(sop.crowd, customer(channel=None, tags=frozenset({"行业:制造"})), NOW)
    assert not crowd_matches(sop.crowd, customer(stage="new"), NOW)
    assert not crowd_matches(sop.crowd, customer(stage="lost"), NOW)  # lost is not "≥ engaged"
    assert not crowd_matches(sop.crowd, customer(score=10), NOW)
    assert not crowd_matches(sop.crowd, customer(tags=frozenset({"意向:询价"})), NOW)
    assert not crowd_matches(sop.crowd, customer(added_at=NOW - timedelta(days=8)), NOW)
    with pytest.raises(ValueError, match="needs `now`"):
        crowd_matches(sop.crowd, customer())
    stage_in = filter_sop({"stage_in": ["MQL", "SQL"]})
    assert crowd_matches(stage_in.crowd, customer(stage="MQL")) and not crowd_matches(stage_in.crowd, customer())


def test_triggers() -> None:
    no_history: list[EnrollmentRecord] = []
    added = TriggerEvent("customer_added", channel="webinar")
    assert should_enroll(NURTURE, customer(), added, no_history, NOW) == (True, "trigger customer_added", 1)
    assert should_enroll(NURTURE, customer(), TriggerEvent("tag_added", tag="来源:直播"), no_history, NOW).enroll
    other = should_enroll(NURTURE, customer(), TriggerEvent("customer_added", channel="website"), no_history, NOW)
    assert not other.enroll and "matches no trigger" in other.reason
    assert not should_enroll(NURTURE, customer(), None, no_history, NOW).enroll
    mql = parse_sop(
        {
            "id": "m",
            "crowd": {"trigger": {"event": "stage_reached", "stage": "MQL"}},
            "steps": [{"id": "a", "day": 0, "content": "x"}],
        }
    )
    assert should_enroll(mql, customer(), TriggerEvent("stage_reached", stage="SQL"), [], NOW).enroll
    assert not should_enroll(mql, customer(), TriggerEvent("stage_reached", stage="engaged"), [], NOW).enroll


def test_not_enrolled_when_already_exiting_or_deleted() -> None:
    event = TriggerEvent("customer_added", channel="webinar")
    asked = should_enroll(NURTURE, customer(tags=frozenset({"意向:询价"})), event, [], NOW)
    assert not asked.enroll and "意向:询价" in asked.reason
    assert not should_enroll(NURTURE, customer(stage="SQL"), event, [], NOW).enroll
    assert should_enroll(NURTURE, customer(deleted=True), event, [], NOW).reason == "customer deleted"


def _record(rotation: int, started: datetime, exited: datetime | None, sop_id: str = "f") -> EnrollmentRecord:
    return EnrollmentRecord(sop_id, "c1", rotation, started, exited, "completed" if exited else None)


@pytest.mark.parametrize(
    ("reentry", "history", "expected"),
    [
        ("never", [], (True, 1)),
        ("never", [_record(1, NOW - timedelta(days=100), NOW - timedelta(days=60))], (False, 2)),
        ("after_exit", [_record(1, NOW - timedelta(days=10), None)], (False, 2)),
        ("after_exit", [_record(1, NOW - timedelta(days=10), NOW - timedelta(days=1))], (True, 2)),
        ({"every": "30 days"}, [_record(1, NOW - timedelta(days=20), NOW - timedelta(days=5))], (False, 2)),
        (
            {"every": 30},
            [
                _record(1, NOW - timedelta(days=40), NOW - timedelta(days=5)),
                _record(2, NOW - timedelta(days=31), NOW - timedelta(days=2)),
            ],
            (True, 3),
        ),
        ({"every": 30}, [_record(1, NOW - timedelta(days=40), None)], (False, 2)),
        # Another SOP's or customer's history does not count.
        ("never", [_record(1, NOW - timedelta(days=9), None, sop_id="other")], (True, 1)),
    ],
)
def test_reentry_policies(reentry: Any, history: list[EnrollmentRecord], expected: tuple[bool, int]) -> None:
    sop = filter_sop({"tag_has": "来源:直播"}, reentry=reentry)
    decision = should_enroll(sop, customer(), None, history, NOW)
    assert (decision.enroll, decision.rotation) == expected, decision.reason


# ------------------------------------------------------------------------------------------ plans


def test_plan_steps_for_nurture() -> None:
    plan = plan_steps(NURTURE, NOW, customer(), rng_seed="enr-1")
    assert [p.step_id for p in plan] == [
        "d0_materials",
        "d1_replay_case",
        "d3_pain_survey",
        "d7_case_study",
        "d14_trial_invite",
        "d21_consult_booking",
        "d30_last_call",
    ]
    due = {p.step_id: p.due_at for p in plan}
    assert due["d0_materials"] == NOW
    assert due["d1_replay_case"] == cst(2025, 9, 28, 10, 0)  # Saturday rolls onto the 调休 Sunday
    assert due["d3_pain_survey"] == cst(2025, 9, 29, 10, 0)
    assert due["d7_case_study"] == cst(2025, 10, 9, 10, 30)  # 10-03 is National Day
    assert due["d14_trial_invite"] == cst(2025, 10, 10, 10, 0)
    assert all(a.due_at <= b.due_at for a, b in zip(plan, plan[1:], strict=False))
    assert {p.executor for p in plan} == {"wangfang"}
    assert plan[3].variant_id in {"A_story", "B_data"} and plan[3].script_id.startswith("nurture.day7_case_")
    assert plan[4].touchpoint == "mass_send" and plan[4].variant_id is None
    orphan = plan_steps(NURTURE, NOW, customer(owner=None), rng_seed="enr-1")
    assert {p.executor for p in orphan} == {"wangfang"}  # SOP fallback


def test_ab_variant_is_deterministic_and_weighted() -> None:
    sop = parse_sop(
        {
            "id": "ab",
            "crowd": {"trigger": {"event": "customer_added"}},
            "steps": [
                {
                    "id": "s",
                    "day": 0,
                    "variants": [{"id": "A", "script": "a", "weight": 70}, {"id": "B", "script": "b", "weight": 30}],
                }
            ],
        }
    )
    step = sop.steps[0]
    assert choose_variant(step, "enr-42") == choose_variant(step, "enr-42")
    assert plan_steps(sop, NOW, customer(), "enr-42") == plan_steps(sop, NOW, customer(), "enr-42")
    counts = Counter(v.id for i in range(20_000) if (v := choose_variant(step, f"enr-{i}")) is not None)
    assert abs(counts["A"] / 20_000 - 0.70) < 0.015
    assert abs(counts["B"] / 20_000 - 0.30) < 0.015
    # The draw is per step: two A/B steps in one enrollment are independent.
    other = parse_sop(
        {
            "id": "ab",
            "crowd": {"trigger": {"event": "customer_added"}},
            "steps": [
                {
                    "id": "t",
                    "day": 0,
                    "variants": [{"id": "A", "script": "a", "weight": 1}, {"id": "B", "script": "b", "weight": 1}],
                }
            ],
        }
    ).steps[0]
    pairs = Counter(
        (choose_variant(step, f"e{i}").id, choose_variant(other, f"e{i}").id)  # type: ignore[union-attr]
        for i in range(4000)
    )
    assert len(pairs) == 4


def test_resolve_executor() -> None:
    roles = {"csm": ["a", "b", "c"]}
    assert resolve_executor(Executor(), "owner1", roles) == "owner1"
    assert resolve_executor(Executor(), None, roles, fallback="fb") == "fb"
    assert resolve_executor(Executor("owner", None, "step_fb"), None, roles, fallback="fb") == "step_fb"
    assert resolve_executor(Executor("user", "lisi"), "owner1", roles) == "lisi"
    picked = resolve_executor(Executor("role", "csm"), "owner1", roles, key="c42")
    assert picked in roles["csm"] and picked == resolve_executor(Executor("role", "csm"), None, roles, key="c42")
    assert resolve_executor(Executor("role", "sales"), "owner1", roles, fallback="fb") == "fb"
    assert resolve_executor(Executor("role", "sales"), "owner1", {}) is None
    assert len({resolve_executor(Executor("role", "csm"), None, roles, key=f"c{i}") for i in range(50)}) == 3


# ------------------------------------------------------------------------------------------- exit


def test_check_exit() -> None:
    started = NOW
    assert check_exit(NURTURE, customer(), started, None) == (False, "")
    assert check_exit(NURTURE, customer(tags=frozenset({"意向:询价"})), started, None) == (True, "tag_added:意向:询价")
    assert check_exit(NURTURE, customer(stage="won"), started, None) == (True, "stage_at_least:SQL")
    assert check_exit(NURTURE, customer(stage="lost"), started, None).exit is False
    assert check_exit(NURTURE, customer(deleted=True), started, None) == (True, "deleted")
    # The nurture SOP deliberately does not exit on reply; the welcome SOP does, only for replies after enrollment.
    replied = started + timedelta(hours=1)
    assert check_exit(NURTURE, customer(), started, replied).exit is False
    welcome = SOPS["welcome_new_customer"]
    assert check_exit(welcome, customer(), started, replied) == (True, "replied")
    assert check_exit(welcome, customer(), started, started - timedelta(minutes=1)).exit is False
    dormant = SOPS["reactivate_dormant"]
    inside = customer(channel="website", score=50)
    assert check_exit(dormant, inside, started, None, NOW).exit is False
    assert check_exit(dormant, customer(channel="website", score=5), started, None, NOW) == (True, "left_crowd")


# ----------------------------------------------------------------------------------------- budget


def test_budget_allows_within_caps() -> None:
    budget = FrequencyBudget()
    decision = budget.decide("c1", "chat", "wangfang", cst(2025, 9, 24, 10), [])
    assert decision.allowed and decision.action is None
    touches = [
        Touch("c1", "liuyang", "chat", cst(2025, 9, 24, 9)),  # another employee
        Touch("c2", "wangfang", "chat", cst(2025, 9, 24, 9)),  # another customer
        Touch("c1", "wangfang", "moments", cst(2025, 9, 24, 9)),  # not a 1:1 touch
        Touch("c1", "wangfang", "chat", cst(2025, 9, 23, 23, 59)),
    ]  # yesterday (Shanghai)
    assert budget.decide("c1", "chat", "wangfang", cst(2025, 9, 24, 10), touches).allowed
    busy = [Touch("c1", "wangfang", "chat", cst(2025, 9, 24, 9))]
    assert budget.decide("c1", "group", "wangfang", cst(2025, 9, 24, 10), busy).allowed


def test_budget_defer_skip_drop() -> None:
    budget = FrequencyBudget()
    busy = [
        Touch("c1", "wangfang", "chat", cst(2025, 9, 24, 9), "other_sop", "s1"),
        Touch("c1", "wangfang", "chat", cst(2025, 9, 25, 9), "other_sop", "s2"),
    ]  # tomorrow is taken too
    deferred = budget.decide("c1", "chat", "wangfang", cst(2025, 9, 24, 15), busy, "defer")
    assert (deferred.allowed, deferred.action) == (False, "defer")
    assert deferred.defer_until == cst(2025, 9, 26, 15)
    assert "1/day per employee" in deferred.reason and "2025-09-24" in deferred.reason
    # With the SOP calendar, the deferral also lands on a working day: Sat 27 is off, Sun 28 works (调休).
    busy.append(Touch("c1", "wangfang", "chat", cst(2025, 9, 26, 9)))
    on_calendar = budget.decide(
        "c1", "chat", "wangfang", cst(2025, 9, 24, 15), busy, "defer", Calendar(business_days=True)
    )
    assert on_calendar.defer_until == cst(2025, 9, 28, 15)
    skipped = budget.decide("c1", "mass_send", "wangfang", cst(2025, 9, 24, 15), busy, "skip")
    assert (skipped.allowed, skipped.action, skipped.defer_until) == (False, "skip", None)
    dropped = budget.decide("c1", "chat", "wangfang", cst(2025, 9, 24, 15), busy, "drop")
    assert (dropped.allowed, dropped.action) == (False, "drop") and dropped.reason


def test_budget_mass_send_month_cap() -> None:
    # Default cap: days in the month (September: 30), counted across employees and SOPs.
    sept = [Touch("c1", f"e{d}", "mass_send", cst(2025, 9, d, 10)) for d in range(1, 31)]
    decision = FrequencyBudget().decide("c1", "mass_send", "new", cst(2025, 9, 30, 15), sept)
    assert decision.action == "defer" and "30/month" in decision.reason
    assert decision.defer_until == cst(2025, 10, 1, 15)
    assert FrequencyBudget().decide("c1", "mass_send", "new", cst(2025, 9, 30, 15), sept[:29]).allowed
    # A chat is not a mass send: only the per-day cap applies to it.
    assert FrequencyBudget().decide("c1", "chat", "new", cst(2025, 9, 30, 15), sept).allowed
    strict = FrequencyBudget(mass_sends_per_month=4)
    four = [Touch("c1", f"e{d}", "mass_send", cst(2025, 2, d, 10)) for d in range(1, 5)]
    assert strict.decide("c1", "mass_send", "x", cst(2025, 2, 20, 10), four, "skip").action == "skip"
    assert strict.decide("c1", "mass_send", "x", cst(2025, 3, 1, 10), four).allowed


# ---------------------------------------------------------------------------------------- preview


def test_preview_lists_expected_rows_without_side_effects() -> None:
    crowd = [customer(), customer(id="c2", tags=frozenset({"意向:询价"})), customer(id="c3", owner="liuyang")]
    history = [EnrollmentRecord("nurture_webinar", "c3", 1, NOW - timedelta(days=90), NOW - timedelta(days=60))]
    before = (copy.deepcopy(NURTURE), copy.deepcopy(crowd), copy.deepcopy(history))
    rows = preview(NURTURE, crowd, NOW, 13, existing=history)  # up to Thu 10-09 15:00: d7 in, d14 out
    assert (NURTURE, crowd, history) == before
    assert rows == preview(NURTURE, crowd, NOW, 13, existing=history)  # pure: same input, same output

    c1 = [r for r in rows if r.customer_id == "c1"]
    assert [r.step_id for r in c1] == ["d0_materials", "d1_replay_case", "d3_pain_survey", "d7_case_study"]
    assert c1[1].due_at == cst(2025, 9, 28, 10, 0) and c1[1].executor == "wangfang"
    expected_variant = plan_steps(NURTURE, NOW, crowd[0], enrollment_seed("nurture_webinar", "c1", 1))[3]
    assert c1[3].variant == expected_variant.variant_id
    assert all("as if triggered now" in r.note for r in c1)
    not_in = {r.customer_id: r.note for r in rows if r.step_id is None}
    assert "意向:询价" in not_in["c2"] and "re-entry: never" in not_in["c3"]


def test_preview_applies_budget() -> None:
    welcome = SOPS["welcome_new_customer"]  # capped: skip
    busy = [Touch("c1", "wangfang", "chat", cst(2025, 9, 27, 9, 0))]
    rows = preview(welcome, [customer()], NOW, 3, budget=FrequencyBudget(), touches=busy)
    by_step = {r.step_id: r for r in rows}
    assert by_step["intro"].due_at == cst(2025, 9, 26, 15, 10)
    assert by_step["product_overview"].due_at is None and "skip:" in by_step["product_overview"].note
    nurture_rows = preview(
        NURTURE,
        [customer()],
        NOW,
        5,
        budget=FrequencyBudget(),
        touches=[Touch("c1", "wangfang", "chat", cst(2025, 9, 28, 9, 0))],
    )
    d1 = next(r for r in nurture_rows if r.step_id == "d1_replay_case")
    assert d1.due_at == cst(2025, 9, 29, 10, 0) and "defer" in d1.note  # 09-29 is then taken by d3 as well
    d3 = next(r for r in nurture_rows if r.step_id == "d3_pain_survey")
    assert d3.due_at == cst(2025, 9, 30, 10, 0) and "defer" in d3.note


def test_preview_filter_sop_and_horizon() -> None:
    dormant = SOPS["reactivate_dormant"]
    inside = customer(channel="website", score=50)
    rows = preview(dormant, [inside, customer()], NOW, 14, roles={"csm": ["csm1"]})
    assert [(r.customer_id, r.step_id) for r in rows] == [("c1", "monthly_checkin"), ("c1", None)]
    assert rows[0].due_at == cst(2025, 10, 9, 10, 0) and rows[0].executor == "csm1"
    assert "not in crowd" in rows[1].note
    assert len(preview(dormant, [inside], NOW, 60, roles={"csm": ["csm1"]})) == 2
