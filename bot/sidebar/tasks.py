"""Adapter between the sidebar and the SOP area's task table (bot/sop/models.py `SopTask`).

The sidebar never owns task state: it reads open tasks and completes/skips them through the
SOP area's own close path (`CloseSopTask` -> `bot.sop.service.close_task`: open -> done|skipped once,
timeline entry, enrollment completed after its last step) under a row lock, so a task finished from the
sidebar, the admin API or a mass-send result cannot be finished twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.apply import apply
from bot.models import Customer
from bot.sop.apply_sop import CloseSopTask
from bot.sop.models import TASK_OPEN_STATES, SopTask

log = logging.getLogger("sopbot.sidebar")

__all__ = ["TaskView", "TaskResult", "open_tasks_for_customer", "open_tasks_for_employee",
           "get_task", "complete_task", "skip_task"]

TaskResult = Literal["done", "skipped", "not_found", "forbidden", "closed"]
MAX_TASKS = 200


@dataclass(frozen=True)
class TaskView:
    id: int
    customer_id: int
    external_userid: str
    customer_name: str
    owner_userid: str | None
    sop_id: str
    step_id: str
    script_id: str
    touchpoint: str
    due_at: datetime
    state: str


def _views(session: Session, rows: list[Any]) -> list[TaskView]:
    names = dict(session.execute(
        select(Customer.id, Customer.name).where(Customer.id.in_({r.customer_id for r in rows}))).all()) if rows else {}
    return [TaskView(id=r.id, customer_id=r.customer_id, external_userid=r.external_userid,
                     customer_name=names.get(r.customer_id) or "", owner_userid=r.owner_userid, sop_id=r.sop_id,
                     step_id=r.step_id, script_id=r.script_id, touchpoint=r.touchpoint, due_at=r.due_at,
                     state=r.state) for r in rows]


def open_tasks_for_customer(session: Session, customer_id: int, userid: str | None) -> list[TaskView]:
    """Open tasks of one customer; userid None (an admin) sees every owner's, else only the employee's own."""
    stmt = select(SopTask).where(SopTask.customer_id == customer_id, SopTask.state.in_(TASK_OPEN_STATES))
    if userid is not None:
        stmt = stmt.where(SopTask.owner_userid == userid)
    return _views(session, list(session.scalars(stmt.order_by(SopTask.due_at, SopTask.id).limit(MAX_TASKS))))


def open_tasks_for_employee(session: Session, userid: str) -> list[TaskView]:
    """The employee's own open tasks across customers, soonest due first (the reminder digest lands here)."""
    stmt = (select(SopTask).where(SopTask.owner_userid == userid, SopTask.state.in_(TASK_OPEN_STATES))
            .order_by(SopTask.due_at, SopTask.id).limit(MAX_TASKS))
    return _views(session, list(session.scalars(stmt)))


def get_task(session: Session, task_id: int) -> TaskView | None:
    row = session.get(SopTask, task_id)
    return _views(session, [row])[0] if row is not None else None


def _finish(session: Session, task_id: int, userid: str, *, is_admin: bool, now: datetime, state: str,
            reason: str | None) -> TaskResult:
    # Row lock (PostgreSQL; SQLite already holds the write lock): two taps on "done" close it once.
    task = session.get(SopTask, task_id, with_for_update=True)
    if task is None:
        return "not_found"
    # Only the task's owner (or an admin) finishes it: a task id in a URL is not a permission.
    if task.owner_userid != userid and not is_admin:
        return "forbidden"
    if task.state not in TASK_OPEN_STATES:
        return "closed"
    # The SOP area's own close path: timeline entry, and the enrollment completes after its last step.
    apply([CloseSopTask(task_id=task_id, state=state, reason=reason, by=userid, at=now)], session, now=now,
          context_key=f"sidebar:task:{task_id}")
    log.info("sidebar task %s", state, extra={"task_id": task_id, "userid": userid})
    return "done" if state == "done" else "skipped"


def complete_task(session: Session, task_id: int, userid: str, *, is_admin: bool, now: datetime) -> TaskResult:
    """Sent from the sidebar: open -> done, once."""
    return _finish(session, task_id, userid, is_admin=is_admin, now=now, state="done", reason="侧边栏已发送")


def skip_task(session: Session, task_id: int, userid: str, *, is_admin: bool, now: datetime,
              reason: str | None = None) -> TaskResult:
    """Skipped by the employee: open -> skipped, once, with the reason if given."""
    return _finish(session, task_id, userid, is_admin=is_admin, now=now, state="skipped",
                   reason=reason or "员工在侧边栏跳过")
