"""The narrow read interface handlers and engines use (they never write).

`SqlStore` reads the database through one session; `MemoryStore` is the in-memory twin
for handler and engine tests (no DB, Redis or network — rule 4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.actions import TagRef
from bot.models import Customer, CustomerTag, Employee, FollowRelation, GroupMember

__all__ = ["CustomerSnapshot", "ChannelSnapshot", "EmployeeSnapshot", "Store", "SqlStore", "MemoryStore"]


@dataclass(frozen=True)
class CustomerSnapshot:
    external_userid: str
    name: str = ""
    stage: str = "new"
    active_follows: tuple[str, ...] = ()
    all_follows: tuple[str, ...] = ()
    tags: frozenset[str] = frozenset()  # "group:name"


@dataclass(frozen=True)
class ChannelSnapshot:
    """渠道活码: what a `state` means — its name, welcome script and the tags it applies."""

    state: str
    name: str
    welcome_script: str | None = None
    tags: tuple[TagRef, ...] = ()


@dataclass(frozen=True)
class EmployeeSnapshot:
    userid: str
    name: str = ""
    active: bool = True
    manager_userid: str | None = None
    department_ids: tuple[int, ...] = ()


class Store(Protocol):
    def customer(self, external_userid: str) -> CustomerSnapshot | None: ...
    def channel(self, state: str | None) -> ChannelSnapshot | None: ...
    def employee(self, userid: str) -> EmployeeSnapshot | None: ...
    def group_members(self, chat_id: str) -> frozenset[str]: ...


class SqlStore:
    def __init__(self, session: Session, channels: Mapping[str, ChannelSnapshot] | None = None) -> None:
        self.session = session
        self.channels = dict(channels or {})

    def customer(self, external_userid: str) -> CustomerSnapshot | None:
        row = self.session.scalar(select(Customer).where(Customer.external_userid == external_userid))
        if row is None:
            return None
        follows = self.session.scalars(
            select(FollowRelation).where(FollowRelation.customer_id == row.id).order_by(FollowRelation.id)
        ).all()
        tags = self.session.execute(
            select(CustomerTag.group_name, CustomerTag.name).where(
                CustomerTag.customer_id == row.id, CustomerTag.removed_at.is_(None)
            )
        ).all()
        return CustomerSnapshot(
            external_userid=row.external_userid,
            name=row.name,
            stage=row.stage,
            active_follows=tuple(f.userid for f in follows if f.deleted_at is None),
            all_follows=tuple(f.userid for f in follows),
            tags=frozenset(f"{g}:{n}" for g, n in tags),
        )

    def channel(self, state: str | None) -> ChannelSnapshot | None:
        return self.channels.get(state) if state else None

    def employee(self, userid: str) -> EmployeeSnapshot | None:
        row = self.session.get(Employee, userid)
        if row is None:
            return None
        return EmployeeSnapshot(row.userid, row.name, row.active, row.manager_userid, tuple(row.department_ids or ()))

    def group_members(self, chat_id: str) -> frozenset[str]:
        rows = self.session.scalars(
            select(GroupMember.member_id).where(GroupMember.chat_id == chat_id, GroupMember.left_at.is_(None))
        ).all()
        return frozenset(rows)


@dataclass
class MemoryStore:
    customers: dict[str, CustomerSnapshot] = field(default_factory=dict)
    channels: dict[str, ChannelSnapshot] = field(default_factory=dict)
    employees: dict[str, EmployeeSnapshot] = field(default_factory=dict)
    groups: dict[str, frozenset[str]] = field(default_factory=dict)

    def customer(self, external_userid: str) -> CustomerSnapshot | None:
        return self.customers.get(external_userid)

    def channel(self, state: str | None) -> ChannelSnapshot | None:
        return self.channels.get(state) if state else None

    def employee(self, userid: str) -> EmployeeSnapshot | None:
        return self.employees.get(userid)

    def group_members(self, chat_id: str) -> frozenset[str]:
        return self.groups.get(chat_id, frozenset())
