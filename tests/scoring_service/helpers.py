"""Helpers for the scoring service tests: employees, customers and events applied the way the pipeline does."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from bot.actions import Action, AddTags, RecordTimeline, TagRef, UpsertCustomer, UpsertEmployee, UpsertFollow
from bot.apply import apply
from bot.models import Customer, Outbox, TimelineEntry
from bot.scoring.models import LeadAssignment, LeadState, ScoreLedgerEntry, StageChangeRow
from bot.services import Services


def employees(services: Services, rows: Sequence[tuple[str, list[int], str | None]], at: datetime) -> None:
    """(userid, department ids, manager)."""
    with services.transaction() as s:
        apply([UpsertEmployee(u, {"name": u, "department_ids": d, "manager_userid": m, "active": True,
                                  "customer_contact": True}) for u, d, m in rows], s, now=at,
              context_key="test:employees")


def add_customer(services: Services, ext: str, owner: str, at: datetime, state: str | None = None) -> None:
    run(services, at, [
        UpsertCustomer(ext, {"name": f"客户{ext}"}),
        UpsertFollow(ext, owner, added_at=at, state=state),
        RecordTimeline(ext, "customer_added", at, userid=owner, detail={"userid": owner, "state": state},
                       dedupe_key=f"test:added:{ext}"),
    ], f"added:{ext}")


def run(services: Services, at: datetime, actions: list[Action], key: str) -> list[int]:
    with services.transaction() as s:
        return apply(actions, s, now=at, context_key=f"test:{key}:{at.isoformat()}")


def tag(services: Services, ext: str, tags: str, at: datetime, source: str = "manual",
        reason: dict[str, Any] | None = None) -> None:
    run(services, at, [AddTags(ext, tuple(TagRef.parse(t) for t in tags.split(",")), source=source,
                               reason=reason or {}, at=at, mark_in_wecom=False)], f"tag:{ext}:{tags}")


def keyword(services: Services, ext: str, rule_id: str, at: datetime, tag_name: str = "意向:询价") -> None:
    """A keyword rule that applied a tag (what the tagging area does); the tag is removed first so it re-applies."""
    from bot.actions import RemoveTags

    run(services, at, [RemoveTags(ext, (TagRef.parse(tag_name),), source="manual", at=at, mark_in_wecom=False)],
        f"untag:{ext}:{rule_id}")
    tag(services, ext, tag_name, at, source="keyword_rule",
        reason={"rule_id": rule_id, "msgid": f"m-{ext}-{at.timestamp()}", "at": at.isoformat()})


def event(services: Services, ext: str, kind: str, at: datetime, detail: dict[str, Any] | None = None,
          userid: str | None = None) -> None:
    run(services, at, [RecordTimeline(ext, kind, at, userid=userid, detail=detail or {},
                                      dedupe_key=f"test:{kind}:{ext}:{at.isoformat()}")], f"{kind}:{ext}")


def customer(services: Services, ext: str) -> Customer:
    with services.transaction() as s:
        row = s.scalar(select(Customer).where(Customer.external_userid == ext))
        assert row is not None
        s.expunge(row)
        return row


def state_of(services: Services, ext: str) -> LeadState:
    with services.transaction() as s:
        cid = s.scalar(select(Customer.id).where(Customer.external_userid == ext))
        row = s.get(LeadState, cid)
        assert row is not None
        s.expunge(row)
        return row


def ledger(services: Services, ext: str) -> list[ScoreLedgerEntry]:
    with services.transaction() as s:
        cid = s.scalar(select(Customer.id).where(Customer.external_userid == ext))
        rows = list(s.scalars(select(ScoreLedgerEntry).where(ScoreLedgerEntry.customer_id == cid)
                              .order_by(ScoreLedgerEntry.id)))
        s.expunge_all()
        return rows


def assignments(services: Services, ext: str | None = None) -> list[LeadAssignment]:
    with services.transaction() as s:
        stmt = select(LeadAssignment).order_by(LeadAssignment.id)
        if ext:
            stmt = stmt.where(LeadAssignment.external_userid == ext)
        rows = list(s.scalars(stmt))
        s.expunge_all()
        return rows


def stage_changes(services: Services, ext: str) -> tuple[list[StageChangeRow], list[TimelineEntry]]:
    with services.transaction() as s:
        cid = s.scalar(select(Customer.id).where(Customer.external_userid == ext))
        rows = list(s.scalars(select(StageChangeRow).where(StageChangeRow.customer_id == cid)
                              .order_by(StageChangeRow.id)))
        timeline = list(s.scalars(select(TimelineEntry).where(TimelineEntry.customer_id == cid,
                                                              TimelineEntry.kind == "stage_changed")
                                  .order_by(TimelineEntry.id)))
        s.expunge_all()
        return rows, timeline


def outbox(services: Services, kind: str) -> list[Outbox]:
    with services.transaction() as s:
        rows = list(s.scalars(select(Outbox).where(Outbox.kind == kind).order_by(Outbox.id)))
        s.expunge_all()
        return rows
