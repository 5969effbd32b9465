from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.scoring import (
    LedgerEntry,
    PointRule,
    ScoreEvent,
    ScoringConfig,
    decay_factor,
    entries_for_event,
    explain,
    score_at,
)

T0 = datetime(2025, 3, 3, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai
THRESHOLDS = {"engaged": 10, "mql": 40, "sql": 70}


def config(*rules: PointRule, half_life_days: float = 10) -> ScoringConfig:
    return ScoringConfig(rules=rules, half_life_days=half_life_days, stage_thresholds=THRESHOLDS)


def rule(rule_id: str = "price", **kw: object) -> PointRule:
    fields: dict[str, object] = {
        "name": "询价", "on": "keyword_rule_fired", "points": 10, "dimension": "engagement",
        "match": {"rule_id": "kw-price"},
    }
    fields.update(kw)
    return PointRule(id=rule_id, **fields)  # type: ignore[arg-type]


def event(event_id: str, at: datetime = T0, kind: str = "keyword_rule_fired", **attrs: object) -> ScoreEvent:
    return ScoreEvent(id=event_id, kind=kind, customer_id="c1", at=at, attrs=attrs or {"rule_id": "kw-price"})


def feed(cfg: ScoringConfig, events: list[ScoreEvent]) -> list[LedgerEntry]:
    ledger: list[LedgerEntry] = []
    for ev in events:
        ledger += entries_for_event(cfg, ev, ledger)
    return ledger


def test_match_on_kind_and_attrs() -> None:
    cfg = config(rule(), rule("tag", on="tag_added", match={"tag": ("意向:询价", "意向:试用")}, points=5))
    assert [e.rule_id for e in entries_for_event(cfg, event("e1"), [])] == ["price"]
    assert entries_for_event(cfg, event("e2", rule_id="kw-other"), []) == []
    tagged = event("e3", kind="tag_added", tag=["行业:制造", "意向:试用"])  # attrs list: any element matches
    assert [(e.rule_id, e.points) for e in entries_for_event(cfg, tagged, [])] == [("tag", 5)]
    assert entries_for_event(cfg, event("e4", kind="tag_added", other="x"), []) == []


def test_half_life_decay_is_exact() -> None:
    cfg = config(rule(points=80), half_life_days=10)
    ledger = feed(cfg, [event("e1")])
    assert score_at(cfg, ledger, T0).engagement == 80
    assert score_at(cfg, ledger, T0 + timedelta(days=10)).engagement == 40
    assert score_at(cfg, ledger, T0 + timedelta(days=20)).engagement == 20
    assert score_at(cfg, ledger, T0 + timedelta(days=5)).engagement == pytest.approx(80 / 2**0.5)
    assert decay_factor(timedelta(hours=36), 1.5) == 0.5


def test_fit_and_non_decaying_rules_do_not_decay() -> None:
    cfg = config(
        rule("size", on="tag_added", match={"tag": "规模:200人以上"}, points=15, dimension="fit",
             decays=False),
        rule("deleted", on="customer_deleted", match={}, points=-50, decays=False),
        rule(points=20),
    )
    ledger = feed(cfg, [event("t", kind="tag_added", tag="规模:200人以上"), event("k"),
                        event("d", kind="customer_deleted", x=1)])
    later = score_at(cfg, ledger, T0 + timedelta(days=10))
    assert later.fit == 15
    assert later.engagement == -50 + 10
    assert later.total == 15 - 50 + 10
    assert later.breakdown["price"].raw == 20 and later.breakdown["price"].value == 10
    assert later.breakdown["deleted"].value == -50


def test_fit_rule_with_decays_true_still_does_not_decay() -> None:
    cfg = config(rule("size", on="tag_added", match={}, points=15, dimension="fit"))  # decays defaults True
    ledger = feed(cfg, [event("t", kind="tag_added", tag="x")])
    assert score_at(cfg, ledger, T0 + timedelta(days=100)).fit == 15


def test_entries_after_at_are_ignored_and_naive_rejected() -> None:
    cfg = config(rule())
    ledger = feed(cfg, [event("e1", at=T0 + timedelta(days=1))])
    assert score_at(cfg, ledger, T0).total == 0
    with pytest.raises(ValueError, match="aware"):
        score_at(cfg, ledger, datetime(2025, 1, 1))  # naive on purpose
    with pytest.raises(ValueError, match="aware"):
        entries_for_event(cfg, event("e2", at=datetime(2025, 1, 1)), [])


def test_cap_awards_partially_then_nothing() -> None:
    cfg = config(rule(points=15, cap=40))
    ledger = feed(cfg, [event(f"e{i}", at=T0 + timedelta(hours=i)) for i in range(5)])
    assert [e.points for e in ledger] == [15, 15, 10]
    assert score_at(cfg, ledger, T0 + timedelta(hours=5)).breakdown["price"].entries == 3
    assert sum(e.points for e in ledger) == 40


def test_cap_bounds_negative_rules_by_magnitude() -> None:
    cfg = config(rule("nope", match={"rule_id": "kw-no"}, points=-15, cap=20))
    ledger = feed(cfg, [event(f"e{i}", rule_id="kw-no") for i in range(3)])
    assert [e.points for e in ledger] == [-15, -5]


@given(
    points=st.integers(min_value=-50, max_value=50).filter(bool),
    cap=st.integers(min_value=1, max_value=100),
    n=st.integers(min_value=0, max_value=30),
)
def test_cap_is_never_exceeded(points: int, cap: int, n: int) -> None:
    cfg = config(rule(points=points, cap=cap))
    ledger = feed(cfg, [event(f"e{i}", at=T0 + timedelta(minutes=i)) for i in range(n)])
    total = sum(e.points for e in ledger)
    assert abs(total) <= cap
    assert abs(total) == min(cap, abs(points) * n)  # and it is reached when enough events come
    assert all((e.points > 0) == (points > 0) for e in ledger)


def test_repeat_limit_without_window_is_lifetime() -> None:
    cfg = config(rule(repeat_limit=2))
    ledger = feed(cfg, [event(f"e{i}", at=T0 + timedelta(days=30 * i)) for i in range(4)])
    assert len(ledger) == 2


def test_repeat_limit_with_window() -> None:
    cfg = config(rule(points=2, repeat_limit=3, repeat_window=timedelta(days=1)))
    hours = [0, 1, 2, 3, 23, 24, 25, 26, 27]
    ledger = feed(cfg, [event(f"e{h}", at=T0 + timedelta(hours=h)) for h in hours])
    # 0,1,2 fill the window; 3 and 23 are within a day of them. 24 is exactly a day after 0 (outside)
    # with only 1 and 2 inside; 25 sees 2 and 24; 26 sees 24 and 25; 27 sees 24, 25, 26 → full.
    assert [int((e.at - T0) / timedelta(hours=1)) for e in ledger] == [0, 1, 2, 24, 25, 26]


def test_repeat_window_counts_out_of_order_events() -> None:
    cfg = config(rule(repeat_limit=1, repeat_window=timedelta(days=1)))
    late = feed(cfg, [event("later", at=T0 + timedelta(hours=5))])
    assert entries_for_event(cfg, event("earlier", at=T0), late) == []


def test_idempotent_per_rule_and_event() -> None:
    cfg = config(rule(), rule("any_kw", match={}, points=1))
    first = entries_for_event(cfg, event("e1"), [])
    assert {e.rule_id for e in first} == {"price", "any_kw"}
    assert entries_for_event(cfg, event("e1"), first) == []
    # a rule added after the event was scored still gets its entry, the others do not repeat
    assert [e.rule_id for e in entries_for_event(cfg, event("e1"), first[:1])] == [first[1].rule_id]


def test_other_customers_entries_do_not_count() -> None:
    cfg = config(rule(cap=10))
    other = [LedgerEntry("c2", "price", "e1", 10, "engagement", T0)]
    assert [e.points for e in entries_for_event(cfg, event("e1"), other)] == [10]


def test_negative_points_lower_the_score() -> None:
    cfg = config(rule(points=30), rule("nope", match={"rule_id": "kw-no"}, points=-20))
    ledger = feed(cfg, [event("e1"), event("e2", rule_id="kw-no")])
    assert score_at(cfg, ledger, T0).total == 10


def test_explain_in_chinese_and_shanghai_time() -> None:
    cfg = config(
        rule(points=15, cap=20),
        rule("size", name="企业规模200人以上", on="tag_added", match={}, points=15, dimension="fit",
             decays=False),
    )
    events = [event("e1"), event("e2", at=T0 + timedelta(hours=1)), event("t", kind="tag_added", a=1)]
    ledger = feed(cfg, events)
    ledger.append(LedgerEntry("c1", "retired_rule", "e9", 3, "engagement", T0 + timedelta(hours=2)))
    lines = explain(cfg, ledger, T0 + timedelta(days=10))
    assert lines[0] == "2025-03-03 10:00 询价：互动度 +15 分，按 10 天半衰期衰减后计 +7.5 分"
    assert "企业规模200人以上：匹配度 +15 分（不衰减）" in lines[1]
    assert "已停用规则 retired_rule" in lines[3]
    assert lines[2] == (
        "2025-03-03 11:00 询价：互动度 +5 分（已达上限 20 分，部分计入），按 10 天半衰期衰减后计 +2.5 分"
    )
    assert lines[-1] == "合计 26.5 分（匹配度 15.0 分，互动度 11.5 分）"
