"""The pieces together on the shipped example config: events → ledger → score → stage → assignment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.scoring import (
    LedgerEntry,
    Salesperson,
    ScoreEvent,
    Stage,
    StageMachine,
    choose_salesperson,
    entries_for_event,
    load_config,
    open_task,
    score_at,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "scripts_library" / "content" / "scoring.yaml"
T0 = datetime(2025, 3, 3, 2, 0, tzinfo=UTC)


def test_decision_maker_at_a_target_company_becomes_sql_and_is_routed() -> None:
    config = load_config(EXAMPLE)
    machine = StageMachine.from_config(config)
    journey: list[tuple[str, dict[str, object]]] = [
        ("customer_added", {"channel": "webinar"}),
        ("tag_added", {"tag": ["规模:200人以上", "行业:制造"]}),
        ("tag_added", {"tag": "角色:IT负责人"}),
        ("link_opened", {"material_type": "case_study"}),
        ("keyword_rule_fired", {"rule_id": "kw-pricing"}),
        ("keyword_rule_fired", {"rule_id": "kw-demo-request"}),
    ]
    ledger: list[LedgerEntry] = []
    stage, previous = Stage.NEW, 0.0
    armed: dict[str, bool] = {}
    changes = []
    for i, (kind, attrs) in enumerate(journey):
        at = T0 + timedelta(hours=i)
        event = ScoreEvent(id=f"ev{i}", kind=kind, customer_id="wm_c1", at=at, attrs=attrs)
        ledger += entries_for_event(config, event, ledger)
        ledger += entries_for_event(config, event, ledger)  # a retried job adds nothing
        score = score_at(config, ledger, at).total
        outcome = machine.evaluate(stage, previous, score, armed)
        armed, previous = dict(outcome.armed), score
        if outcome.change:
            changes.append(outcome.change)
            stage = outcome.change.to_stage
    assert len(ledger) == 7  # size and industry come from one tag event: two rules, two entries
    assert [c.to_stage for c in changes] == [Stage.ENGAGED, Stage.MQL, Stage.SQL]
    assert changes[-1].creates_assignment

    team = [Salesperson("zhangsan", 20, 20, manager="lead"), Salesperson("lisi", 20, 3, manager="lead")]
    assignment = choose_salesperson("zhangsan", team, {})
    assert (assignment.userid, assignment.reason) == ("lisi", "round robin")  # the owner is full
    task = open_task("wm_c1", assignment, T0 + timedelta(hours=5), config.sla_minutes)
    assert task.accept_by - task.assigned_at == timedelta(minutes=30)


def test_three_weeks_of_silence_halves_engagement_not_fit() -> None:
    config = load_config(EXAMPLE)
    events = [
        ScoreEvent("a", "tag_added", "c", T0, {"tag": "角色:老板"}),
        ScoreEvent("b", "keyword_rule_fired", "c", T0, {"rule_id": "kw-contract-invoice"}),
    ]
    ledger: list[LedgerEntry] = []
    for ev in events:
        ledger += entries_for_event(config, ev, ledger)
    later = score_at(config, ledger, T0 + timedelta(days=21))
    assert (later.fit, later.engagement) == (12, 12.5)
