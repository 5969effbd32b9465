"""The scheduler tick: everything periodic, each step safe to run from several schedulers at once."""

from __future__ import annotations

from datetime import datetime

from bot.db import utcnow
from bot.services import Services
from jobs.sweeper import SweepReport, sweep

__all__ = ["tick"]


def tick(services: Services, now: datetime | None = None) -> SweepReport:
    now = now or utcnow()
    return sweep(services, now)
