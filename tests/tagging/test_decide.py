from __future__ import annotations

from datetime import timedelta

import pytest

from bot.tagging import MANUAL_REMOVAL_BLOCK, RuleHistory, Threshold, decide

from .factories import T0, rule

DAY = timedelta(days=1)
THREE_IN_WEEK = rule("r", "价格", threshold=Threshold(count=3, window=timedelta(days=7)))


def test_no_threshold_no_cooldown_applies() -> None:
    assert decide(rule("r", "价格"), T0, RuleHistory()).apply


def test_threshold_counts_the_current_hit() -> None:
    assert not decide(THREE_IN_WEEK, T0, RuleHistory(hits=(T0 - DAY,))).apply
    decision = decide(THREE_IN_WEEK, T0, RuleHistory(hits=(T0 - 2 * DAY, T0 - DAY)))
    assert decision.apply and decision.reason == "apply:threshold:3/3"


def test_threshold_window_is_inclusive_and_old_hits_expire() -> None:
    assert decide(THREE_IN_WEEK, T0, RuleHistory(hits=(T0 - 7 * DAY, T0 - DAY))).apply
    decision = decide(THREE_IN_WEEK, T0, RuleHistory(hits=(T0 - 8 * DAY, T0 - DAY)))
    assert not decision.apply and decision.reason == "threshold:2/3"


def test_hits_spent_on_an_application_do_not_count_again() -> None:
    history = RuleHistory(hits=(T0 - 3 * DAY, T0 - 2 * DAY, T0 - DAY), last_applied_at=T0 - DAY)
    assert decide(THREE_IN_WEEK, T0, history).reason == "threshold:1/3"


def test_cooldown_after_last_application() -> None:
    cooled = rule("r", "价格", cooldown=7 * DAY)
    assert not decide(cooled, T0, RuleHistory(last_applied_at=T0 - 6 * DAY)).apply
    assert decide(cooled, T0, RuleHistory(last_applied_at=T0 - 6 * DAY)).reason.startswith("cooldown:until=")
    assert decide(cooled, T0, RuleHistory(last_applied_at=T0 - 7 * DAY)).apply


def test_manual_removal_blocks_for_the_cooldown() -> None:
    cooled = rule("r", "价格", cooldown=7 * DAY)
    blocked = decide(cooled, T0, RuleHistory(manually_removed_at=T0 - 6 * DAY))
    assert not blocked.apply and blocked.reason.startswith("manual_removal:")
    assert decide(cooled, T0, RuleHistory(manually_removed_at=T0 - 7 * DAY)).apply


def test_manual_removal_default_block_without_cooldown() -> None:
    plain = rule("r", "价格")
    assert MANUAL_REMOVAL_BLOCK == timedelta(days=30)
    assert not decide(plain, T0, RuleHistory(manually_removed_at=T0 - 29 * DAY)).apply
    assert decide(plain, T0, RuleHistory(manually_removed_at=T0 - 30 * DAY)).apply


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        decide(rule("r", "价格"), T0.replace(tzinfo=None), RuleHistory())
