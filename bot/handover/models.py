"""Database models of the handover area (imported by bot/models.py so Alembic and the tests see them).

A `Handover` is one request (on-job 在职继承 or resigned 离职继承) from one employee to another; each
customer in it is a `HandoverItem` with its own outcome, each group chat a `HandoverGroup`. Items are
claimed (status `calling`) before the WeCom call and their errcode recorded after it, so a re-run of a
batch after a crash never calls WeCom twice for the same customer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bot.db import Base, UTCDateTime, utcnow
from bot.models import BigId, Json

__all__ = [
    "Handover", "HandoverItem", "HandoverGroup", "ITEM_FINAL", "ITEM_OPEN", "ITEM_COUNTED", "ITEM_FAILED",
    "HANDOVER_OPEN",
]

# Item lifecycle: pending -> calling (claimed, WeCom call in flight) -> started (errcode 0) -> waiting (status 2)
# -> done (1) | refused (3) | taker_limit (4) | no_record (5); or refused_local (checked before calling),
# failed (errcode != 0), unknown (no final answer within the bound).
ITEM_OPEN = frozenset({"pending", "calling", "started", "waiting"})
ITEM_FAILED = frozenset({"refused", "taker_limit", "no_record", "failed", "refused_local", "unknown"})
ITEM_FINAL = ITEM_FAILED | {"done"}
# Transfers WeCom accepted (or may have accepted: a call whose answer was lost) count toward the
# "at most twice in 90 days" rule; WeCom does not say whether refusals count, so they do (conservative).
ITEM_COUNTED = frozenset({"calling", "started", "waiting", "done", "refused", "taker_limit"})
# planning -> running -> done | partial | failed; blocked = cannot start (e.g. no successor configured)
HANDOVER_OPEN = frozenset({"planning", "running"})


class Handover(Base):
    __tablename__ = "handovers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # onjob | resigned
    from_userid: Mapped[str] = mapped_column(String(64), index=True)
    to_userid: Mapped[str] = mapped_column(String(64), index=True)
    scope: Mapped[str] = mapped_column(String(16), default="all")  # all | list
    requested: Mapped[list[str]] = mapped_column(Json, default=list)  # external_userids when scope=list
    groups: Mapped[str] = mapped_column(String(16), default="none")  # none | all | list
    requested_groups: Mapped[list[str]] = mapped_column(Json, default=list)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)  # transfer_success_msg (on-job only)
    initiator_userid: Mapped[str | None] = mapped_column(String(64), nullable=True)  # told about failures
    source: Mapped[str] = mapped_column(String(32), default="api")  # api | cli | delete_user
    status: Mapped[str] = mapped_column(String(16), default="planning", index=True)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    planned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    polls: Mapped[int] = mapped_column(Integer, default=0)
    brief_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    extra: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)

    __table_args__ = (Index("ix_handovers_status_poll", "status", "next_poll_at"),)


class HandoverItem(Base):
    __tablename__ = "handover_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    handover_id: Mapped[int] = mapped_column(ForeignKey("handovers.id"), index=True)
    external_userid: Mapped[str] = mapped_column(String(64))
    batch_no: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    errcode: Mapped[int | None] = mapped_column(Integer, nullable=True)  # transfer_customer's per-customer errcode
    wecom_status: Mapped[int | None] = mapped_column(Integer, nullable=True)  # transfer_result status
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    called_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    takeover_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    work_moved: Mapped[bool] = mapped_column(Boolean, default=False)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("handover_id", "external_userid", name="uq_handover_item"),
        Index("ix_handover_items_ext_called", "external_userid", "called_at"),
        Index("ix_handover_items_batch", "handover_id", "batch_no"),
    )


class HandoverGroup(Base):
    __tablename__ = "handover_groups"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    handover_id: Mapped[int] = mapped_column(ForeignKey("handovers.id"), index=True)
    chat_id: Mapped[str] = mapped_column(String(64))
    batch_no: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | calling | done | failed
    errcode: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    called_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (UniqueConstraint("handover_id", "chat_id", name="uq_handover_group"),)
