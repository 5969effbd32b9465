"""Whether a hit applies its rule's tags: threshold, cooldown, manual removal. Pure: the service loads the
rule's history for the customer, calls ``decide`` and records the outcome (and the hit) itself.

Order of checks, first failing one wins:
1. a person removed one of the rule's tags: no re-adding for ``rule.cooldown``, or
   ``MANUAL_REMOVAL_BLOCK`` when the rule has none (the rule must not fight the person);
2. cooldown since the rule last applied its tags;
3. threshold: ``count`` hits within ``window`` ending at this hit, the current hit included. Hits at or
   before the last application were "spent" on it and do not count again, so "3 hits in 7 days" means
   3 new hits for every re-application.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.tagging.model import BehaviourRule, KeywordRule

MANUAL_REMOVAL_BLOCK = timedelta(days=30)
"""How long a manual removal blocks re-adding when the rule has no cooldown of its own."""


@dataclass(frozen=True, slots=True)
class RuleHistory:
    """This rule's past for one customer (all aware UTC)."""

    hits: Sequence[datetime] = ()  # earlier hits of the rule, NOT including the one being decided
    last_applied_at: datetime | None = None  # when the rule last applied its tags
    manually_removed_at: datetime | None = None  # last time a person removed one of the rule's tags


@dataclass(frozen=True, slots=True)
class Decision:
    apply: bool
    reason: str  # "apply", "threshold:2/3", "cooldown:until=…", "manual_removal:until=…"


def decide(rule: KeywordRule | BehaviourRule, at: datetime, history: RuleHistory) -> Decision:
    """Decide for a hit at ``at`` (aware UTC)."""
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware (UTC)")
    if history.manually_removed_at is not None:
        until = history.manually_removed_at + (rule.cooldown or MANUAL_REMOVAL_BLOCK)
        if at < until:
            return Decision(False, f"manual_removal:until={until.isoformat()}")
    if rule.cooldown is not None and history.last_applied_at is not None:
        until = history.last_applied_at + rule.cooldown
        if at < until:
            return Decision(False, f"cooldown:until={until.isoformat()}")
    threshold = rule.threshold if isinstance(rule, KeywordRule) else None
    if threshold is not None and threshold.count > 1:
        since = at - threshold.window
        if history.last_applied_at is not None and history.last_applied_at >= since:
            floor, inclusive = history.last_applied_at, False
        else:
            floor, inclusive = since, True
        earlier = sum(1 for h in history.hits if h <= at and (h >= floor if inclusive else h > floor))
        count = earlier + 1
        if count < threshold.count:
            return Decision(False, f"threshold:{count}/{threshold.count}")
        return Decision(True, f"apply:threshold:{count}/{threshold.count}")
    return Decision(True, "apply")
