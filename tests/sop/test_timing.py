from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.sop.definition import Calendar, Timing
from bot.sop.timing import add_business_minutes, add_months, due_at, is_business_day, next_open

CST = ZoneInfo("Asia/Shanghai")
LA = ZoneInfo("America/Los_Angeles")
BIZ = Calendar(business_days=True)
PLAIN = Calendar()
QUIET = Calendar(quiet_hours=(time(21), time(9)))


def cst(*args: int) -> datetime:
    return datetime(*args, tzinfo=CST)  # type: ignore[arg-type,misc]


FRI_1500 = cst(2025, 9, 26, 15, 0)  # Friday before the 2025 National Day break


def test_chinese_calendar_facts_used_below() -> None:
    # 2025: Sat 09-27 is off, Sun 09-28 is a 调休 working day, 10-01..10-08 holidays, Sat 10-11 works.
    assert not is_business_day(date(2025, 9, 27))
    assert is_business_day(date(2025, 9, 28))
    assert not any(is_business_day(date(2025, 10, d)) for d in range(1, 9))
    assert is_business_day(date(2025, 10, 9)) and is_business_day(date(2025, 10, 11))
    assert not is_business_day(date(2025, 10, 12))
    assert is_business_day(date(2031, 1, 6)) and not is_business_day(date(2031, 1, 4))  # beyond the data


def test_results_are_aware_utc() -> None:
    result = due_at(Timing("day", day=1, at=time(10)), FRI_1500, None, PLAIN)
    assert result.tzinfo is UTC
    assert result == cst(2025, 9, 27, 10, 0)


def test_day_at_rolls_over_weekend_onto_tiaoxiu_sunday() -> None:
    # Day 1 is Saturday; the next working day is the 调休 Sunday, keeping the planned 10:00.
    assert due_at(Timing("day", day=1, at=time(10)), FRI_1500, None, BIZ) == cst(2025, 9, 28, 10, 0)


def test_day_landing_in_national_day_holiday_moves_to_first_workday() -> None:
    assert due_at(Timing("day", day=5, at=time(10, 30)), FRI_1500, None, BIZ) == cst(2025, 10, 9, 10, 30)


def test_business_day_counting_across_tiaoxiu() -> None:
    three_bd = Timing("after", amount=3, unit="business_days", relative_to="enrollment")
    assert due_at(three_bd, FRI_1500, None, BIZ) == cst(2025, 9, 30, 15, 0)  # Sun 28, Mon 29, Tue 30
    one_bd = Timing("after", amount=1, unit="business_days")
    assert due_at(one_bd, FRI_1500, cst(2025, 9, 30, 11, 0), BIZ) == cst(2025, 10, 9, 11, 0)
    assert due_at(Timing("after", amount=1, unit="business_days"), cst(2025, 10, 10, 9, 0), None, BIZ) == cst(
        2025, 10, 11, 9, 0
    )  # Saturday 10-11 is a working day


def test_relative_to_previous_or_enrollment() -> None:
    previous = cst(2025, 9, 28, 10, 0)
    from_prev = Timing("after", amount=7, unit="days", relative_to="previous")
    from_enr = Timing("after", amount=7, unit="days", relative_to="enrollment")
    assert due_at(from_prev, FRI_1500, previous, PLAIN) == cst(2025, 10, 5, 10, 0)
    assert due_at(from_enr, FRI_1500, previous, PLAIN) == cst(2025, 10, 3, 15, 0)
    assert due_at(from_prev, FRI_1500, None, PLAIN) == cst(2025, 10, 3, 15, 0)  # first step: enrollment
    two_h = Timing("after", amount=2, unit="hours")
    assert due_at(two_h, FRI_1500, None, PLAIN) == cst(2025, 9, 26, 17, 0)
    assert due_at(Timing("after", amount=1, unit="weeks"), FRI_1500, None, PLAIN) == cst(2025, 10, 3, 15)


def test_never_before_enrollment_or_previous_step() -> None:
    # Day 0 10:00 for someone enrolled at 15:00 is due at once.
    assert due_at(Timing("day", day=0, at=time(10)), FRI_1500, None, PLAIN) == FRI_1500
    previous = cst(2025, 9, 29, 9, 0)
    assert (
        due_at(Timing("after", amount=1, unit="hours", relative_to="enrollment"), FRI_1500, previous, PLAIN) == previous
    )


def test_absolute_datetime() -> None:
    aware = Timing("at", when=datetime(2025, 10, 15, 2, 0, tzinfo=UTC))
    assert due_at(aware, FRI_1500, None, PLAIN) == cst(2025, 10, 15, 10, 0)
    naive = Timing("at", when=datetime(2025, 10, 15, 10, 0))  # noqa: DTZ001 - read in the SOP zone
    assert due_at(naive, FRI_1500, None, PLAIN) == cst(2025, 10, 15, 10, 0)
    past = Timing("at", when=cst(2025, 1, 1, 10, 0))
    assert due_at(past, FRI_1500, None, PLAIN) == FRI_1500


def test_quiet_hours_move_to_next_open_moment() -> None:
    evening = cst(2025, 9, 23, 20, 0)
    assert due_at(Timing("after", amount=2, unit="hours"), evening, None, QUIET) == cst(2025, 9, 24, 9, 0)
    assert next_open(cst(2025, 9, 24, 3, 0), QUIET) == cst(2025, 9, 24, 9, 0)
    assert next_open(cst(2025, 9, 24, 9, 0), QUIET) == cst(2025, 9, 24, 9, 0)
    assert next_open(cst(2025, 9, 24, 20, 59), QUIET) == cst(2025, 9, 24, 20, 59)
    lunch = Calendar(quiet_hours=(time(12), time(13, 30)))
    assert next_open(cst(2025, 9, 24, 12, 15), lunch) == cst(2025, 9, 24, 13, 30)


def test_quiet_hours_and_holidays_combined() -> None:
    both = Calendar(business_days=True, quiet_hours=(time(21), time(9)))
    # Tue 09-30 22:00 -> quiet -> 10-01 is a holiday ... -> Thu 10-09 09:00.
    assert next_open(cst(2025, 9, 30, 22, 0), both) == cst(2025, 10, 9, 9, 0)


def test_customer_time_zone_overrides_sop_zone() -> None:
    cal = Calendar(quiet_hours=(time(21), time(9)), timezone="Asia/Shanghai")
    start = datetime(2025, 9, 26, 7, 0, tzinfo=UTC)  # 00:00 in Los Angeles
    step = Timing("day", day=1, at=time(10))
    assert due_at(step, start, None, cal, "America/Los_Angeles") == datetime(2025, 9, 27, 10, tzinfo=LA)
    assert due_at(step, start, None, cal, None) == cst(2025, 9, 27, 10)
    assert due_at(step, start, None, cal, "Not/AZone") == cst(2025, 9, 27, 10)  # unknown zone: SOP's
    # Quiet hours are the customer's night: 22:00 in LA waits for 09:00 LA.
    late = datetime(2025, 9, 27, 22, tzinfo=LA)
    assert next_open(late, cal, "America/Los_Angeles") == datetime(2025, 9, 28, 9, tzinfo=LA)


def test_days_keep_wall_clock_across_dst() -> None:
    start = datetime(2025, 11, 1, 10, 0, tzinfo=LA)  # PDT; DST ends 11-02
    result = due_at(Timing("after", amount=1, unit="days"), start, None, PLAIN, "America/Los_Angeles")
    assert result == datetime(2025, 11, 2, 18, 0, tzinfo=UTC)  # 10:00 PST
    hours = due_at(Timing("after", amount=24, unit="hours"), start, None, PLAIN, "America/Los_Angeles")
    assert hours == datetime(2025, 11, 2, 17, 0, tzinfo=UTC)  # a duration, 09:00 PST


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (cst(2025, 1, 31, 10), 1, cst(2025, 2, 28, 10)),
        (cst(2024, 1, 31, 10), 1, cst(2024, 2, 29, 10)),
        (cst(2025, 3, 31, 10), 1, cst(2025, 4, 30, 10)),
        (cst(2025, 11, 30, 10), 3, cst(2026, 2, 28, 10)),
        (cst(2025, 8, 15, 10), 1, cst(2025, 9, 15, 10)),
    ],
)
def test_plus_months_clamps_day(start: datetime, months: int, expected: datetime) -> None:
    assert add_months(start, months) == expected
    assert due_at(Timing("after", amount=months, unit="months"), start, None, PLAIN) == expected


def test_cron_in_sop_zone() -> None:
    mondays = Timing("cron", cron="0 10 * * 1")
    assert due_at(mondays, FRI_1500, None, PLAIN) == cst(2025, 9, 29, 10)
    # Next fire after the previous step, not after enrollment.
    assert due_at(mondays, FRI_1500, cst(2025, 9, 29, 10), PLAIN) == cst(2025, 10, 6, 10)
    # Monday 10-06 is a holiday: rolled to the next working day, same time.
    first_of_month = Timing("cron", cron="0 10 1 * *")
    assert due_at(first_of_month, FRI_1500, None, BIZ) == cst(2025, 10, 9, 10)
    assert due_at(mondays, FRI_1500, None, PLAIN, "America/Los_Angeles") == datetime(2025, 9, 29, 10, tzinfo=LA)


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        due_at(Timing("day"), datetime(2025, 9, 26, 15), None, PLAIN)  # noqa: DTZ001
    with pytest.raises(ValueError, match="aware"):
        add_business_minutes(datetime(2025, 9, 26, 15), 10)  # noqa: DTZ001


def test_add_business_minutes() -> None:
    # Friday 17:50 + 30 working minutes: 10 on Friday, 20 on the 调休 Sunday.
    assert add_business_minutes(cst(2025, 9, 26, 17, 50), 30) == cst(2025, 9, 28, 9, 20)
    assert add_business_minutes(cst(2025, 9, 30, 17, 45), 30) == cst(2025, 10, 9, 9, 15)
    assert add_business_minutes(cst(2025, 9, 24, 22, 0), 0) == cst(2025, 9, 25, 9, 0)
    assert add_business_minutes(cst(2025, 9, 24, 10, 0), 30) == cst(2025, 9, 24, 10, 30)
    assert add_business_minutes(cst(2025, 9, 24, 10, 0), 9 * 60) == cst(2025, 9, 25, 10, 0)
    # Without business days, Saturday counts.
    assert add_business_minutes(cst(2025, 9, 26, 17, 50), 30, business_days=False) == cst(2025, 9, 27, 9, 20)
    la = add_business_minutes(
        datetime(2025, 9, 26, 17, 50, tzinfo=LA), 30, "09:00-18:00", tz="America/Los_Angeles", business_days=False
    )
    assert la == datetime(2025, 9, 27, 9, 20, tzinfo=LA)
    with pytest.raises(ValueError):
        add_business_minutes(cst(2025, 9, 24, 10), 10, hours="18:00-09:00")


@given(
    start=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2026, 11, 30), timezones=st.just(UTC)),
    minutes=st.integers(min_value=0, max_value=60 * 24 * 40),
)
def test_next_open_lands_in_an_open_window(start: datetime, minutes: int) -> None:
    cal = Calendar(business_days=True, quiet_hours=(time(21), time(9)))
    result = next_open(start + timedelta(minutes=minutes), cal)
    local = result.astimezone(CST)
    assert result >= start + timedelta(minutes=minutes)
    assert is_business_day(local.date()) and time(9) <= local.time() < time(21)
    assert next_open(result, cal) == result  # idempotent
