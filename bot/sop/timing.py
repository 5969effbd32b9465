"""When a step is due: relative/absolute/cron timing, China business days (调休 aware), quiet hours, zones.

All inputs and outputs are aware datetimes; results are UTC. Calendar arithmetic ("day 3 10:00", "+1 month")
is done on the wall clock of the effective zone (the customer's if known, else the SOP's), durations
("+2h") on the absolute time line.
"""

from __future__ import annotations

import calendar as _calendar
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import chinese_calendar
from croniter import croniter

from bot.sop.definition import Calendar, Step, Timing, parse_window

# Guards against a calendar that can never open (e.g. quiet hours covering the whole day).
_MAX_ITERATIONS = 1000


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def effective_zone(calendar: Calendar, customer_tz: str | None = None) -> ZoneInfo:
    """The customer's zone wins when known and valid; otherwise the SOP's."""
    if customer_tz:
        try:
            return zone(customer_tz)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return zone(calendar.timezone)


def _require_aware(dt: datetime, name: str) -> None:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime")


@lru_cache(maxsize=4096)
def is_business_day(day: date) -> bool:
    """China working day: weekdays minus statutory holidays, plus 调休 working weekends."""
    try:
        return bool(chinese_calendar.is_workday(day))
    except NotImplementedError:
        # chinese-calendar only knows published years (1.11: 2004–2026); beyond that, weekends only.
        return day.weekday() < 5


def next_business_day(day: date, include_today: bool = True) -> date:
    if not include_today:
        day += timedelta(days=1)
    while not is_business_day(day):
        day += timedelta(days=1)
    return day


def add_business_days(day: date, n: int) -> date:
    day = next_business_day(day)
    for _ in range(n):
        day = next_business_day(day, include_today=False)
    return day


def add_months(dt: datetime, months: int) -> datetime:
    """Wall-clock month arithmetic; the day is clamped (Jan 31 + 1 month = Feb 28/29)."""
    index = dt.month - 1 + months
    year, month = dt.year + index // 12, index % 12 + 1
    day = min(dt.day, _calendar.monthrange(year, month)[1])
    return dt.replace(year=year, month=month, day=day)


def _in_window(t: time, window: tuple[time, time]) -> bool:
    start, end = window
    if start < end:
        return start <= t < end
    return t >= start or t < end  # wraps midnight, e.g. 21:00-09:00


def next_open(dt: datetime, calendar: Calendar, customer_tz: str | None = None) -> datetime:
    """The first moment ≥ dt that is on a business day (if required) and outside quiet hours (UTC)."""
    _require_aware(dt, "dt")
    tz = effective_zone(calendar, customer_tz)
    local = dt.astimezone(tz)
    for _ in range(_MAX_ITERATIONS):
        if calendar.business_days and not is_business_day(local.date()):
            local = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=tz)
            continue
        quiet = calendar.quiet_hours
        if quiet is not None and _in_window(local.time(), quiet):
            end = quiet[1]
            # Before the window's end on the same day (early morning, or a midday window): open today.
            day = local.date() if local.time() < end else local.date() + timedelta(days=1)
            local = datetime.combine(day, end, tzinfo=tz)
            continue
        return local.astimezone(UTC)
    raise ValueError("calendar never opens")


def _as_timing(step: Step | Timing) -> Timing:
    return step.timing if isinstance(step, Step) else step


def raw_due_at(timing: Timing, enrollment_started_at: datetime, previous_due: datetime | None,
               calendar: Calendar, tz: ZoneInfo) -> datetime:
    """The due moment before clamping and calendar windows."""
    start_local = enrollment_started_at.astimezone(tz)
    if timing.kind == "day":
        # Calendar days, as ops people count them ("day 7" = a week later); a day that is not a business day
        # rolls forward in due_at. Use "+Nbd" to count working days.
        day = start_local.date() + timedelta(days=timing.day)
        if timing.at is None:
            return start_local.replace(year=day.year, month=day.month, day=day.day)
        return datetime.combine(day, timing.at, tzinfo=tz)
    if timing.kind == "after":
        base = previous_due if timing.relative_to == "previous" and previous_due is not None \
            else enrollment_started_at
        base_local = base.astimezone(tz)
        # Durations run on the UTC time line: aware + timedelta in a DST zone would add wall-clock time.
        if timing.unit == "minutes":
            return base.astimezone(UTC) + timedelta(minutes=timing.amount)
        if timing.unit == "hours":
            return base.astimezone(UTC) + timedelta(hours=timing.amount)
        if timing.unit in ("days", "weeks"):
            days = timing.amount * (7 if timing.unit == "weeks" else 1)
            return base_local + timedelta(days=days)  # same-zone arithmetic keeps the wall-clock time
        if timing.unit == "business_days":
            day = add_business_days(base_local.date(), timing.amount)
            return base_local.replace(year=day.year, month=day.month, day=day.day)
        if timing.unit == "months":
            return add_months(base_local, timing.amount)
        raise ValueError(f"unknown unit {timing.unit!r}")
    if timing.kind == "cron":
        base = previous_due or enrollment_started_at
        # croniter evaluates in the zone of its start time: schedules read as the SOP/customer wall clock.
        nxt = croniter(timing.cron or "", base.astimezone(tz)).get_next(datetime)
        return nxt
    if timing.kind == "at":
        assert timing.when is not None
        return timing.when if timing.when.tzinfo is not None else timing.when.replace(tzinfo=tz)
    raise ValueError(f"unknown timing kind {timing.kind!r}")


def due_at(step: Step | Timing, enrollment_started_at: datetime, previous_due: datetime | None,
           calendar: Calendar, customer_tz: str | None = None) -> datetime:
    """When a step is due (aware UTC).

    Never earlier than the enrollment or the previous step (order is part of the script: a day-0 10:00 step
    for someone enrolled at 15:00 is due at once, not in the past), then moved to the next open moment.
    """
    _require_aware(enrollment_started_at, "enrollment_started_at")
    if previous_due is not None:
        _require_aware(previous_due, "previous_due")
    tz = effective_zone(calendar, customer_tz)
    raw = raw_due_at(_as_timing(step), enrollment_started_at, previous_due, calendar, tz)
    floor = max(enrollment_started_at, previous_due) if previous_due is not None else enrollment_started_at
    return settle(max(raw, floor), calendar, customer_tz)


def settle(dt: datetime, calendar: Calendar, customer_tz: str | None = None) -> datetime:
    """Place a planned moment on the calendar (UTC): a non-working day keeps its wall-clock time on the next
    working day ("day 7 10:30" on a Saturday -> Monday 10:30, not Monday 00:00), then quiet hours apply."""
    _require_aware(dt, "dt")
    local = dt.astimezone(effective_zone(calendar, customer_tz))
    if calendar.business_days and not is_business_day(local.date()):
        day = next_business_day(local.date())
        local = local.replace(year=day.year, month=day.month, day=day.day)
    return next_open(local, calendar, customer_tz)


def add_business_minutes(start: datetime, minutes: int, hours: str = "09:00-18:00",
                         tz: str = "Asia/Shanghai", business_days: bool = True) -> datetime:
    """Add working minutes (SLA clocks): only time inside ``hours`` on business days counts. UTC result.

    ``minutes=0`` returns the next open moment (an SLA that starts at night starts at opening time).
    """
    _require_aware(start, "start")
    window = parse_window(hours)
    if window is None or window[0] >= window[1]:
        raise ValueError(f"hours must look like '09:00-18:00' within one day, not {hours!r}")
    if minutes < 0:
        raise ValueError("minutes must be ≥ 0")
    open_t, close_t = window
    zi = zone(tz)
    local = start.astimezone(zi)
    remaining = timedelta(minutes=minutes)
    for _ in range(_MAX_ITERATIONS * 10):
        day = local.date()
        if business_days and not is_business_day(day):
            local = datetime.combine(day + timedelta(days=1), open_t, tzinfo=zi)
            continue
        day_open = datetime.combine(day, open_t, tzinfo=zi)
        day_close = datetime.combine(day, close_t, tzinfo=zi)
        if local < day_open:
            local = day_open
        if local >= day_close:
            local = datetime.combine(day + timedelta(days=1), open_t, tzinfo=zi)
            continue
        # Subtract in UTC: same-zone subtraction in Python ignores DST offset changes.
        available = day_close.astimezone(UTC) - local.astimezone(UTC)
        if remaining <= available:
            return local.astimezone(UTC) + remaining
        remaining -= available
        local = datetime.combine(day + timedelta(days=1), open_t, tzinfo=zi)
    raise ValueError("business minutes span too long")
