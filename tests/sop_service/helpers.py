"""Helpers for the SOP service tests: a library of test SOPs, customers added through apply, task reads."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from bot.actions import AddTags, RecordTimeline, TagRef, UpsertCustomer, UpsertEmployee, UpsertFollow
from bot.apply import apply
from bot.services import Services
from bot.sop.models import SopEnrollment, SopTask
from scripts_library import CONTENT_ROOT


def make_library(tmp: Path, *sops: dict[str, Any], keep_shipped: bool = False) -> Path:
    """A content dir with the shipped scripts/channels and the given SOPs (the shipped ones only if asked)."""
    root = tmp / "content"
    shutil.copytree(CONTENT_ROOT, root)
    if not keep_shipped:
        for path in (root / "sops").glob("*.yaml"):
            path.unlink()
    for sop in sops:
        (root / "sops" / f"{sop['id']}.yaml").write_text(yaml.safe_dump(sop, allow_unicode=True), encoding="utf-8")
    return root


def sop_doc(sop_id: str, steps: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": sop_id, "name": sop_id, "crowd": {"trigger": [{"event": "customer_added"}]},
                           "calendar": {"business_days": False, "timezone": "Asia/Shanghai"},
                           "executor": "owner", "reentry": "never", "capped": "defer", "steps": steps}
    doc.update(over)
    return doc


def add_customer(services: Services, ext: str, userid: str, at: datetime, *, state: str | None = None,
                 name: str = "客户", manager: str | None = None, custom: dict[str, Any] | None = None) -> None:
    """What the add_external_contact handler produces, applied the way process_event applies it."""
    with services.transaction() as s:
        apply([
            UpsertEmployee(userid, {"name": userid, "manager_userid": manager}),
            UpsertCustomer(ext, {"name": name, "custom_fields": custom or {}}),
            UpsertFollow(ext, userid, added_at=at, state=state),
            RecordTimeline(ext, "customer_added", at, userid=userid, detail={"userid": userid, "state": state},
                           dedupe_key=f"test:added:{ext}:{userid}:{at.isoformat()}"),
        ], s, now=at, context_key=f"test:{ext}:{at.isoformat()}")


def customer_event(services: Services, ext: str, kind: str, at: datetime, detail: dict[str, Any] | None = None,
                   userid: str | None = None) -> None:
    with services.transaction() as s:
        apply([RecordTimeline(ext, kind, at, userid=userid, detail=detail or {},
                              dedupe_key=f"test:{kind}:{ext}:{at.isoformat()}")],
              s, now=at, context_key=f"test:{kind}:{ext}:{at.isoformat()}")


def add_tag(services: Services, ext: str, tag: str, at: datetime) -> None:
    with services.transaction() as s:
        apply([AddTags(ext, (TagRef.parse(tag),), source="manual", at=at, mark_in_wecom=False)], s, now=at,
              context_key=f"test:tag:{ext}:{tag}:{at.isoformat()}")


def tasks(services: Services, ext: str | None = None) -> list[SopTask]:
    with services.transaction() as s:
        stmt = select(SopTask).order_by(SopTask.sop_id, SopTask.step_index)
        if ext:
            stmt = stmt.where(SopTask.external_userid == ext)
        return list(s.scalars(stmt))


def enrollments(services: Services, ext: str | None = None) -> list[SopEnrollment]:
    with services.transaction() as s:
        stmt = select(SopEnrollment).order_by(SopEnrollment.sop_id, SopEnrollment.rotation)
        if ext:
            stmt = stmt.where(SopEnrollment.external_userid == ext)
        return list(s.scalars(stmt))
