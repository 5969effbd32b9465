"""The scheduler tick: everything periodic, each step safe to run from several schedulers at once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from bot.db import utcnow
from bot.services import Services
from jobs.sweeper import SweepReport, sweep

__all__ = ["tick"]


def tick(services: Services, now: datetime | None = None) -> SweepReport:
    """One tick: sweep first (recover lost work), then each area's periodic work, in this order."""
    now = now or utcnow()
    report = sweep(services, now)
    for area_tick in area_ticks():
        area_tick(services, now)
    return report


def area_ticks() -> list[Callable[[Services, datetime], object]]:
    """Each area module may define `tick(services, now)`; the scheduler runs them all."""
    import jobs.handover
    import jobs.retention
    import jobs.scoring
    import jobs.sop
    import jobs.tagging

    return [m.tick for m in (jobs.tagging, jobs.sop, jobs.handover, jobs.scoring, jobs.retention)
            if hasattr(m, "tick")]
