"""SQLAlchemy 2.x typed models. Every datetime column is UTCDateTime (aware, UTC)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.db import Base, UTCDateTime, utcnow

# BIGINT on PostgreSQL, INTEGER on SQLite (SQLite only auto-increments INTEGER PRIMARY KEY).
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON()


class InboxEvent(Base):
    """One inbound WeCom callback, recorded before the HTTP 200 (nothing lost, nothing doubled)."""

    __tablename__ = "inbox_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    corp_id: Mapped[str] = mapped_column(String(64))
    dedupe_key: Mapped[str] = mapped_column(String(64), unique=True)
    event_key: Mapped[str] = mapped_column(String(128))  # not indexed: no query filters or sorts by it
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # pending -> done | retry -> ... -> failed; unknown events end as `ignored` (recorded, acknowledged).
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_inbox_status_next", "status", "next_attempt_at"),)


class Outbox(Base):
    """Outbound work (a WeCom call, a fetch) written in the same transaction as the state that caused it.

    A job takes the row id and is a no-op once `done_at` is set, so a re-run after a crash or
    a duplicate enqueue never repeats a WeCom side effect.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    queue: Mapped[str] = mapped_column(String(32), default="default")
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|retry|done|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)

    __table_args__ = (Index("ix_outbox_status_next", "status", "next_attempt_at"),)


class Department(Base):
    __tablename__ = "departments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(255), default="")
    parent_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Employee(Base):
    """A member (成员) of the corp, keyed by WeCom userid."""

    __tablename__ = "employees"

    userid: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    department_ids: Mapped[list[int]] = mapped_column(Json, default=list)
    manager_userid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    customer_contact: Mapped[bool] = mapped_column(Boolean, default=True)
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Customer(Base):
    """One row per external contact (客户). Never deleted: a customer lost on every side is marked lost."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    external_userid: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    avatar: Mapped[str | None] = mapped_column(Text, nullable=True)
    type: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gender: Mapped[int | None] = mapped_column(Integer, nullable=True)
    corp_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    unionid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    profile: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    custom_fields: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    stage: Mapped[str] = mapped_column(String(16), default="new", index=True)
    score: Mapped[float] = mapped_column(default=0.0)
    profile_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    lost_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    follows: Mapped[list[FollowRelation]] = relationship(back_populates="customer", order_by="FollowRelation.id")


class FollowRelation(Base):
    """跟进人: an employee who has the customer as a friend, with the channel (`state`) it came from."""

    __tablename__ = "follow_relations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    userid: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    add_way: Mapped[int | None] = mapped_column(Integer, nullable=True)
    oper_userid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    remark: Mapped[str | None] = mapped_column(String(255), nullable=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    added_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # "employee" (成员删除客户), "customer" (客户删除成员), "transfer" (DELETE_BY_TRANSFER)
    deleted_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    half_added: Mapped[bool] = mapped_column(Boolean, default=False)

    customer: Mapped[Customer] = relationship(back_populates="follows")

    __table_args__ = (UniqueConstraint("customer_id", "userid", name="uq_follow_customer_user"),)


class CorpTag(Base):
    """企业标签 mirrored from WeCom (ids `et…`); groups are rows with is_group=True."""

    __tablename__ = "corp_tags"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    is_group: Mapped[bool] = mapped_column(Boolean, default=False)
    group_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    group_name: Mapped[str] = mapped_column(String(255), default="")
    name: Mapped[str] = mapped_column(String(255), default="")
    order: Mapped[int] = mapped_column(BigInteger, default=0)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class CustomerTag(Base):
    """A tag on a customer, with why it was applied (rule, channel, manual, WeCom) and when.

    Removal sets `removed_at` (and who/why) instead of deleting, so history survives.
    """

    __tablename__ = "customer_tags"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    group_name: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    tag_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source: Mapped[str] = mapped_column(String(32))  # channel | keyword_rule | behaviour_rule | manual | wecom
    reason: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    removed_reason: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)

    __table_args__ = (
        UniqueConstraint("customer_id", "group_name", "name", name="uq_customer_tag"),
        Index("ix_customer_tags_name", "group_name", "name"),
    )


class TimelineEntry(Base):
    """Every event in a customer's life, with its source and evidence."""

    __tablename__ = "timeline_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    kind: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(32), default="wecom")
    userid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    inbox_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    # Makes re-applying the same fact a no-op (one timeline entry per event, whatever the retries).
    dedupe_key: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)

    __table_args__ = (
        Index("ix_timeline_customer_at", "customer_id", "at"),
        Index("ix_timeline_kind_at", "kind", "at"),
    )


class GroupChat(Base):
    """客户群: mirrored from groupchat/get after each change_external_chat event."""

    __tablename__ = "group_chats"

    chat_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    notice: Mapped[str | None] = mapped_column(Text, nullable=True)
    member_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    dismissed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class GroupMember(Base):
    __tablename__ = "group_members"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    chat_id: Mapped[str] = mapped_column(ForeignKey("group_chats.chat_id"), index=True)
    member_id: Mapped[str] = mapped_column(String(64), index=True)
    member_type: Mapped[int] = mapped_column(Integer, default=2)  # 1 employee, 2 external
    join_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    join_scene: Mapped[int | None] = mapped_column(Integer, nullable=True)
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (UniqueConstraint("chat_id", "member_id", name="uq_group_member"),)


class KV(Base):
    """Small durable cursors and checkpoints (kf cursors, sync progress)."""

    __tablename__ = "kv"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


# Area models live beside their code; importing them here registers them on Base.metadata.
from bot.handover import models as _handover_models  # noqa: E402,F401
from bot.scoring import models as _scoring_models  # noqa: E402,F401
from bot.sop import models as _sop_models  # noqa: E402,F401
from bot.tagging import models as _tagging_models  # noqa: E402,F401
