"""Value types of the lead-score ledger: point rules, the scoring config, ledger entries, events.

Everything here is a frozen dataclass with no I/O. The service stores `LedgerEntry` rows and builds
`ScoreEvent`s from whatever happened (a keyword rule fired, a tag was added, a link was opened …);
`bot.scoring.ledger` turns one into the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

__all__ = [
    "DIMENSIONS",
    "KNOWN_EVENT_KINDS",
    "STAGE_THRESHOLD_NAMES",
    "Dimension",
    "LedgerEntry",
    "MatchValue",
    "PointRule",
    "ScoreEvent",
    "ScoringConfig",
    "ScoringConfigError",
    "require_aware",
]

Dimension = Literal["fit", "engagement"]
DIMENSIONS: tuple[Dimension, ...] = ("fit", "engagement")

# The event kinds the service emits. Rules naming anything else are rejected at load time, because a
# typo in `on:` would otherwise make a rule silently never fire.
KNOWN_EVENT_KINDS: frozenset[str] = frozenset(
    {
        "keyword_rule_fired",
        "behaviour_rule_fired",
        "tag_added",
        "tag_removed",
        "link_opened",
        "material_viewed",
        "customer_replied",
        "customer_added",
        "customer_deleted",
        "group_joined",
        "group_left",
        "sop_step_done",
        "form_submitted",
        "manual_adjustment",
    }
)

# Thresholds are named after the stage they promote to, in promotion order.
STAGE_THRESHOLD_NAMES: tuple[str, ...] = ("engaged", "mql", "sql")

MatchScalar = str | int | float | bool
MatchValue = MatchScalar | tuple[MatchScalar, ...]


class ScoringConfigError(ValueError):
    """The scoring config is invalid; the message says where (path:line, key path) and what to fix."""


def require_aware(value: datetime, what: str) -> datetime:
    """Reject naive datetimes: every time in the ledger is an aware UTC instant (house style rule 7)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime (UTC), got naive {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class PointRule:
    """Award `points` to a customer each time an event of kind `on` whose attrs satisfy `match` happens.

    - match: every key must be present in the event's attrs and equal the value; a tuple value means
      "any of these"; an attrs value that is a list/tuple/set matches when any element matches
      (e.g. `{"tag": "意向:询价"}` against `attrs={"tag": ["意向:询价", "行业:制造"]}`).
    - cap: the most this rule may contribute to one customer over the whole ledger, in raw (undecayed)
      points and by magnitude for negative rules. The entry that reaches the cap is partial.
    - repeat_limit / repeat_window: at most `repeat_limit` entries per customer, counted within
      `repeat_window` of the event when a window is given, else over the whole ledger.
    - decays: engagement entries fade with the config's half-life unless `decays=False`; fit entries
      (company size, industry, role) describe who the customer is and never decay whatever this says.
    """

    id: str
    name: str
    on: str
    points: int
    dimension: Dimension
    match: Mapping[str, MatchValue] = field(default_factory=dict)
    cap: int | None = None
    repeat_limit: int | None = None
    repeat_window: timedelta | None = None
    decays: bool = True

    def __post_init__(self) -> None:
        if not self.id:
            raise ScoringConfigError("rule id must be a non-empty string")
        if self.dimension not in DIMENSIONS:
            raise ScoringConfigError(f"rule {self.id}: dimension must be one of {DIMENSIONS}")
        if self.points == 0:
            raise ScoringConfigError(f"rule {self.id}: points must not be 0 (a rule that awards nothing)")
        if self.cap is not None and self.cap <= 0:
            raise ScoringConfigError(f"rule {self.id}: cap must be a positive number of points")
        if self.repeat_limit is not None and self.repeat_limit <= 0:
            raise ScoringConfigError(f"rule {self.id}: repeat_limit must be a positive integer")
        if self.repeat_window is not None:
            if self.repeat_limit is None:
                raise ScoringConfigError(f"rule {self.id}: repeat_window needs repeat_limit")
            if self.repeat_window <= timedelta(0):
                raise ScoringConfigError(f"rule {self.id}: repeat_window must be positive")

    @property
    def decaying(self) -> bool:
        """Whether entries of this rule fade over time (fit never does)."""
        return self.decays and self.dimension == "engagement"

    def matches(self, kind: str, attrs: Mapping[str, object]) -> bool:
        if kind != self.on:
            return False
        for key, wanted in self.match.items():
            if key not in attrs:
                return False
            options = wanted if isinstance(wanted, tuple) else (wanted,)
            actual = attrs[key]
            actuals = tuple(actual) if isinstance(actual, list | tuple | set | frozenset) else (actual,)
            if not any(a == o for a in actuals for o in options):
                return False
        return True


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    """Point rules plus the knobs of decay, stage thresholds, hysteresis and the accept SLA.

    stage_thresholds are on the total score (fit + decayed engagement) and must rise strictly:
    engaged < mql < sql. hysteresis: a threshold re-arms only once the score falls below
    `threshold - hysteresis` (0 = as soon as it is below the threshold again). fallback_userid: who gets
    a lead when every salesperson is full (None = the least-loaded salesperson, flagged "over capacity").
    """

    rules: tuple[PointRule, ...]
    half_life_days: float
    stage_thresholds: Mapping[str, float]
    sla_minutes: int = 30
    hysteresis: float = 0.0
    fallback_userid: str | None = None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ScoringConfigError(f"duplicate rule id {rule.id!r}")
            seen.add(rule.id)
        if not self.half_life_days > 0:
            raise ScoringConfigError("half_life_days must be > 0")
        if self.sla_minutes <= 0:
            raise ScoringConfigError("sla_minutes must be a positive number of minutes")
        if self.hysteresis < 0:
            raise ScoringConfigError("hysteresis must be >= 0")
        names = tuple(self.stage_thresholds)
        if sorted(names) != sorted(STAGE_THRESHOLD_NAMES):
            raise ScoringConfigError(f"stage_thresholds must name exactly {', '.join(STAGE_THRESHOLD_NAMES)}")
        values = [self.stage_thresholds[n] for n in STAGE_THRESHOLD_NAMES]
        if any(b <= a for a, b in zip(values, values[1:], strict=False)):
            raise ScoringConfigError("stage_thresholds must rise strictly: engaged < mql < sql")

    def rule(self, rule_id: str) -> PointRule | None:
        return next((r for r in self.rules if r.id == rule_id), None)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One awarded (or deducted) amount: the row the service persists, unique on (customer, rule, event)."""

    customer_id: str
    rule_id: str
    event_id: str
    points: int
    dimension: Dimension
    at: datetime


@dataclass(frozen=True, slots=True)
class ScoreEvent:
    """Something that happened to a customer, in the scoring vocabulary. `id` must be stable across
    retries (e.g. the inbox dedupe key) because it is what makes scoring idempotent."""

    id: str
    kind: str
    customer_id: str
    at: datetime
    attrs: Mapping[str, object] = field(default_factory=dict)
