"""apply(actions): the ONE place that writes the database and creates outbound work.

It runs inside the caller's transaction (the inbox row's, or an outbox job's). Outbound
work becomes outbox rows in that same transaction; the caller enqueues their jobs after
commit (`bot.queues.enqueue_outbox`), and the scheduler's sweeper re-enqueues any row a
crash or a Redis outage left behind. Every write is an upsert or guarded by a unique key,
so re-applying the same actions is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import singledispatch
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ClauseElement

from bot.actions import (
    Action,
    AddTags,
    DismissGroup,
    EndFollow,
    EnqueueCall,
    GroupMembersChanged,
    MarkEmployeeLeft,
    RecordTimeline,
    RecordUnknown,
    RemoveTags,
    SyncContacts,
    SyncCorpTags,
    TagRef,
    UpsertCustomer,
    UpsertEmployee,
    UpsertFollow,
    UpsertGroup,
)
from bot.db import utcnow
from bot.models import (
    CorpTag,
    Customer,
    CustomerTag,
    Employee,
    FollowRelation,
    GroupChat,
    GroupMember,
    Outbox,
    TimelineEntry,
)

log = logging.getLogger(__name__)

__all__ = ["apply", "ApplyContext", "DomainEvent", "executes", "subscribe", "insert_ignore", "insert_ignore_stmt",
           "get_or_create_customer", "batch_tag_reads"]

_CUSTOMER_FIELDS = {"name", "avatar", "type", "gender", "corp_name", "unionid", "profile", "custom_fields"}
_FOLLOW_FIELDS = {"remark", "description", "add_way", "oper_userid"}


@dataclass(frozen=True)
class DomainEvent:
    """Something that happened to a customer: every timeline entry newly written is one.

    Areas subscribe (`bot.apply.subscribe`) to react in the same transaction: SOP enrollment and
    exits, behaviour tagging, lead scoring. A re-applied (deduplicated) entry emits nothing.
    """

    kind: str
    external_userid: str
    customer_id: int
    at: datetime
    detail: Mapping[str, Any]
    userid: str | None = None
    source: str = "wecom"


Subscriber = Callable[["ApplyContext", list[DomainEvent]], list[Action]]
SUBSCRIBERS: list[Subscriber] = []
MAX_CASCADE = 5  # subscribers' actions may emit events again; a rule loop must not spin forever


def subscribe(fn: Subscriber) -> Subscriber:
    SUBSCRIBERS.append(fn)
    return fn


@dataclass
class ApplyContext:
    session: Session
    now: datetime
    context_key: str  # what caused these actions ("inbox:42", "outbox:7", "api:…") — part of dedupe keys
    inbox_id: int | None = None
    outbox_ids: list[int] = field(default_factory=list)
    events: list[DomainEvent] = field(default_factory=list)
    customers: dict[str, Customer] = field(default_factory=dict)  # per-apply cache: many actions, one customer

    def customer(self, external_userid: str) -> Customer:
        return get_or_create_customer(self.session, external_userid, self.now, self.customers)
    # (external_userid, userid) -> (tags to add, tags to remove): one mark_tag per pair per apply.
    pending_marks: dict[tuple[str, str], tuple[set[str], set[str]]] = field(default_factory=dict)
    # (group, name) -> corp tag id (None: not in the local mirror): read once per apply, reset by SyncCorpTags.
    corp_tag_ids: dict[tuple[str, str], str | None] = field(default_factory=dict)

    # Set only while a batch executor runs its own tag actions (``batch_tag_reads``): the follows and tag rows of
    # the batch's customers, read once. None otherwise: every executor then reads what it needs itself.
    batch_reads: BatchTagReads | None = None
    # Per-apply reads the areas' batch executors share with their own actions (keyed by area).
    memo: dict[str, Any] = field(default_factory=dict)

    def load_customers(self, external_userids: Iterable[str]) -> None:
        """Read the customers that exist among ``external_userids`` into the per-apply cache in one query (a
        batch's executors then look them up without a statement each); missing ones are created on first use."""
        wanted = sorted({e for e in external_userids if e and e not in self.customers})
        for start in range(0, len(wanted), 500):
            for customer in self.session.scalars(select(Customer).where(
                    Customer.external_userid.in_(wanted[start:start + 500]))):
                self.customers[customer.external_userid] = customer


_INSERT_IGNORE: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], Any] = {}


def insert_ignore_stmt(session: Session, table: Table, conflict: list[str], returning: tuple[str, ...] = ()) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING [RETURNING returning]`` for the session's dialect, built once per (dialect,
    table, conflict columns, returned columns): run it with rows as parameters, one dict or a list (executemany;
    with RETURNING it answers one row per row inserted, none for a row that was already there)."""
    key = (session.get_bind().dialect.name, table.name, tuple(conflict), returning)
    stmt = _INSERT_IGNORE.get(key)
    if stmt is None:
        stmt = _dialect_insert(session, table).on_conflict_do_nothing(index_elements=conflict)
        if returning:
            stmt = stmt.returning(*(table.c[name] for name in returning))
        _INSERT_IGNORE[key] = stmt
    return stmt


def insert_ignore(session: Session, table: Table, values: Mapping[str, Any], conflict: list[str]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING on both backends; True when a row was inserted.

    The statement is built once (``insert_ignore_stmt``) and the row passed as parameters: building
    ``insert(table).values(**row)`` coerces every value into a bind on each call, which cost more CPU than
    running the statement on the hot paths (a message batch makes several per message)."""
    if any(isinstance(v, ClauseElement) for v in values.values()):  # SQL expressions cannot be parameters
        result = session.execute(_dialect_insert(session, table).values(**values)
                                 .on_conflict_do_nothing(index_elements=conflict))
        return bool(getattr(result, "rowcount", 0))
    result = session.execute(insert_ignore_stmt(session, table, conflict), dict(values))
    return bool(getattr(result, "rowcount", 0))


def get_or_create_customer(session: Session, external_userid: str, now: datetime,
                           cache: dict[str, Customer] | None = None) -> Customer:
    if cache is not None and external_userid in cache:
        return cache[external_userid]
    found = session.scalar(select(Customer).where(Customer.external_userid == external_userid))
    if found is not None:
        if cache is not None:
            cache[external_userid] = found
        return found
    insert_ignore(
        session, Customer.__table__,  # type: ignore[arg-type]
        {"external_userid": external_userid, "created_at": now, "updated_at": now, "profile": {},
         "custom_fields": {}, "stage": "new", "score": 0.0, "name": ""},
        ["external_userid"],
    )
    customer = session.scalar(select(Customer).where(Customer.external_userid == external_userid))
    assert customer is not None  # noqa: S101 - just inserted or already there
    if cache is not None:
        cache[external_userid] = customer
    return customer


def apply(actions: Iterable[Action], session: Session, *, now: datetime | None = None,
          context_key: str, inbox_id: int | None = None) -> list[int]:
    """Apply actions in the caller's transaction; returns the ids of outbox rows created."""
    ctx = ApplyContext(session=session, now=now or utcnow(), context_key=context_key, inbox_id=inbox_id)
    pending = list(actions)
    for _round in range(MAX_CASCADE + 1):
        for action in pending:
            _apply(action, ctx)
        events, ctx.events = ctx.events, []
        if not events or not SUBSCRIBERS:
            break
        session.flush()
        pending = [a for fn in SUBSCRIBERS for a in fn(ctx, events)]
        if not pending:
            break
    else:
        log.error("subscriber cascade cut after %d rounds", MAX_CASCADE, extra={"context": context_key})
    _flush_marks(ctx)
    return ctx.outbox_ids


@singledispatch
def _apply(action: Action, ctx: ApplyContext) -> None:
    raise TypeError(f"no executor for action {type(action).__name__}")


@_apply.register
def _(action: UpsertCustomer, ctx: ApplyContext) -> None:
    customer = ctx.customer(action.external_userid)
    for key, value in action.fields.items():
        if key in _CUSTOMER_FIELDS and value is not None:
            setattr(customer, key, value)
    if "profile" in action.fields:
        customer.profile_synced_at = ctx.now


@_apply.register
def _(action: UpsertFollow, ctx: ApplyContext) -> None:
    customer = ctx.customer(action.external_userid)
    insert_ignore(
        ctx.session, FollowRelation.__table__,  # type: ignore[arg-type]
        {"customer_id": customer.id, "userid": action.userid, "half_added": action.half_added},
        ["customer_id", "userid"],
    )
    follow = ctx.session.scalar(
        select(FollowRelation).where(FollowRelation.customer_id == customer.id,
                                     FollowRelation.userid == action.userid)
    )
    assert follow is not None  # noqa: S101
    if action.added_at is not None and (follow.deleted_at is not None or follow.added_at is None):
        follow.added_at = action.added_at
        follow.deleted_at = None
        follow.deleted_by = None
    if action.state is not None:
        follow.state = action.state
    if not action.half_added:
        follow.half_added = False
    for key, value in action.fields.items():
        if key in _FOLLOW_FIELDS and value is not None:
            setattr(follow, key, value)
    customer.lost_at = None


@_apply.register
def _(action: EndFollow, ctx: ApplyContext) -> None:
    customer = ctx.customer(action.external_userid)
    follow = ctx.session.scalar(
        select(FollowRelation).where(FollowRelation.customer_id == customer.id,
                                     FollowRelation.userid == action.userid)
    )
    if follow is None:
        follow = FollowRelation(customer_id=customer.id, userid=action.userid)
        ctx.session.add(follow)
    if follow.deleted_at is None:
        follow.deleted_at = action.at
        follow.deleted_by = action.by
    ctx.session.flush()
    active = ctx.session.scalar(
        select(FollowRelation.id).where(FollowRelation.customer_id == customer.id,
                                        FollowRelation.deleted_at.is_(None)).limit(1)
    )
    if active is None and customer.lost_at is None:
        customer.lost_at = action.at  # kept, marked lost (PRODUCT.md: customers deleted on one side are kept)


@_apply.register
def _(action: RecordTimeline, ctx: ApplyContext) -> None:
    customer = ctx.customer(action.external_userid)
    inserted = insert_ignore(
        ctx.session, TimelineEntry.__table__,  # type: ignore[arg-type]
        {"customer_id": customer.id, "kind": action.kind, "at": action.at, "source": action.source,
         "userid": action.userid, "detail": dict(action.detail), "inbox_id": ctx.inbox_id,
         "dedupe_key": action.dedupe_key},
        ["dedupe_key"],
    )
    if inserted or action.dedupe_key is None:
        ctx.events.append(DomainEvent(action.kind, customer.external_userid, customer.id, action.at,
                                      dict(action.detail), action.userid, action.source))


_OUTBOX_INSERT: dict[str, Any] = {}  # dialect name -> INSERT … ON CONFLICT (dedupe_key) DO NOTHING RETURNING id


def _outbox_insert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    stmt = _OUTBOX_INSERT.get(dialect)
    if stmt is None:
        table: Any = Outbox.__table__
        stmt = _OUTBOX_INSERT[dialect] = (_dialect_insert(session, table)
                                          .on_conflict_do_nothing(index_elements=["dedupe_key"])
                                          .returning(table.c.id))
    return stmt


def _add_outbox(ctx: ApplyContext, kind: str, payload: Mapping[str, Any], dedupe_key: str, queue: str,
                deadline_at: datetime | None = None, not_before: datetime | None = None) -> None:
    # One statement (RETURNING: PostgreSQL, SQLite >= 3.35); no row back = the dedupe key existed: nothing new.
    row_id = ctx.session.execute(_outbox_insert(ctx.session), {
        "kind": kind, "queue": queue, "dedupe_key": dedupe_key, "payload": dict(payload), "status": "pending",
        "attempts": 0, "created_at": ctx.now, "deadline_at": deadline_at, "not_before": not_before}).scalar()
    if row_id is not None:
        ctx.outbox_ids.append(row_id)


@_apply.register
def _(action: EnqueueCall, ctx: ApplyContext) -> None:
    _add_outbox(ctx, action.kind, action.payload, action.dedupe_key, action.queue,
                action.deadline_at, action.not_before)


class BatchTagReads:
    """The follows and tag rows of a batch's customers, read in two queries by the first tag action that needs them
    (a batch whose messages fire no rule reads nothing)."""

    def __init__(self, session: Session, customer_ids: Iterable[int]) -> None:
        self.session, self.ids = session, sorted(set(customer_ids))
        self._follows: dict[int, list[str]] | None = None
        self._tags: dict[int, dict[tuple[str, str], CustomerTag]] | None = None

    def follows(self) -> dict[int, list[str]]:
        return self._read()[0]

    def tags(self) -> dict[int, dict[tuple[str, str], CustomerTag]]:
        return self._read()[1]

    def _read(self) -> tuple[dict[int, list[str]], dict[int, dict[tuple[str, str], CustomerTag]]]:
        if self._follows is None or self._tags is None:
            follows: dict[int, list[str]] = {cid: [] for cid in self.ids}
            tags: dict[int, dict[tuple[str, str], CustomerTag]] = {cid: {} for cid in self.ids}
            for start in range(0, len(self.ids), 500):
                chunk = self.ids[start:start + 500]
                for cid, userid in self.session.execute(select(FollowRelation.customer_id, FollowRelation.userid)
                                                        .where(FollowRelation.customer_id.in_(chunk),
                                                               FollowRelation.deleted_at.is_(None))
                                                        .order_by(FollowRelation.id)):
                    follows[cid].append(userid)
                for row in self.session.scalars(select(CustomerTag).where(CustomerTag.customer_id.in_(chunk))):
                    tags[row.customer_id][(row.group_name, row.name)] = row
            self._follows, self._tags = follows, tags
        return self._follows, self._tags


@contextmanager
def batch_tag_reads(ctx: ApplyContext, customer_ids: Iterable[int]) -> Iterator[None]:
    """For the duration of the block, AddTags/RemoveTags on these customers use their follows and tag rows read
    once (``BatchTagReads``, at the first tag action) instead of two queries per action. Only for a block that runs
    nothing but tag, timeline and rule actions (none of which changes a follow, and tag rows change only through
    the ORM objects read here, so a read at the first tag action finds what one at the start of the block would):
    subscribers run after it, when the per-action reads are back."""
    ctx.batch_reads = BatchTagReads(ctx.session, customer_ids)
    try:
        yield
    finally:
        ctx.batch_reads = None


def _tag_row(ctx: ApplyContext, customer: Customer, tag: TagRef, active_only: bool) -> CustomerTag | None:
    known = ctx.batch_reads.tags().get(customer.id) if ctx.batch_reads is not None else None
    if known is not None:
        row = known.get((tag.group, tag.name))
        return None if row is None or (active_only and row.removed_at is not None) else row
    stmt = select(CustomerTag).where(CustomerTag.customer_id == customer.id, CustomerTag.group_name == tag.group,
                                     CustomerTag.name == tag.name)
    if active_only:
        stmt = stmt.where(CustomerTag.removed_at.is_(None))
    return ctx.session.scalar(stmt)


def _targets(ctx: ApplyContext, customer: Customer, userid: str | None) -> list[str]:
    if userid:
        return [userid]
    if ctx.batch_reads is not None and customer.id in ctx.batch_reads.follows():
        return list(ctx.batch_reads.follows()[customer.id])
    return list(ctx.session.scalars(
        select(FollowRelation.userid).where(FollowRelation.customer_id == customer.id,
                                            FollowRelation.deleted_at.is_(None))
    ).all())


def _queue_mark(ctx: ApplyContext, ext: str, userids: list[str], tag: TagRef, add: bool) -> None:
    for userid in userids:
        adds, removes = ctx.pending_marks.setdefault((ext, userid), (set(), set()))
        (adds if add else removes).add(str(tag))
        (removes if add else adds).discard(str(tag))


@_apply.register
def _(action: AddTags, ctx: ApplyContext) -> None:
    at = action.at or ctx.now
    customer = ctx.customer(action.external_userid)
    targets = _targets(ctx, customer, action.userid) if action.mark_in_wecom else []
    for tag in action.tags:
        row = _tag_row(ctx, customer, tag, active_only=False)
        if row is not None and row.removed_at is None:
            continue  # already on: applying again is a no-op (no second timeline entry, no mark_tag)
        tag_id = _corp_tag_id(ctx, tag)  # before the row is added: one INSERT, no UPDATE of tag_id after it
        if row is None:
            row = CustomerTag(customer_id=customer.id, group_name=tag.group, name=tag.name)
            ctx.session.add(row)
            if ctx.batch_reads is not None and customer.id in ctx.batch_reads.tags():
                ctx.batch_reads.tags()[customer.id][(tag.group, tag.name)] = row
        row.source, row.reason, row.applied_at = action.source, dict(action.reason), at
        row.removed_at, row.removed_reason = None, None
        row.tag_id = tag_id
        ctx.session.flush()
        _record_tag_timeline(ctx, customer, "tag_added", tag, action.source, action.reason, at, action.userid)
        _queue_mark(ctx, customer.external_userid, targets, tag, add=True)


def _corp_tag_id(ctx: ApplyContext, tag: TagRef) -> str | None:
    key = (tag.group, tag.name)
    if key not in ctx.corp_tag_ids:
        ctx.corp_tag_ids[key] = ctx.session.scalar(select(CorpTag.id).where(
            CorpTag.group_name == tag.group, CorpTag.name == tag.name, CorpTag.is_group.is_(False),
            CorpTag.deleted.is_(False)).limit(1))
    return ctx.corp_tag_ids[key]


@_apply.register
def _(action: RemoveTags, ctx: ApplyContext) -> None:
    at = action.at or ctx.now
    customer = ctx.customer(action.external_userid)
    targets = _targets(ctx, customer, action.userid) if action.mark_in_wecom else []
    for tag in action.tags:
        row = _tag_row(ctx, customer, tag, active_only=True)
        if row is None:
            continue
        row.removed_at = at
        row.removed_reason = {"source": action.source, **dict(action.reason)}
        ctx.session.flush()
        _record_tag_timeline(ctx, customer, "tag_removed", tag, action.source, action.reason, at, action.userid)
        _queue_mark(ctx, customer.external_userid, targets, tag, add=False)


def _record_tag_timeline(ctx: ApplyContext, customer: Customer, kind: str, tag: TagRef, source: str,
                         reason: Mapping[str, Any], at: datetime, userid: str | None) -> None:
    _apply(RecordTimeline(
        external_userid=customer.external_userid, kind=kind, at=at, userid=userid, source=source,
        detail={"tag": str(tag), "group": tag.group, "name": tag.name, "reason": dict(reason)},
        dedupe_key=f"{ctx.context_key}:{kind}:{customer.id}:{tag}",
    ), ctx)


def _flush_marks(ctx: ApplyContext) -> None:
    for (ext, userid), (adds, removes) in sorted(ctx.pending_marks.items()):
        if not adds and not removes:
            continue
        body = {"external_userid": ext, "userid": userid, "add": sorted(adds), "remove": sorted(removes)}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
        _add_outbox(ctx, "mark_tag", body, f"mark_tag:{ctx.context_key}:{ext}:{userid}:{digest}", "default")
    ctx.pending_marks.clear()


@_apply.register
def _(action: UpsertEmployee, ctx: ApplyContext) -> None:
    row = ctx.session.get(Employee, action.userid)
    if row is None:
        row = Employee(userid=action.userid, department_ids=[], active=True)
        ctx.session.add(row)
    for key in ("name", "department_ids", "manager_userid", "active", "customer_contact"):
        if key in action.fields and action.fields[key] is not None:
            setattr(row, key, action.fields[key])
    if action.fields.get("active") is True:
        row.left_at = None


@_apply.register
def _(action: MarkEmployeeLeft, ctx: ApplyContext) -> None:
    row = ctx.session.get(Employee, action.userid)
    if row is None:
        row = Employee(userid=action.userid, department_ids=[])
        ctx.session.add(row)
    row.active = False
    row.left_at = row.left_at or action.at


@_apply.register
def _(action: SyncCorpTags, ctx: ApplyContext) -> None:
    ctx.corp_tag_ids.clear()
    seen: set[str] = set()
    for group in action.tag_groups:
        gid, gname = str(group.get("group_id", "")), str(group.get("group_name", ""))
        items = [(gid, True, gid, gname, gname, group)] + [
            (str(t.get("id")), False, gid, gname, str(t.get("name", "")), t) for t in group.get("tag", [])
        ]
        for tag_id, is_group, group_id, group_name, name, raw in items:
            if not tag_id:
                continue
            seen.add(tag_id)
            row = ctx.session.get(CorpTag, tag_id) or CorpTag(id=tag_id)
            row.is_group, row.group_id, row.group_name, row.name = is_group, group_id, group_name, name
            row.order, row.deleted = int(raw.get("order") or 0), bool(raw.get("deleted", False))
            ctx.session.add(row)
    # Tags gone from the library are marked deleted, never dropped: customer history refers to them.
    ctx.session.execute(update(CorpTag).where(CorpTag.id.not_in(seen)).values(deleted=True))


@_apply.register
def _(action: UpsertGroup, ctx: ApplyContext) -> None:
    row = ctx.session.get(GroupChat, action.chat_id)
    if row is None:
        row = GroupChat(chat_id=action.chat_id)
        ctx.session.add(row)
    for key in ("name", "owner", "notice", "member_version", "created_at"):
        if key in action.fields and action.fields[key] is not None:
            setattr(row, key, action.fields[key])
    row.synced_at = ctx.now
    ctx.session.flush()
    if action.members is None:
        return
    current = {m.member_id: m for m in ctx.session.scalars(
        select(GroupMember).where(GroupMember.chat_id == action.chat_id)).all()}
    listed = set()
    for m in action.members:
        member_id = str(m.get("userid", ""))
        if not member_id:
            continue
        listed.add(member_id)
        member = current.get(member_id) or GroupMember(chat_id=action.chat_id, member_id=member_id)
        member.member_type = int(m.get("type") or 2)
        member.join_scene = int(m["join_scene"]) if m.get("join_scene") not in (None, "") else None
        if isinstance(m.get("join_time"), datetime):
            member.join_time = m["join_time"]
        member.left_at = None
        ctx.session.add(member)
    for member_id, member in current.items():
        if member_id not in listed and member.left_at is None:
            member.left_at = ctx.now


@_apply.register
def _(action: GroupMembersChanged, ctx: ApplyContext) -> None:
    if ctx.session.get(GroupChat, action.chat_id) is None:
        ctx.session.add(GroupChat(chat_id=action.chat_id))
        ctx.session.flush()
    for member_id in action.joined:
        insert_ignore(ctx.session, GroupMember.__table__,  # type: ignore[arg-type]
                      {"chat_id": action.chat_id, "member_id": member_id, "member_type": 2,
                       "join_time": action.at}, ["chat_id", "member_id"])
        ctx.session.execute(update(GroupMember).where(
            GroupMember.chat_id == action.chat_id, GroupMember.member_id == member_id).values(left_at=None))
    for member_id in action.left:
        ctx.session.execute(update(GroupMember).where(
            GroupMember.chat_id == action.chat_id, GroupMember.member_id == member_id,
            GroupMember.left_at.is_(None)).values(left_at=action.at))


@_apply.register
def _(action: DismissGroup, ctx: ApplyContext) -> None:
    row = ctx.session.get(GroupChat, action.chat_id)
    if row is None:
        row = GroupChat(chat_id=action.chat_id)
        ctx.session.add(row)
    row.dismissed_at = row.dismissed_at or action.at


def _dialect_insert(session: Session, table: Any) -> Any:
    mod: Any = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return mod.insert(table)


@_apply.register
def _(action: SyncContacts, ctx: ApplyContext) -> None:
    if not action.rows:
        return
    session, now = ctx.session, ctx.now
    customers: dict[str, dict[str, Any]] = {}
    for row in action.rows:
        c = row.get("external_contact") or {}
        ext = str(c.get("external_userid") or "")
        if ext:
            customers[ext] = {
                "external_userid": ext, "name": c.get("name") or "", "avatar": c.get("avatar"), "type": c.get("type"),
                "gender": c.get("gender"), "corp_name": c.get("corp_name") or c.get("corp_full_name"),
                "unionid": c.get("unionid"), "profile": dict(c), "custom_fields": {}, "stage": "new", "score": 0.0,
                "created_at": now, "updated_at": now, "profile_synced_at": now,
            }
    table: Any = Customer.__table__
    stmt = _dialect_insert(session, table)
    session.execute(stmt.on_conflict_do_update(index_elements=["external_userid"], set_={
        k: stmt.excluded[k] for k in ("name", "avatar", "type", "gender", "corp_name", "unionid", "profile",
                                      "updated_at", "profile_synced_at")}), list(customers.values()))
    ids = dict(session.execute(select(Customer.external_userid, Customer.id)
                               .where(Customer.external_userid.in_(list(customers)))).all())
    follows, tags = [], []
    for row in action.rows:
        ext = str((row.get("external_contact") or {}).get("external_userid") or "")
        info = row.get("follow_info") or {}
        if ext not in ids or not info.get("userid"):
            continue
        created = info.get("createtime")
        follows.append({"customer_id": ids[ext], "userid": str(info["userid"]), "state": info.get("state") or None,
                        "add_way": info.get("add_way"), "oper_userid": info.get("oper_userid"),
                        "remark": info.get("remark"), "description": info.get("description"),
                        "added_at": datetime.fromtimestamp(int(created), now.tzinfo) if created else None,
                        "half_added": False})
        for tag in row.get("tags") or ():
            group, _, name = str(tag).partition(":")
            tags.append({"customer_id": ids[ext], "group_name": group, "name": name, "source": "wecom",
                         "reason": {"via": "sync", "userid": info["userid"]}, "applied_at": now})
    if follows:
        ftable: Any = FollowRelation.__table__
        fstmt = _dialect_insert(session, ftable)
        session.execute(fstmt.on_conflict_do_update(index_elements=["customer_id", "userid"], set_={
            **{k: fstmt.excluded[k] for k in ("state", "add_way", "oper_userid", "remark", "description")},
            # keep the first add time we knew; WeCom's createtime only fills a gap
            "added_at": func.coalesce(ftable.c.added_at, fstmt.excluded.added_at)}), follows)
    if tags:
        ttable: Any = CustomerTag.__table__
        session.execute(_dialect_insert(session, ttable).on_conflict_do_nothing(
            index_elements=["customer_id", "group_name", "name"]), tags)


@_apply.register
def _(action: RecordUnknown, ctx: ApplyContext) -> None:
    log.info("unknown event recorded and acknowledged", extra={"event_key": action.event_key,
                                                               "inbox_id": ctx.inbox_id})


# Areas register the executors of their own actions: `@executes` on a function (action, ctx) -> None.
executes = _apply.register

from bot.handover import apply_handover as _handover  # noqa: E402,F401
from bot.scoring import apply_scoring as _scoring  # noqa: E402,F401
from bot.sop import apply_sop as _sop  # noqa: E402,F401
from bot.tagging import apply_tagging as _tagging  # noqa: E402,F401
