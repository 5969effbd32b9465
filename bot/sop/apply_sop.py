"""Executors of the sop area's actions, registered on bot.apply with `@executes`, and its event subscriber.

The subscriber runs in the same transaction as the timeline entries that caused it, so an enrollment,
an exit or a reply mark commits with the event or not at all; a redelivered event emits nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.actions import Action
from bot.apply import ApplyContext, DomainEvent, executes, subscribe


@dataclass(frozen=True)
class CloseSopTask(Action):
    """A task completed (done) or skipped, e.g. from WeCom's mass-send result; a closed task stays closed."""

    task_id: int
    state: str  # done | skipped
    reason: str | None = None
    by: str | None = None
    at: datetime | None = None


@dataclass(frozen=True)
class MassSendCreated(Action):
    """add_msg_template answered: keep the msgid so the tick can poll the send result."""

    task_id: int
    msgid: str


@subscribe
def on_domain_events(ctx: ApplyContext, events: list[DomainEvent]) -> list[Action]:
    from bot.sop.service import handle_events  # imported late: service imports bot.apply

    return handle_events(ctx.session, events, ctx.now)


@executes
def _(action: CloseSopTask, ctx: ApplyContext) -> None:
    from bot.apply import _apply
    from bot.sop.models import SopTask
    from bot.sop.service import close_task

    task = ctx.session.get(SopTask, action.task_id)
    if task is None:
        return
    for follow_up in close_task(ctx.session, task, action.state, reason=action.reason, by=action.by,
                                now=action.at or ctx.now):
        _apply(follow_up, ctx)


@executes
def _(action: MassSendCreated, ctx: ApplyContext) -> None:
    from bot.sop.models import SopTask

    task = ctx.session.get(SopTask, action.task_id)
    if task is not None and task.msgid is None:
        task.msgid = action.msgid
        task.detail = {**(task.detail or {}), "mass_send_created_at": ctx.now.isoformat()}
