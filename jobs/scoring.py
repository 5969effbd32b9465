"""Lead scoring's periodic work and outbox executor.

tick(services, now):
1. decay: customers whose `recompute_at` is due get their score recomputed at `now` (thresholds re-arm,
   a negative entry fading can even promote), in bounded batches, each its own transaction;
2. SLA: pending assignments past their accept-by deadline are escalated once to the manager.

`scoring_notify` sends the Chinese textcard app message of an assignment or an escalation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from bot.apply import apply
from bot.db import utcnow
from bot.models import Customer, Outbox
from bot.queues import enqueue_outbox
from bot.scoring import service
from bot.services import Services
from bot.wecom.client import WeComError
from jobs.wecom_calls import Outcome, executor

log = logging.getLogger(__name__)

__all__ = ["TickReport", "scoring_notify", "tick"]

BATCH_SIZE = 500
MAX_BATCHES = 20  # at most 10,000 customers per tick; the rest stay due for the next one


@dataclass
class TickReport:
    rescored: int = 0
    stage_changes: int = 0
    escalated: int = 0
    outbox_ids: list[int] = field(default_factory=list)


def tick(services: Services, now: datetime | None = None, *, batch_size: int = BATCH_SIZE,
         max_batches: int = MAX_BATCHES) -> TickReport:
    now = now or utcnow()
    sales = service.sales_settings()
    report = TickReport()
    for batch in range(max_batches):
        with services.transaction() as session:
            ids = service.due_for_recompute(session, now, batch_size)
            actions = []
            for cid in ids:
                customer = session.get(Customer, cid)
                if customer is None:
                    continue
                actions += service.rescore(session, customer, now, sales)
            report.rescored += len(ids)
            report.stage_changes += sum(1 for a in actions if getattr(a, "kind", "") == "stage_changed")
            if actions:
                report.outbox_ids += apply(actions, session, now=now, context_key=f"scoring_tick:{batch}")
        if len(ids) < batch_size:
            break
    with services.transaction() as session:
        report.escalated, actions = service.escalate_due(session, now, sales=sales)
        if actions:
            report.outbox_ids += apply(actions, session, now=now, context_key="scoring_escalate")
    if report.outbox_ids:
        try:
            with services.transaction() as session:
                rows = session.execute(select(Outbox.id, Outbox.queue).where(Outbox.id.in_(report.outbox_ids))).all()
            enqueue_outbox(services.redis, [(i, q) for i, q in rows])
        except Exception:  # noqa: BLE001 - Redis down: the sweeper enqueues the rows later
            log.warning("scoring tick could not enqueue notifications; the sweeper will", exc_info=True)
    return report


@executor(service.NOTIFY_KIND)
def scoring_notify(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    """发送应用消息: the assignment / escalation textcard (Chinese)."""
    try:
        services.wecom.send_app_message(list(payload["userids"]), textcard=dict(payload["textcard"]))
    except WeComError as exc:
        from jobs.executors import _policy

        raise _policy(exc) from exc
    return Outcome(result={"userids": payload["userids"], "assignment_id": payload.get("assignment_id")})
