"""The point ledger: turn an event into ledger entries, and a customer's entries into a score.

The ledger is append-only; a score is never stored as the truth, it is recomputed from the entries at a
given instant (so decay, rule edits and audits all come out of the same rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from bot.scoring.model import LedgerEntry, PointRule, ScoreEvent, ScoringConfig, require_aware

__all__ = ["RuleScore", "Score", "decay_factor", "entries_for_event", "explain", "score_at"]

_SHANGHAI = ZoneInfo("Asia/Shanghai")
_DIMENSION_CN = {"fit": "匹配度", "engagement": "互动度"}


@dataclass(frozen=True, slots=True)
class RuleScore:
    """What one rule contributes at a given instant: raw ledger points and their decayed value."""

    rule_id: str
    name: str
    dimension: str
    entries: int
    raw: int
    value: float


@dataclass(frozen=True, slots=True)
class Score:
    at: datetime
    total: float
    fit: float
    engagement: float
    breakdown: Mapping[str, RuleScore]


def entries_for_event(
    config: ScoringConfig, event: ScoreEvent, existing_entries_for_customer: Sequence[LedgerEntry]
) -> list[LedgerEntry]:
    """The new ledger entries `event` earns, given the customer's existing entries.

    For each rule that matches, in config order:
    - idempotency: if the ledger already has an entry for (rule, event.id) the rule yields nothing, so
      re-processing a retried event (same id) never double-counts;
    - repeat limit: skip when the rule already has `repeat_limit` entries for this customer, counting
      only entries within `repeat_window` of the event (either side, because events can be processed
      out of order) when a window is set;
    - cap: award at most what is left under the cap (a partial entry), nothing once it is reached. The
      cap counts raw points by magnitude, so it also bounds negative rules, and decay does not free it
      up again (otherwise a patient customer could farm the same rule forever).
    """
    require_aware(event.at, "event.at")
    mine = [e for e in existing_entries_for_customer if e.customer_id == event.customer_id]
    new: list[LedgerEntry] = []
    for rule in config.rules:
        if not rule.matches(event.kind, event.attrs):
            continue
        by_rule = [e for e in mine if e.rule_id == rule.id]
        if any(e.event_id == event.id for e in by_rule):
            continue
        points = _award(rule, event.at, by_rule)
        if points:
            new.append(
                LedgerEntry(
                    customer_id=event.customer_id,
                    rule_id=rule.id,
                    event_id=event.id,
                    points=points,
                    dimension=rule.dimension,
                    at=event.at,
                )
            )
    return new


def _award(rule: PointRule, at: datetime, by_rule: Sequence[LedgerEntry]) -> int:
    if rule.repeat_limit is not None:
        window = rule.repeat_window
        counted = [e for e in by_rule if window is None or abs(e.at - at) < window]
        if len(counted) >= rule.repeat_limit:
            return 0
    if rule.cap is None:
        return rule.points
    remaining = rule.cap - sum(abs(e.points) for e in by_rule)
    if remaining <= 0:
        return 0
    magnitude = min(abs(rule.points), remaining)
    return magnitude if rule.points > 0 else -magnitude


def decay_factor(age: timedelta, half_life_days: float) -> float:
    """0.5 ** (age_days / half_life): exactly 0.5 after one half-life, 0.25 after two."""
    return 0.5 ** ((age / timedelta(days=1)) / half_life_days)


def _valued(config: ScoringConfig, entry: LedgerEntry, at: datetime) -> tuple[PointRule | None, bool, float]:
    """(rule or None, whether it decays, its value at `at`)."""
    rule = config.rule(entry.rule_id)
    # A rule removed from the config keeps its ledger rows; they decay by their dimension's default.
    decays = rule.decaying if rule is not None else entry.dimension == "engagement"
    factor = decay_factor(at - entry.at, config.half_life_days) if decays else 1.0
    return rule, decays, entry.points * factor


def score_at(config: ScoringConfig, entries: Iterable[LedgerEntry], at: datetime) -> Score:
    """The customer's score at `at`: fit is the plain sum, engagement decays with the half-life.

    Entries dated after `at` are ignored, so a score can be replayed for any past instant.
    """
    require_aware(at, "at")
    fit = engagement = 0.0
    acc: dict[str, tuple[str, str, int, int, float]] = {}
    for entry in entries:
        if entry.at > at:
            continue
        rule, _, value = _valued(config, entry, at)
        if entry.dimension == "fit":
            fit += value
        else:
            engagement += value
        name = rule.name if rule is not None else entry.rule_id
        _, _, n, raw, total = acc.get(entry.rule_id, (name, entry.dimension, 0, 0, 0.0))
        acc[entry.rule_id] = (name, entry.dimension, n + 1, raw + entry.points, total + value)
    breakdown = {
        rid: RuleScore(rule_id=rid, name=name, dimension=dim, entries=n, raw=raw, value=value)
        for rid, (name, dim, n, raw, value) in acc.items()
    }
    return Score(at=at, total=fit + engagement, fit=fit, engagement=engagement, breakdown=breakdown)


def explain(
    config: ScoringConfig, entries: Iterable[LedgerEntry], at: datetime, tz: tzinfo = _SHANGHAI
) -> list[str]:
    """Chinese lines for the sidebar / dashboard, one per entry (oldest first) and a total line.

    Times are shown in `tz` (default Asia/Shanghai) because the reader is the salesperson, not UTC.
    """
    require_aware(at, "at")
    lines: list[str] = []
    kept = sorted((e for e in entries if e.at <= at), key=lambda e: (e.at, e.rule_id))
    for entry in kept:
        rule, decays, value = _valued(config, entry, at)
        name = rule.name if rule is not None else f"已停用规则 {entry.rule_id}"
        when = entry.at.astimezone(tz)
        head = f"{when:%Y-%m-%d %H:%M} {name}：{_DIMENSION_CN[entry.dimension]} {entry.points:+d} 分"
        if rule is not None and rule.cap is not None and abs(entry.points) < abs(rule.points):
            head += f"（已达上限 {rule.cap} 分，部分计入）"
        if decays:
            lines.append(f"{head}，按 {config.half_life_days:g} 天半衰期衰减后计 {value:+.1f} 分")
        else:
            lines.append(f"{head}（不衰减）")
    score = score_at(config, kept, at)
    lines.append(
        f"合计 {score.total:.1f} 分（匹配度 {score.fit:.1f} 分，互动度 {score.engagement:.1f} 分）"
    )
    return lines
