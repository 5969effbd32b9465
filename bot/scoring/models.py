"""Database models of the scoring area (imported by bot/models.py so Alembic and the tests see them).

- ``ScoreLedgerEntry``: the point ledger, one row per (customer, rule, event): a score is always
  recomputable from these rows (``bot.scoring.ledger.score_at``) and explainable line by line.
- ``LeadState``: per customer, what the pure StageMachine needs back next time (the `armed` map), when
  decay must be recomputed next (the scheduler's work list) and the highest stage ever reached (the
  funnel rollup: a report over a million customers reads one small row each instead of the history).
- ``StageChangeRow``: every stage change with from/to/reason/demotion (the timeline gets a
  ``stage_changed`` entry too; this table is the indexed copy the reports count).
- ``LeadAssignment``: an MQL -> SQL hand-over to a salesperson with its accept-by deadline (SLA),
  escalation, outcome and time-to-first-touch.
- ``SopStepOutcome``: the SOP step / A/B report's rollup (done steps with first reply / inquiry within 48 h).

Report indexes on other areas' tables are declared here too (they exist only for the dashboard's
range scans) so the owning areas' models stay untouched.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bot.db import Base, UTCDateTime, utcnow

BigId = BigInteger().with_variant(Integer(), "sqlite")

ASSIGNMENT_OPEN = ("pending", "accepted")  # counts toward a salesperson's open load
ASSIGNMENT_STATES = (*ASSIGNMENT_OPEN, "rejected", "recycled", "closed")


class ScoreLedgerEntry(Base):
    __tablename__ = "score_ledger"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(BigId)
    rule_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(255))
    event_kind: Mapped[str] = mapped_column(String(64))
    points: Mapped[int] = mapped_column(Integer)
    dimension: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("customer_id", "rule_id", "event_id", name="uq_score_ledger_event"),
        Index("ix_score_ledger_customer_at", "customer_id", "at"),
    )


class LeadState(Base):
    __tablename__ = "lead_states"

    customer_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    armed: Mapped[dict[str, Any]] = mapped_column(JSON(), default=dict)
    fit: Mapped[float] = mapped_column(Float, default=0.0)
    engagement: Mapped[float] = mapped_column(Float, default=0.0)
    scored_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Next decay recompute (None: nothing decays any more); the tick takes the oldest first.
    recompute_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Funnel rollup: 0 new, 1 engaged, 2 mql, 3 sql, 4 won (lost does not raise it).
    reached_rank: Mapped[int] = mapped_column(Integer, default=0)
    stage_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_lead_states_recompute", "recompute_at"),)


class StageChangeRow(Base):
    __tablename__ = "lead_stage_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(BigId, index=True)
    from_stage: Mapped[str] = mapped_column(String(16))
    to_stage: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    demotion: Mapped[bool] = mapped_column(Boolean, default=False)
    by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_lead_stage_changes_to_at", "to_stage", "at"),)


class LeadAssignment(Base):
    __tablename__ = "lead_assignments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(BigId, index=True)
    external_userid: Mapped[str] = mapped_column(String(64))
    userid: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))  # owner | round robin | over capacity | fallback
    over_capacity: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # see ASSIGNMENT_STATES
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime)
    accept_by: Mapped[datetime] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    escalated_to: Mapped[str | None] = mapped_column(String(64), nullable=True)
    first_touch_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    first_touch_kind: Mapped[str | None] = mapped_column(String(32), nullable=True)  # accepted | message
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    close_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    previous_id: Mapped[int | None] = mapped_column(BigId, nullable=True)  # the rejected one it replaces

    __table_args__ = (
        Index("ix_lead_assignments_status_accept_by", "status", "accept_by"),
        Index("ix_lead_assignments_user_status", "userid", "status"),
        Index("ix_lead_assignments_assigned_at", "assigned_at"),
    )


class SopStepOutcome(Base):
    """The SOP step report's rollup: one row per SOP task done, with the first customer reply and the first
    intent keyword (a keyword rule scoring positive points) within 48 h after it (bot/scoring/outcomes.py).

    Written in the transaction of the `sop_step_done` timeline entry (probing what already happened), and
    updated by each later `message_received` entry and positive keyword ledger row of the customer, so the
    report is one range scan by `done_at` instead of two probes per step (docs/PERFORMANCE.md "Reports").
    """

    __tablename__ = "sop_step_outcomes"

    task_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    customer_id: Mapped[int] = mapped_column(BigId)
    sop_id: Mapped[str] = mapped_column(String(64))
    step_id: Mapped[str] = mapped_column(String(64))
    variant_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    done_at: Mapped[datetime] = mapped_column(UTCDateTime)
    replied_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    inquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_sop_step_outcomes_done", "done_at"),
        Index("ix_sop_step_outcomes_customer_done", "customer_id", "done_at"),
    )


# --- report indexes on other areas' tables (range scans of the dashboard; see docs/PERFORMANCE.md) ---
from bot.models import FollowRelation, TimelineEntry  # noqa: E402 - bot.models imports this module at its end
from bot.sop.models import SopTask  # noqa: E402
from bot.tagging.models import RuleHit  # noqa: E402

Index("ix_report_follow_added_state", FollowRelation.added_at, FollowRelation.state)
Index("ix_report_sop_tasks_due_owner", SopTask.due_at, SopTask.owner_userid)
Index("ix_report_rule_hits_kind_at", RuleHit.rule_kind, RuleHit.at)
# Reply-within-48h probe when a SOP step is done (bot/scoring/outcomes.py): only customer messages, by customer.
Index("ix_report_timeline_replies", TimelineEntry.customer_id, TimelineEntry.at,
      postgresql_where=TimelineEntry.kind == "message_received", sqlite_where=TimelineEntry.kind == "message_received")
