from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.scoring import (
    Assignment,
    NoSalespersonError,
    Salesperson,
    accept_deadline,
    choose_salesperson,
    escalation_target,
    open_task,
    should_escalate,
    sla_status,
    time_to_first_touch,
)

SH = ZoneInfo("Asia/Shanghai")
OPEN, CLOSE = time(9), time(18)


def fake_add_business_minutes(start: datetime, minutes: int) -> datetime:
    """Mon–Fri 09:00–18:00 Shanghai; stands in for the China-calendar one in bot.sop.timing."""
    t = start.astimezone(SH)
    remaining = timedelta(minutes=minutes)
    while True:
        while t.weekday() >= 5 or t.time() >= CLOSE:
            t = datetime.combine(t.date() + timedelta(days=1), OPEN, tzinfo=SH)
        if t.time() < OPEN:
            t = datetime.combine(t.date(), OPEN, tzinfo=SH)
        left_today = datetime.combine(t.date(), CLOSE, tzinfo=SH) - t
        if remaining <= left_today:
            return (t + remaining).astimezone(UTC)
        remaining -= left_today
        t = datetime.combine(t.date(), CLOSE, tzinfo=SH)


def sh(y: int, mo: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=SH).astimezone(UTC)


def sp(userid: str, capacity: int = 10, open_load: int = 0, **kw: object) -> Salesperson:
    return Salesperson(userid, capacity, open_load, **kw)  # type: ignore[arg-type]


# ---- choose_salesperson ----

def test_owner_first_when_active_with_room() -> None:
    team = [sp("alice"), sp("bob")]
    a = choose_salesperson("bob", team, {"alice": 3})
    assert (a.userid, a.reason, a.over_capacity) == ("bob", "owner", False)
    assert a.new_rr_state == {"alice": 3}  # owner picks do not spend round-robin turns


@pytest.mark.parametrize(
    "owner",
    [sp("bob", capacity=2, open_load=2), sp("bob", active=False)],
    ids=["owner full", "owner inactive"],
)
def test_owner_without_room_falls_back_to_round_robin(owner: Salesperson) -> None:
    a = choose_salesperson("bob", [sp("alice"), owner], {})
    assert (a.userid, a.reason) == ("alice", "round robin")


def test_owner_not_on_team_goes_round_robin() -> None:
    assert choose_salesperson("ops_intern", [sp("alice")], {}).reason == "round robin"


def test_round_robin_is_deterministic_and_smooth() -> None:
    team = [sp("a", weight=2), sp("b"), sp("c")]
    state: dict[str, int] = {}
    picks = []
    for _ in range(8):
        a = choose_salesperson(None, team, state)
        picks.append(a.userid)
        state = dict(a.new_rr_state)
    assert picks == ["a", "b", "c", "a", "a", "b", "c", "a"]
    again = choose_salesperson(None, team, {})
    assert again == choose_salesperson(None, team, {})


def test_round_robin_skips_full_and_inactive_without_banking_credit() -> None:
    team = [sp("a"), sp("b", capacity=1, open_load=1), sp("c", active=False)]
    a = choose_salesperson(None, team, {"b": 5, "c": 7})
    assert a.userid == "a"
    assert a.new_rr_state == {"a": 0, "b": 5, "c": 7}


def test_state_forgets_people_who_left() -> None:
    assert "gone" not in choose_salesperson(None, [sp("a")], {"gone": 9}).new_rr_state


def test_everybody_full_goes_to_least_loaded_flagged() -> None:
    team = [sp("a", capacity=5, open_load=7), sp("b", capacity=10, open_load=11), sp("c", 1, 1, active=False)]
    a = choose_salesperson("a", team, {})
    assert (a.userid, a.reason, a.over_capacity) == ("b", "over capacity", True)


def test_everybody_full_with_fallback() -> None:
    a = choose_salesperson(None, [sp("a", 1, 1)], {}, fallback_userid="team_lead")
    assert (a.userid, a.reason, a.over_capacity) == ("team_lead", "fallback", True)


def test_nobody_active() -> None:
    with pytest.raises(NoSalespersonError):
        choose_salesperson(None, [sp("a", active=False)], {})
    assert choose_salesperson(None, [], {}, fallback_userid="lead").userid == "lead"


def test_bad_team() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        choose_salesperson(None, [sp("a"), sp("a")], {})
    with pytest.raises(ValueError, match="weight"):
        sp("a", weight=0)


team_strategy = st.lists(
    st.builds(
        lambda cap, load, w, active: (cap, load, w, active),
        st.integers(0, 5), st.integers(0, 6), st.integers(1, 4), st.booleans(),
    ),
    min_size=1,
    max_size=6,
)


@given(team=team_strategy, owner=st.one_of(st.none(), st.integers(0, 6)), n=st.integers(1, 30))
def test_never_over_capacity_while_someone_has_room(
    team: list[tuple[int, int, int, bool]], owner: int | None, n: int
) -> None:
    people = {
        f"u{i}": sp(f"u{i}", cap, load, weight=w, active=act) for i, (cap, load, w, act) in enumerate(team)
    }
    state: dict[str, int] = {}
    if not any(p.active for p in people.values()):
        with pytest.raises(NoSalespersonError):
            choose_salesperson(None, list(people.values()), state)
        return
    for _ in range(n):
        someone_has_room = any(p.has_room for p in people.values())
        a = choose_salesperson(None if owner is None else f"u{owner}", list(people.values()), state)
        assert a.over_capacity is not someone_has_room
        chosen = people[a.userid]
        if someone_has_room:
            assert chosen.has_room
        else:
            assert chosen.active
        people[a.userid] = Salesperson(
            chosen.userid, chosen.capacity, chosen.open_load + 1, chosen.weight, chosen.active
        )
        state = dict(a.new_rr_state)


@given(weights=st.lists(st.integers(1, 6), min_size=1, max_size=6), rounds=st.integers(1, 20))
def test_distribution_is_exactly_proportional_to_weights(weights: list[int], rounds: int) -> None:
    team = [sp(f"u{i}", capacity=10_000, weight=w) for i, w in enumerate(weights)]
    state: dict[str, int] = {}
    counts: Counter[str] = Counter()
    for _ in range(sum(weights) * rounds):
        a = choose_salesperson(None, team, state)
        counts[a.userid] += 1
        state = dict(a.new_rr_state)
    assert counts == {f"u{i}": w * rounds for i, w in enumerate(weights)}
    assert all(v == 0 for v in state.values())  # a full cycle returns to the starting state


# ---- SLA ----

def test_fake_business_hours_itself() -> None:
    assert fake_add_business_minutes(sh(2025, 3, 4, 10), 30) == sh(2025, 3, 4, 10, 30)


@pytest.mark.parametrize(
    ("assigned", "deadline"),
    [
        (sh(2025, 3, 4, 10, 0), sh(2025, 3, 4, 10, 30)),  # Tuesday morning
        (sh(2025, 3, 4, 17, 50), sh(2025, 3, 5, 9, 20)),  # across the night
        (sh(2025, 3, 4, 23, 0), sh(2025, 3, 5, 9, 30)),  # arrives at night
        (sh(2025, 3, 7, 17, 45), sh(2025, 3, 10, 9, 15)),  # Friday evening → Monday
        (sh(2025, 3, 8, 11, 0), sh(2025, 3, 10, 9, 30)),  # Saturday
    ],
)
def test_accept_deadline_in_business_minutes(assigned: datetime, deadline: datetime) -> None:
    got = accept_deadline(assigned, 30, fake_add_business_minutes)
    assert got == deadline and got.tzinfo is not None


def test_accept_deadline_wall_clock_and_validation() -> None:
    assert accept_deadline(sh(2025, 3, 8, 11), 30) == sh(2025, 3, 8, 11, 30)
    with pytest.raises(ValueError):
        accept_deadline(datetime(2025, 3, 8, 11), 30)
    with pytest.raises(ValueError):
        accept_deadline(sh(2025, 3, 8, 11), 0)
    with pytest.raises(ValueError, match="result"):
        accept_deadline(sh(2025, 3, 8, 11), 30, lambda s, m: datetime(2025, 3, 8, 12))


def test_sla_status_and_escalation() -> None:
    assignment = Assignment("alice", "round robin", {})
    task = open_task("c1", assignment, sh(2025, 3, 7, 17, 45), 30, fake_add_business_minutes)
    assert task.accept_by == sh(2025, 3, 10, 9, 15)
    saturday = sh(2025, 3, 8, 12)
    assert sla_status(task, saturday) == "pending" and not should_escalate(task, saturday)
    assert sla_status(task, task.accept_by) == "pending"
    late = task.accept_by + timedelta(seconds=1)
    assert sla_status(task, late) == "missed" and should_escalate(task, late)

    on_time = replace(task, accepted_at=task.accept_by)
    assert sla_status(on_time, late) == "accepted" and not should_escalate(on_time, late)
    assert sla_status(on_time, saturday) == "pending"  # replaying a moment before it was accepted

    accepted_late = replace(task, accepted_at=late + timedelta(minutes=5))
    assert sla_status(accepted_late, late + timedelta(hours=1)) == "missed"
    assert not should_escalate(accepted_late, late + timedelta(hours=1))


def test_escalation_target() -> None:
    team = [
        sp("alice", manager="lead_wang"),
        sp("lead_wang", manager="director_li", active=False),
        sp("bob", manager="lead_zhao"),
        sp("lead_zhao"),
        sp("carol"),
        sp("loop_a", manager="loop_b", active=False),
        sp("loop_b", manager="loop_a", active=False),
    ]
    assert escalation_target("bob", team) == "lead_zhao"
    assert escalation_target("alice", team) == "director_li"  # lead on leave → their manager
    assert escalation_target("carol", team) is None
    assert escalation_target("loop_a", team) is None
    assert escalation_target("stranger", team) is None


def test_time_to_first_touch() -> None:
    t0 = sh(2025, 3, 4, 10)
    touches = [t0 - timedelta(days=1), t0 + timedelta(minutes=42), t0 + timedelta(minutes=12)]
    assert time_to_first_touch(t0, touches) == timedelta(minutes=12)
    assert time_to_first_touch(t0, [t0 - timedelta(minutes=1)]) is None
    with pytest.raises(ValueError):
        time_to_first_touch(t0, [datetime(2025, 3, 4, 11)])
