"""Database models of the tagging area (imported by bot/models.py so Alembic and the tests see them).

- ``TaggingMessage``: every message from every source (kf, chat archive, app), unique per
  (source family, msgid) so a message seen twice — a re-pulled kf page, a re-posted archive batch —
  is stored and matched once.
- ``TaggingRule``: keyword/behaviour rules created through ``/api/v1/rules`` (file rules under
  scripts_library/content/rules/ are read-only and never stored here).
- ``RuleHit``: every time a rule hit a customer (applied or not, with the decision), unique per
  (rule, message/event): the history thresholds and cooldowns are decided from, and what ``explain`` reads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bot.db import Base, UTCDateTime, utcnow

BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON()


class TaggingMessage(Base):
    __tablename__ = "tagging_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(16))  # kf | archive | app
    msgid: Mapped[str] = mapped_column(String(128))
    direction: Mapped[str] = mapped_column(String(16))  # customer | employee | event
    msgtype: Mapped[str] = mapped_column(String(32), default="text")
    external_userid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    userid: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the employee side, when known
    chat_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # group chat (roomid) or None
    open_kfid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # pending (stored by the API, waiting for its job) -> done (timeline written, rules matched)
    status: Mapped[str] = mapped_column(String(16), default="done")
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    raw: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)

    __table_args__ = (
        UniqueConstraint("source", "msgid", name="uq_tagging_message"),
        Index("ix_tagging_messages_status", "status"),
    )


class TaggingRule(Base):
    __tablename__ = "tagging_rules"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # keyword | behaviour
    definition: Mapped[dict[str, Any]] = mapped_column(Json)  # the rule as written (rules.py format)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RuleHit(Base):
    __tablename__ = "tagging_rule_hits"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rule_id: Mapped[str] = mapped_column(String(64))
    rule_kind: Mapped[str] = mapped_column(String(16))  # keyword | behaviour
    customer_id: Mapped[int] = mapped_column(BigId)
    external_userid: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    applied: Mapped[bool] = mapped_column(Boolean, default=False)
    decision: Mapped[str] = mapped_column(String(255))  # decide()'s reason: apply, threshold:1/3, cooldown:…
    evidence: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)  # source, msgid, keyword, excerpt …
    # "<rule>:<message or event key>": a rule fires at most once per message / event.
    hit_key: Mapped[str] = mapped_column(String(255), unique=True)

    __table_args__ = (Index("ix_tagging_rule_hits_rule_customer", "rule_id", "customer_id", "at"),)
