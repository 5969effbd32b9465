"""The sweeper: re-enqueue what a crash or a Redis outage left behind (run by the scheduler tick).

- inbox rows still `pending` a while after arrival whose job is not in Redis (enqueue failed,
  Redis lost its data, a worker died mid-job), and `retry` rows whose backoff has passed;
- outbox rows `pending` without a live job, `retry` rows that are due, and `running` rows whose
  lease ran out (the worker died during the call).
Deterministic job ids make it safe to run often and from several schedulers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from bot.db import rowcount, utcnow
from bot.models import InboxEvent, Outbox
from bot.queues import DeadJobCheck, enqueue_event, enqueue_outbox
from bot.services import Services

log = logging.getLogger("sopbot.sweeper")

__all__ = ["sweep", "SweepReport", "PENDING_GRACE", "BATCH"]

PENDING_GRACE = timedelta(seconds=30)  # a fresh row's job is normally already queued (SOPBOT_SWEEP_GRACE_SECONDS)
BATCH = 1000


@dataclass
class SweepReport:
    inbox: int = 0
    outbox: int = 0
    leases_expired: int = 0


def grace(services: Services) -> timedelta:
    raw = services.settings.extra.get("SOPBOT_SWEEP_GRACE_SECONDS")
    return timedelta(seconds=float(raw)) if raw else PENDING_GRACE


def sweep(services: Services, now: datetime | None = None) -> SweepReport:
    now = now or utcnow()
    report = SweepReport()
    pending_grace = grace(services)
    with services.transaction() as session:
        report.leases_expired = rowcount(session.execute(
            update(Outbox).where(Outbox.status == "running", Outbox.next_attempt_at < now)
            .values(status="retry", next_attempt_at=now, last_error="lease expired: worker died during the call")
        ))
        inbox_ids = session.scalars(
            select(InboxEvent.id).where(or_(
                (InboxEvent.status == "pending") & (InboxEvent.received_at < now - pending_grace),
                (InboxEvent.status == "retry") & (InboxEvent.next_attempt_at <= now),
            )).order_by(InboxEvent.id).limit(BATCH)
        ).all()
        outbox_rows = session.execute(
            select(Outbox.id, Outbox.queue).where(or_(
                (Outbox.status == "pending") & (Outbox.created_at < now - pending_grace),
                (Outbox.status == "retry") & (Outbox.next_attempt_at <= now),
            )).where(or_(Outbox.not_before.is_(None), Outbox.not_before <= now)).order_by(Outbox.id).limit(BATCH)
        ).all()
    conn = services.redis
    # These rows are not done after the grace: a job of theirs that a killed worker left behind (SIGKILL,
    # OOM) counts as dead instead of waiting for rq's own cleanup (see DeadJobCheck).
    dead = DeadJobCheck(after=pending_grace.total_seconds())
    for inbox_id in inbox_ids:
        # retry rows are always re-enqueued (their old job finished); pending ones only without a live job
        if enqueue_event(conn, inbox_id, check_live=True, dead=dead):
            report.inbox += 1
    report.outbox = enqueue_outbox(conn, [(i, q) for i, q in outbox_rows], check_live=True, dead=dead)
    if report.inbox or report.outbox or report.leases_expired:
        log.info("sweeper re-enqueued %d inbox and %d outbox rows (%d leases expired)",
                 report.inbox, report.outbox, report.leases_expired)
    return report
