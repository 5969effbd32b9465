"""Database models of the sop area (imported by bot/models.py so Alembic and the tests see them).

An enrollment is one run (rotation) of one SOP for one customer; each step of it becomes a task row
when the step before it comes due, so a deferred step moves the steps planned "after the previous one"
with it and an exit stops the sequence without a cleanup of future rows. Tasks are what employees are
reminded of and complete; their state machine is pending -> due -> overdue -> done | skipped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bot.db import Base, UTCDateTime, utcnow

BigId = BigInteger().with_variant(Integer(), "sqlite")

TASK_OPEN_STATES = ("pending", "due", "overdue")
TASK_STATES = (*TASK_OPEN_STATES, "done", "skipped")


class SopEnrollment(Base):
    """One (sop, customer, rotation): unique, so a redelivered event or a second worker cannot enroll twice."""

    __tablename__ = "sop_enrollments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sop_id: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    external_userid: Mapped[str] = mapped_column(String(64))
    rotation: Mapped[int] = mapped_column(Integer, default=1)
    owner_userid: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the follow user it runs for
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(16), default="active")  # active | exited | completed
    exited_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    exit_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")  # why it enrolled (trigger, crowd, re-entry)
    # Last customer message after the start: the "replied" exit reads it without scanning the timeline.
    last_reply_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("sop_id", "customer_id", "rotation", name="uq_sop_enrollment"),
        Index("ix_sop_enrollments_customer_state", "customer_id", "state"),
    )


class SopTask(Base):
    """One step of one enrollment for a human: due time, owner, state, and why it was skipped/deferred."""

    __tablename__ = "sop_tasks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("sop_enrollments.id"))
    sop_id: Mapped[str] = mapped_column(String(64))
    step_id: Mapped[str] = mapped_column(String(64))
    step_index: Mapped[int] = mapped_column(Integer)
    customer_id: Mapped[int] = mapped_column(BigId)
    external_userid: Mapped[str] = mapped_column(String(64))
    owner_userid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    variant_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # A/B split, recorded
    script_id: Mapped[str] = mapped_column(String(128))
    touchpoint: Mapped[str] = mapped_column(String(16))
    planned_at: Mapped[datetime] = mapped_column(UTCDateTime)  # before any budget deferral
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # deferral / skip reason
    # Claiming by schedulers: compare-and-set on (state, claimed_by/claim_until); a crashed run's claim
    # lapses at claim_until and the next run takes the task again.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claim_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claim_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)  # remind | escalate
    reminded_count: Mapped[int] = mapped_column(Integer, default=0)
    last_reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    msgid: Mapped[str | None] = mapped_column(String(128), nullable=True)  # add_msg_template result
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON(), default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("enrollment_id", "step_id", name="uq_sop_task_step"),
        Index("ix_sop_tasks_state_due", "state", "due_at"),
        Index("ix_sop_tasks_claim", "claimed_by"),
        Index("ix_sop_tasks_owner_state", "owner_userid", "state"),
        Index("ix_sop_tasks_customer", "customer_id"),
    )


class TrackedLink(Base):
    """A link in a rendered script, per (customer, employee, script, step, url): `/t/<signed id>` opens it."""

    __tablename__ = "tracked_links"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(BigId)
    external_userid: Mapped[str] = mapped_column(String(64))
    userid: Mapped[str] = mapped_column(String(64), default="")
    sop_id: Mapped[str] = mapped_column(String(64), default="")
    script_id: Mapped[str] = mapped_column(String(128))
    step_id: Mapped[str] = mapped_column(String(64), default="")
    url: Mapped[str] = mapped_column(Text)
    url_hash: Mapped[str] = mapped_column(String(64))  # sha256(url): Text cannot be in a portable unique key
    title: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("customer_id", "userid", "script_id", "step_id", "url_hash", name="uq_tracked_link"),
    )
