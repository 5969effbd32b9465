from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.scoring import Stage, StageError, StageMachine

SM = StageMachine({"engaged": 10, "mql": 40, "sql": 70})
ALL_ARMED: dict[str, bool] = {}


def test_upward_crossing_promotes() -> None:
    change = SM.on_score(Stage.NEW, 5, 12, ALL_ARMED)
    assert change is not None
    assert (change.from_stage, change.to_stage, change.demotion) == (Stage.NEW, Stage.ENGAGED, False)
    assert "engaged" in change.reason
    assert SM.on_score(Stage.NEW, 5, 9.99, ALL_ARMED) is None
    assert SM.on_score(Stage.NEW, 12, 15, ALL_ARMED) is None  # already above: no crossing


def test_exactly_reaching_the_threshold_counts() -> None:
    assert SM.on_score(Stage.ENGAGED, 39, 40, ALL_ARMED) is not None


def test_big_jump_skips_to_highest_stage_and_sql_creates_assignment() -> None:
    outcome = SM.evaluate(Stage.NEW, 0, 75, ALL_ARMED)
    assert outcome.fired == ("engaged", "mql", "sql")
    assert outcome.change is not None and outcome.change.to_stage is Stage.SQL
    assert outcome.change.creates_assignment
    assert outcome.armed == {"engaged": False, "mql": False, "sql": False}


def test_fires_once_and_rearms_only_after_falling_back() -> None:
    armed: dict[str, bool] = {}
    stage = Stage.ENGAGED
    fired: list[str] = []
    # up across mql, wobble above, fall below, rise again
    for prev, new in [(30, 45), (45, 38.5), (38.5, 41)]:
        outcome = SM.evaluate(stage, prev, new, armed)
        armed = dict(outcome.armed)
        fired += outcome.fired
        if outcome.change:
            stage = outcome.change.to_stage
    assert fired == ["mql", "mql"]  # the second crossing fires again because it fell below 40
    assert stage is Stage.MQL  # but it is no promotion: already MQL


def test_disarmed_threshold_does_not_fire_on_a_crossing() -> None:
    # e.g. previous_score was computed before decay landed it just under: without re-arm, no fire
    outcome = SM.evaluate(Stage.MQL, 39, 41, {"mql": False})
    assert outcome.fired == () and outcome.change is None
    assert outcome.armed["mql"] is False  # 41 is not below 40


def test_hysteresis_delays_rearm() -> None:
    sm = StageMachine({"engaged": 10, "mql": 40, "sql": 70}, hysteresis=5)
    assert sm.evaluate(Stage.MQL, 41, 37, {"mql": False}).armed["mql"] is False  # within the band
    assert sm.evaluate(Stage.MQL, 41, 34.9, {"mql": False}).armed["mql"] is True
    assert sm.evaluate(Stage.MQL, 37, 42, {"mql": False}).fired == ()


@given(st.lists(st.floats(min_value=-20, max_value=100, allow_nan=False), min_size=1, max_size=40))
def test_fires_exactly_on_rearmed_upward_crossings(scores: list[float]) -> None:
    armed: dict[str, bool] = {}
    prev = 0.0
    fires = 0
    expected = 0
    below = True  # 0 is below 40
    for s in scores:
        outcome = SM.evaluate(Stage.ENGAGED, prev, s, armed)
        armed = dict(outcome.armed)
        fires += "mql" in outcome.fired
        if below and s >= 40:
            expected += 1
        below = s < 40
        prev = s
    assert fires == expected


def test_score_never_demotes() -> None:
    assert SM.on_score(Stage.SQL, 80, 0, ALL_ARMED) is None


def test_explicit_demotion_is_flagged_and_needs_reason() -> None:
    change = StageMachine.demote(Stage.SQL, Stage.ENGAGED, "回收至培育池：30天未跟进", by="rule:recycle")
    assert change.demotion and change.by == "rule:recycle" and change.reason.startswith("回收")
    assert not change.creates_assignment
    with pytest.raises(StageError):
        StageMachine.demote(Stage.SQL, Stage.ENGAGED, " ", by="u1")
    with pytest.raises(StageError):
        StageMachine.demote(Stage.ENGAGED, Stage.MQL, "not back", by="u1")
    with pytest.raises(StageError):
        StageMachine.demote(Stage.WON, Stage.SQL, "use reopen", by="u1")


def test_demoted_customer_is_not_promoted_back_until_a_new_crossing() -> None:
    armed = dict(SM.evaluate(Stage.MQL, 60, 75, {"engaged": False, "mql": False}).armed)
    demotion = StageMachine.demote(Stage.SQL, Stage.MQL, "销售判定暂无预算", by="u1")
    assert SM.on_score(demotion.to_stage, 75, 78, armed) is None
    outcome = SM.evaluate(demotion.to_stage, 78, 65, armed)
    assert outcome.change is None
    back = SM.on_score(Stage.MQL, 65, 71, outcome.armed)
    assert back is not None and back.to_stage is Stage.SQL


def test_terminal_stages_ignore_scores_and_only_reopen_leaves_them() -> None:
    won = StageMachine.close(Stage.SQL, Stage.WON, "签约", by="u1")
    assert won.to_stage.terminal
    assert SM.on_score(Stage.WON, 0, 100, ALL_ARMED) is None
    assert SM.on_score(Stage.LOST, 0, 100, ALL_ARMED) is None
    assert SM.evaluate(Stage.LOST, 0, 100, ALL_ARMED).fired  # still reported, just no move
    with pytest.raises(StageError):
        StageMachine.close(Stage.WON, Stage.LOST, "x", by="u1")
    with pytest.raises(StageError):
        StageMachine.close(Stage.MQL, Stage.SQL, "x", by="u1")
    reopened = StageMachine.reopen(Stage.LOST, Stage.MQL, "客户重新询价", by="u1")
    assert reopened.reopen and reopened.demotion and reopened.to_stage is Stage.MQL
    with pytest.raises(StageError):
        StageMachine.reopen(Stage.MQL, Stage.NEW, "x", by="u1")
    with pytest.raises(StageError):
        StageMachine.reopen(Stage.WON, Stage.LOST, "x", by="u1")


def test_bad_machine_config() -> None:
    with pytest.raises(ValueError):
        StageMachine({"engaged": 1, "mql": 2})
    with pytest.raises(ValueError):
        StageMachine({"engaged": 1, "mql": 2, "sql": 3}, hysteresis=-1)
