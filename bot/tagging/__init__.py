"""Keyword and behaviour tagging engines. Pure: no Flask, Redis, database or network.

What the service calls:
- ``load_rule_file(path)`` / ``parse_keyword_rules(data)`` / ``parse_behaviour_rules(data)`` → rules
- ``KeywordMatcher.compile(keyword_rules)`` once per rule-set version; then per customer message
  ``matcher.match(msg, employee_departments)`` → ``KeywordHit``s, ``matcher.explain(...)`` for the tester
- ``decide(rule, at, history)`` per hit → apply the rule's tags or not (threshold, cooldown, manual removal)
- ``evaluate_event(behaviour_rules, event, counts)`` per event, ``evaluate_inactivity(...)`` per tick
"""

from __future__ import annotations

from bot.tagging.behaviour import (
    BehaviourHit,
    CountsProvider,
    CustomerActivity,
    evaluate_event,
    evaluate_inactivity,
)
from bot.tagging.decide import MANUAL_REMOVAL_BLOCK, Decision, RuleHistory, decide
from bot.tagging.matcher import REGEX_TIMEOUT_S, KeywordHit, KeywordMatcher, MatchOutcome, RuleVerdict
from bot.tagging.model import (
    BehaviourEvent,
    BehaviourKind,
    BehaviourRule,
    EventKind,
    InboundMessage,
    Keyword,
    KeywordRule,
    MatchMode,
    Scope,
    Threshold,
)
from bot.tagging.normalize import normalize
from bot.tagging.rules import (
    RuleError,
    RuleSet,
    load_rule_file,
    parse_behaviour_rules,
    parse_keyword_rules,
    parse_rule_document,
)

__all__ = [
    "MANUAL_REMOVAL_BLOCK",
    "REGEX_TIMEOUT_S",
    "BehaviourEvent",
    "BehaviourHit",
    "BehaviourKind",
    "BehaviourRule",
    "CountsProvider",
    "CustomerActivity",
    "Decision",
    "EventKind",
    "InboundMessage",
    "Keyword",
    "KeywordHit",
    "KeywordMatcher",
    "KeywordRule",
    "MatchMode",
    "MatchOutcome",
    "RuleError",
    "RuleHistory",
    "RuleSet",
    "RuleVerdict",
    "Scope",
    "Threshold",
    "decide",
    "evaluate_event",
    "evaluate_inactivity",
    "load_rule_file",
    "normalize",
    "parse_behaviour_rules",
    "parse_keyword_rules",
    "parse_rule_document",
]
