"""Lead scoring (pure): point ledger with caps, repeat limits and decay; lifecycle stages driven by
threshold crossings; MQL → SQL routing with capacity, an accept SLA and escalation.

No Flask, DB, Redis or network here: the service loads the config (`load_config`), persists the
`LedgerEntry` rows, the stage, the armed map and the round-robin state, and calls these functions.
"""

from __future__ import annotations

from bot.scoring.ledger import RuleScore, Score, decay_factor, entries_for_event, explain, score_at
from bot.scoring.model import (
    KNOWN_EVENT_KINDS,
    LedgerEntry,
    PointRule,
    ScoreEvent,
    ScoringConfig,
    ScoringConfigError,
)
from bot.scoring.routing import (
    Assignment,
    LeadTask,
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
from bot.scoring.rules import load_config, parse_config, parse_config_text
from bot.scoring.stages import ScoreOutcome, Stage, StageChange, StageError, StageMachine

__all__ = [
    "KNOWN_EVENT_KINDS",
    "Assignment",
    "LeadTask",
    "LedgerEntry",
    "NoSalespersonError",
    "PointRule",
    "RuleScore",
    "Salesperson",
    "Score",
    "ScoreEvent",
    "ScoreOutcome",
    "ScoringConfig",
    "ScoringConfigError",
    "Stage",
    "StageChange",
    "StageError",
    "StageMachine",
    "accept_deadline",
    "choose_salesperson",
    "decay_factor",
    "entries_for_event",
    "escalation_target",
    "explain",
    "load_config",
    "open_task",
    "parse_config",
    "parse_config_text",
    "score_at",
    "should_escalate",
    "sla_status",
    "time_to_first_touch",
]
