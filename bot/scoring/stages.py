"""Lifecycle stages new → engaged → mql → sql → won / lost, driven by score threshold crossings.

Rules (PRODUCT.md "Lead scoring and routing"):
- A threshold fires only on an UPWARD crossing (previous < threshold <= new) while it is armed; firing
  disarms it. It re-arms once the score falls below `threshold - hysteresis` (hysteresis 0 = as soon as
  it is below again). Hysteresis stops a score that wobbles around a line — engagement decays
  continuously — from re-firing notifications and assignments every time a small event lands.
- Score changes only move a customer forward. A threshold that fires while the customer is already at
  or past its stage causes no change but is reported in `ScoreOutcome.fired`.
- Going back (e.g. "recycle to nurturing", sql → engaged) is only by an explicit `demote`, returned as
  a change flagged `demotion=True` with a mandatory reason so it is logged. The score usually stays
  above the old thresholds after a demotion; because they are disarmed, the customer is not promoted
  straight back until the score drops below and rises again.
- won / lost are terminal: scores no longer move them; only `reopen` does.

Everything is pure: the caller persists `stage` and the `armed` map ({threshold name: bool}; a missing
name counts as armed) and passes them back next time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from bot.scoring.model import STAGE_THRESHOLD_NAMES, ScoringConfig

__all__ = ["Stage", "StageChange", "StageError", "StageMachine", "ScoreOutcome"]


class Stage(StrEnum):
    NEW = "new"
    ENGAGED = "engaged"
    MQL = "mql"
    SQL = "sql"
    WON = "won"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self in (Stage.WON, Stage.LOST)

    @property
    def rank(self) -> int:
        # won and lost share the top rank: both end the funnel.
        return _RANK[self]


_RANK = {Stage.NEW: 0, Stage.ENGAGED: 1, Stage.MQL: 2, Stage.SQL: 3, Stage.WON: 4, Stage.LOST: 4}


class StageError(ValueError):
    """An explicit transition that the lifecycle does not allow (the caller asked for something wrong)."""


@dataclass(frozen=True, slots=True)
class StageChange:
    from_stage: Stage
    to_stage: Stage
    reason: str
    demotion: bool = False
    reopen: bool = False
    by: str | None = None  # who asked for an explicit change (userid, "rule:<id>"); None for score-driven

    @property
    def creates_assignment(self) -> bool:
        """MQL → SQL (or a jump into SQL) is what hands the lead to a salesperson."""
        return self.to_stage is Stage.SQL and self.from_stage.rank < Stage.SQL.rank


@dataclass(frozen=True, slots=True)
class ScoreOutcome:
    change: StageChange | None
    armed: Mapping[str, bool]  # persist this, whether or not the stage changed
    fired: tuple[str, ...] = field(default=())


class StageMachine:
    def __init__(self, thresholds: Mapping[str, float], hysteresis: float = 0.0) -> None:
        if set(thresholds) != set(STAGE_THRESHOLD_NAMES):
            raise ValueError(f"thresholds must name exactly {STAGE_THRESHOLD_NAMES}")
        values = [thresholds[n] for n in STAGE_THRESHOLD_NAMES]
        if any(b <= a for a, b in zip(values, values[1:], strict=False)):
            raise ValueError("thresholds must rise strictly: engaged < mql < sql")
        if hysteresis < 0:
            raise ValueError("hysteresis must be >= 0")
        self.thresholds = dict(thresholds)
        self.hysteresis = hysteresis

    @classmethod
    def from_config(cls, config: ScoringConfig) -> StageMachine:
        return cls(config.stage_thresholds, config.hysteresis)

    def evaluate(
        self, current_stage: Stage, previous_score: float, new_score: float, armed: Mapping[str, bool]
    ) -> ScoreOutcome:
        """The full answer to a score update: the stage change (if any), the next armed map, what fired."""
        next_armed = {name: armed.get(name, True) for name in STAGE_THRESHOLD_NAMES}
        fired: list[str] = []
        for name in STAGE_THRESHOLD_NAMES:
            t = self.thresholds[name]
            if next_armed[name] and previous_score < t <= new_score:
                fired.append(name)
                next_armed[name] = False
            elif not next_armed[name] and new_score < t - self.hysteresis:
                next_armed[name] = True
        change: StageChange | None = None
        if fired and not current_stage.terminal:
            target = Stage(fired[-1])  # the highest one: a big jump can skip stages
            if target.rank > current_stage.rank:
                change = StageChange(
                    from_stage=current_stage,
                    to_stage=target,
                    reason=f"score {previous_score:g} → {new_score:g} crossed {target.value} threshold "
                    f"{self.thresholds[target.value]:g}",
                )
        return ScoreOutcome(change=change, armed=next_armed, fired=tuple(fired))

    def on_score(
        self, current_stage: Stage, previous_score: float, new_score: float, armed: Mapping[str, bool]
    ) -> StageChange | None:
        """Only the stage change; use `evaluate` when you also persist the armed map (you should)."""
        return self.evaluate(current_stage, previous_score, new_score, armed).change

    @staticmethod
    def demote(current_stage: Stage, to_stage: Stage, reason: str, by: str) -> StageChange:
        """Explicit step back (manual, or a rule like "recycle to nurturing")."""
        if not reason.strip():
            raise StageError("a demotion needs a reason: it is logged")
        if current_stage.terminal:
            raise StageError(f"{current_stage} is terminal; use reopen")
        if to_stage.terminal or to_stage.rank >= current_stage.rank:
            raise StageError(f"{current_stage} → {to_stage} is not a demotion")
        return StageChange(current_stage, to_stage, reason, demotion=True, by=by)

    @staticmethod
    def close(current_stage: Stage, outcome: Stage, reason: str, by: str) -> StageChange:
        """Mark won or lost (from any open stage: a deal can be lost straight from engaged)."""
        if not outcome.terminal:
            raise StageError(f"close needs won or lost, got {outcome}")
        if current_stage.terminal:
            raise StageError(f"already {current_stage}; use reopen first")
        return StageChange(current_stage, outcome, reason, by=by)

    @staticmethod
    def reopen(current_stage: Stage, to_stage: Stage, reason: str, by: str) -> StageChange:
        """The only way out of won/lost, always explicit and logged."""
        if not current_stage.terminal:
            raise StageError(f"{current_stage} is not closed; nothing to reopen")
        if to_stage.terminal:
            raise StageError("reopen must go to an open stage")
        if not reason.strip():
            raise StageError("a reopen needs a reason: it is logged")
        return StageChange(current_stage, to_stage, reason, demotion=True, reopen=True, by=by)
