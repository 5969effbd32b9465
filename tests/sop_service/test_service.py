"""The SOP engine in the service, on a real database, with a controlled clock (explicit `now=` everywhere)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from bot.actions import EndFollow
from bot.apply import apply
from bot.models import Customer, Outbox, TimelineEntry
from bot.services import Services
from bot.sop.models import SopEnrollment, SopTask
from bot.sop.service import move_open_work
from jobs.sop import SopTickConfig, tick
from tests.sop_service.helpers import add_customer, add_tag, customer_event, enrollments, make_library, sop_doc, tasks

CST = ZoneInfo("Asia/Shanghai")


def cst(*args: int) -> datetime:
    return datetime(*args, tzinfo=CST)  # type: ignore[arg-type,misc]


@pytest.fixture
def library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(*sops: dict[str, Any]) -> Path:
        root = make_library(tmp_path / f"lib{len(list(tmp_path.iterdir()))}", *sops)
        monkeypatch.setenv("SOPBOT_CONTENT_DIR", str(root))
        return root

    return install


def digests(services: Services) -> list[dict[str, Any]]:
    with services.transaction() as s:
        return [r.payload for r in s.scalars(select(Outbox).where(Outbox.kind == "send_digest").order_by(Outbox.id))]


def timeline(services: Services, ext: str, kind: str) -> list[dict[str, Any]]:
    with services.transaction() as s:
        return [t.detail for t in s.scalars(select(TimelineEntry).join(Customer).where(
            Customer.external_userid == ext, TimelineEntry.kind == kind).order_by(TimelineEntry.id))]


# ------------------------------------------------------------------------------------------- timing


def test_relative_absolute_business_days_across_tiaoxiu_weekend(services: Services, library: Any) -> None:
    library(sop_doc("t", [
        {"id": "d0", "day": 0, "content": "x", "touchpoint": "group"},
        {"id": "next_bd", "after": "+1bd", "content": "x", "touchpoint": "group"},
        {"id": "plus2h", "after": "+2h", "content": "x", "touchpoint": "group"},
        {"id": "fixed", "datetime": "2025-10-15T10:00:00+08:00", "content": "x", "touchpoint": "group"},
    ], calendar={"business_days": True, "timezone": "Asia/Shanghai"}))
    start = cst(2025, 9, 26, 15, 0)  # Friday; Sat 27 is off, Sun 28 is a 调休 working day
    add_customer(services, "wmA", "wangfang", start.astimezone(UTC))
    (first,) = tasks(services, "wmA")
    assert first.step_id == "d0" and first.due_at == start and first.state == "pending"

    # The next step is written when the current one comes due; its time counts from the previous step.
    tick(services, now=start + timedelta(minutes=1), enqueue=False)
    due = {t.step_id: t.due_at for t in tasks(services, "wmA")}
    assert due["next_bd"] == cst(2025, 9, 28, 15, 0)  # Sunday, because it is a working day in China
    tick(services, now=cst(2025, 9, 28, 15, 1), enqueue=False)
    assert {t.step_id: t.due_at for t in tasks(services, "wmA")}["plus2h"] == cst(2025, 9, 28, 17, 0)
    tick(services, now=cst(2025, 9, 28, 17, 1), enqueue=False)
    assert {t.step_id: t.due_at for t in tasks(services, "wmA")}["fixed"] == cst(2025, 10, 15, 10, 0)


def test_quiet_hours_and_customer_time_zone(services: Services, library: Any) -> None:
    library(sop_doc("q", [
        {"id": "hello", "day": 0, "content": "x", "touchpoint": "group"},
        {"id": "morning", "day": 1, "at": "10:00", "content": "x", "touchpoint": "group"},
    ], calendar={"quiet_hours": "21:00-09:00", "timezone": "Asia/Shanghai"}))
    late = cst(2025, 9, 23, 22, 30)
    add_customer(services, "wmQ", "wangfang", late)
    assert tasks(services, "wmQ")[0].due_at == cst(2025, 9, 24, 9, 0)  # waits for the window to open

    ny = ZoneInfo("America/New_York")
    add_customer(services, "wmNY", "wangfang", cst(2025, 9, 23, 12, 0), custom={"timezone": "America/New_York"})
    (hello,) = tasks(services, "wmNY")
    # 00:00 in New York is quiet there: 09:00 New York time, not Shanghai's.
    assert hello.due_at == datetime(2025, 9, 23, 9, 0, tzinfo=ny)
    tick(services, now=hello.due_at + timedelta(minutes=1), enqueue=False)
    morning = next(t for t in tasks(services, "wmNY") if t.step_id == "morning")
    assert morning.due_at == datetime(2025, 9, 24, 10, 0, tzinfo=ny)


# -------------------------------------------------------------------------------------------- exits


EXITS = {"exit": ["replied", {"tag_added": "意向:询价"}, {"stage_at_least": "SQL"}, "deleted"]}
TWO_STEPS = [{"id": "s1", "day": 1, "at": "10:00", "content": "x"},
             {"id": "s2", "day": 3, "at": "10:00", "content": "x"}]


def test_reply_event_exits_at_once_and_records_why(services: Services, library: Any) -> None:
    library(sop_doc("e", TWO_STEPS, **EXITS))
    start = cst(2025, 9, 22, 10, 0)
    add_customer(services, "wmR", "wangfang", start)
    customer_event(services, "wmR", "message_received", start + timedelta(hours=1),
                   {"direction": "customer", "text": "好的谢谢"}, userid="wangfang")
    (enrollment,) = enrollments(services, "wmR")
    assert enrollment.state == "exited" and enrollment.exit_reason == "replied"
    (task,) = tasks(services, "wmR")
    assert task.state == "skipped" and task.reason == "退出：replied"
    assert timeline(services, "wmR", "sop_exited")[0]["reason"] == "replied"
    # An employee's own message is not a reply.
    add_customer(services, "wmR2", "wangfang", start)
    customer_event(services, "wmR2", "message_received", start + timedelta(hours=1), {"direction": "employee"})
    assert enrollments(services, "wmR2")[0].state == "active"


def test_a_reply_later_in_the_same_batch_as_the_enrollment_counts_for_it(services: Services,
                                                                         library: Any) -> None:
    """A batch (an archive pull, a kf sync) can hold the add and the customer's first reply: the enrollment the
    add creates sees the reply that follows it, as it would had the two come one at a time; one before it not."""
    from bot.actions import RecordTimeline, UpsertCustomer, UpsertEmployee, UpsertFollow

    library(sop_doc("e", TWO_STEPS, **EXITS))
    start = cst(2025, 9, 22, 10, 0)

    def batch(ext: str, reply_at: datetime) -> None:
        with services.transaction() as s:
            apply([
                UpsertEmployee("wangfang", {"name": "王芳"}),
                UpsertCustomer(ext, {"name": "客户"}),
                UpsertFollow(ext, "wangfang", added_at=start),
                RecordTimeline(ext, "customer_added", start, userid="wangfang", detail={"userid": "wangfang"},
                               dedupe_key=f"test:added:{ext}"),
                RecordTimeline(ext, "message_received", reply_at, userid="wangfang",
                               detail={"direction": "customer", "text": "好的谢谢"}, dedupe_key=f"test:reply:{ext}"),
            ], s, now=start + timedelta(hours=2), context_key=f"test:batch:{ext}")

    batch("wmLate", start + timedelta(hours=1))
    (enrollment,) = enrollments(services, "wmLate")
    assert (enrollment.state, enrollment.exit_reason) == ("exited", "replied")
    assert enrollment.last_reply_at == start + timedelta(hours=1)
    assert [t.state for t in tasks(services, "wmLate")] == ["skipped"]

    batch("wmEarly", start - timedelta(minutes=5))  # said before the add: not a reply to the nurture
    (enrollment,) = enrollments(services, "wmEarly")
    assert (enrollment.state, enrollment.last_reply_at) == ("active", None)


@pytest.mark.parametrize("change", ["tag", "stage", "deleted"])
def test_exit_rechecked_right_before_due(services: Services, library: Any, change: str) -> None:
    """State that changed without passing the subscriber (a direct stage write, a follow end without a
    timeline entry) is caught when the task comes due: skipped with the reason, nobody reminded."""
    library(sop_doc("e", TWO_STEPS, **EXITS))
    start = cst(2025, 9, 22, 10, 0)
    add_customer(services, "wmX", "wangfang", start)
    with services.transaction() as s:
        if change == "tag":
            from bot.models import CustomerTag

            cid = s.scalar(select(Customer.id).where(Customer.external_userid == "wmX"))
            s.add(CustomerTag(customer_id=cid, group_name="意向", name="询价", source="manual", reason={}))
        elif change == "stage":
            s.execute(update(Customer).where(Customer.external_userid == "wmX").values(stage="SQL"))
        else:
            apply([EndFollow("wmX", "wangfang", start + timedelta(hours=2), by="customer")], s,
                  now=start, context_key="test:end")
    report = tick(services, now=cst(2025, 9, 23, 10, 1), enqueue=False)
    assert report.exited == 1 and digests(services) == []
    (task,) = tasks(services, "wmX")
    expected = {"tag": "tag_added:意向:询价", "stage": "stage_at_least:SQL", "deleted": "deleted"}[change]
    assert task.state == "skipped" and task.reason == f"退出：{expected}"
    assert enrollments(services, "wmX")[0].exit_reason == expected


def test_tag_event_exit_and_trigger_tag_enrolls(services: Services, library: Any) -> None:
    library(sop_doc("by_tag", TWO_STEPS, crowd={"trigger": [{"event": "tag_added", "tag": "来源:直播"}]}, **EXITS))
    start = cst(2025, 9, 22, 10, 0)
    add_customer(services, "wmT", "wangfang", start)
    assert enrollments(services, "wmT") == []
    add_tag(services, "wmT", "来源:直播", start + timedelta(minutes=5))
    assert [e.sop_id for e in enrollments(services, "wmT")] == ["by_tag"]
    add_tag(services, "wmT", "意向:询价", start + timedelta(minutes=10))
    assert enrollments(services, "wmT")[0].exit_reason == "tag_added:意向:询价"


# ---------------------------------------------------------------------------------------- re-entry


@pytest.mark.parametrize(("policy", "rotations"), [("never", [1]), ("after_exit", [1, 2]),
                                                   ({"every": "30 days"}, [1])])
def test_reentry_policies(services: Services, library: Any, policy: Any, rotations: list[int]) -> None:
    library(sop_doc("r", TWO_STEPS, reentry=policy, crowd={"trigger": [{"event": "tag_added", "tag": "活动:报名"}]},
                    exit=["replied"]))
    start = cst(2025, 9, 22, 10, 0)
    add_customer(services, "wmE", "wangfang", start)
    add_tag(services, "wmE", "活动:报名", start)
    customer_event(services, "wmE", "message_received", start + timedelta(hours=1), {"direction": "customer"})
    with services.transaction() as s:  # the tag comes off and on again a week later
        from bot.models import CustomerTag

        s.execute(update(CustomerTag).where(CustomerTag.name == "报名").values(removed_at=start))
    add_tag(services, "wmE", "活动:报名", start + timedelta(days=7))
    assert [e.rotation for e in enrollments(services, "wmE")] == rotations
    if isinstance(policy, dict):
        with services.transaction() as s:
            s.execute(update(CustomerTag).where(CustomerTag.name == "报名").values(removed_at=start))
        add_tag(services, "wmE", "活动:报名", start + timedelta(days=31))
        assert [e.rotation for e in enrollments(services, "wmE")] == [1, 2]


# ------------------------------------------------------------------------------------------- budget


def test_frequency_cap_defers_or_skips_with_reason(services: Services, library: Any) -> None:
    same_day = [{"id": "hello", "day": 0, "at": "11:00", "content": "x"}]
    library(sop_doc("a_first", same_day),
            sop_doc("b_defer", same_day, capped="defer"),
            sop_doc("c_skip", same_day + [{"id": "later", "day": 2, "at": "11:00", "content": "x"}], capped="skip"))
    add_customer(services, "wmC", "wangfang", cst(2025, 9, 22, 9, 0))
    by_sop = {(t.sop_id, t.step_id): t for t in tasks(services, "wmC")}
    assert by_sop[("a_first", "hello")].due_at == cst(2025, 9, 22, 11, 0)
    deferred = by_sop[("b_defer", "hello")]
    assert deferred.state == "pending" and deferred.due_at == cst(2025, 9, 23, 11, 0)
    assert deferred.planned_at == cst(2025, 9, 22, 11, 0) and "顺延" in (deferred.reason or "")
    skipped = by_sop[("c_skip", "hello")]
    assert skipped.state == "skipped" and "cap 1/day per employee" in (skipped.reason or "")
    assert by_sop[("c_skip", "later")].state == "pending"  # the sequence goes on after a skipped step
    assert [d["sop"] for d in timeline(services, "wmC", "sop_step_deferred")] == ["b_defer"]
    assert [d["sop"] for d in timeline(services, "wmC", "sop_step_skipped")] == ["c_skip"]


def test_ab_split_is_recorded_and_stable(services: Services, library: Any) -> None:
    library(sop_doc("ab", [{"id": "case", "day": 0, "touchpoint": "group", "variants": [
        {"id": "A", "script": "nurture.day7_case_story", "weight": 50},
        {"id": "B", "script": "nurture.day7_case_data", "weight": 50}]}]))
    for n in range(40):
        add_customer(services, f"wmAB{n:02d}", "wangfang", cst(2025, 9, 22, 9, 0))
    chosen = Counter((t.variant_id, t.script_id) for t in tasks(services))
    assert set(chosen) == {("A", "nurture.day7_case_story"), ("B", "nurture.day7_case_data")}
    assert sum(chosen.values()) == 40


# ------------------------------------------------------------------------------------------ handover


def test_move_open_work_reowns_open_tasks_only(services: Services, library: Any) -> None:
    library(sop_doc("h", TWO_STEPS))
    start = cst(2025, 9, 22, 10, 0)
    add_customer(services, "wmH", "wangfang", start)
    tick(services, now=cst(2025, 9, 23, 10, 1), enqueue=False)  # s1 due, s2 pending
    done = tasks(services, "wmH")[0]
    with services.transaction() as s:
        s.execute(update(SopTask).where(SopTask.id == done.id).values(state="done"))
        s.execute(update(SopTask).where(SopTask.step_id == "s2").values(state="pending"))
    with services.transaction() as s:
        moved = move_open_work(s, "wmH", "wangfang", "zhaolei", start + timedelta(days=2))
    assert moved == 1
    owners = {t.step_id: (t.owner_userid, t.state) for t in tasks(services, "wmH")}
    assert owners == {"s1": ("wangfang", "done"), "s2": ("zhaolei", "pending")}
    (enrollment,) = enrollments(services, "wmH")
    assert enrollment.owner_userid == "zhaolei" and enrollment.state == "active"
    assert timeline(services, "wmH", "sop_work_moved")[0]["to"] == "zhaolei"


# ------------------------------------------------------------------------------------ reminders


def test_one_digest_per_employee_overdue_rereminded_then_escalated(services: Services, library: Any) -> None:
    library(sop_doc("d", [{"id": "only", "day": 1, "at": "10:00", "content": "x"}]))
    start = cst(2025, 9, 22, 10, 0)
    for n in range(3):
        add_customer(services, f"wmD{n}", "wangfang", start, manager="boss")
    add_customer(services, "wmD9", "zhaolei", start)
    config = SopTickConfig(overdue_after=timedelta(hours=4), remind_every=timedelta(hours=24), max_reminders=2)
    t0 = cst(2025, 9, 23, 10, 5)
    tick(services, now=t0, config=config, enqueue=False)
    first = digests(services)
    assert sorted((d["userid"], d["count"]) for d in first) == [("wangfang", 3), ("zhaolei", 1)]
    tick(services, now=t0 + timedelta(minutes=1), config=config, enqueue=False)
    assert len(digests(services)) == 2  # nothing new: nobody is reminded twice in a run or across runs
    tick(services, now=t0 + timedelta(hours=25), config=config, enqueue=False)  # overdue -> re-reminded
    again = digests(services)[2:]
    assert sorted((d["userid"], d["count"], d["overdue"]) for d in again) == [("wangfang", 3, 3), ("zhaolei", 1, 1)]
    tick(services, now=t0 + timedelta(hours=26), config=config, enqueue=False)  # limit reached -> manager
    escalations = [d for d in digests(services) if d["kind"] == "escalate"]
    assert [(d["userid"], d["count"]) for d in escalations] == [("boss", 3)]  # zhaolei has no manager
    assert {t.state for t in tasks(services)} == {"overdue"}


def test_two_schedulers_at_once_remind_each_task_once(services: Services, library: Any) -> None:
    library(sop_doc("c", [{"id": "only", "day": 1, "at": "10:00", "content": "x"}]))
    start = cst(2025, 9, 22, 10, 0)
    for n in range(60):
        add_customer(services, f"wmP{n:02d}", ["wangfang", "zhaolei", "liuyang"][n % 3], start)
    now = cst(2025, 9, 23, 10, 5)
    config = SopTickConfig(batch=7)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            barrier.wait()
            tick(services, now=now, config=config, enqueue=False)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    all_tasks = tasks(services)
    assert len(all_tasks) == 60 and {t.reminded_count for t in all_tasks} == {1}
    listed = digests(services)
    assert sum(d["count"] for d in listed) == 60
    runs_per_user = Counter((d["userid"], d["run"]) for d in listed)
    assert set(runs_per_user.values()) == {1}  # one digest per (employee, run)


def test_stale_claim_of_a_crashed_run_is_taken_again(services: Services, library: Any) -> None:
    library(sop_doc("s", [{"id": "only", "day": 1, "at": "10:00", "content": "x"}]))
    add_customer(services, "wmS", "wangfang", cst(2025, 9, 22, 10, 0))
    now = cst(2025, 9, 23, 10, 5)
    with services.transaction() as s:  # a scheduler claimed it and died before writing the digest
        s.execute(update(SopTask).values(state="due", claimed_by="dead-run", claim_until=now - timedelta(minutes=1),
                                         claim_kind="remind"))
    tick(services, now=now, enqueue=False)
    (digest,) = digests(services)
    assert digest["userid"] == "wangfang" and digest["count"] == 1
    assert tasks(services)[0].claimed_by is None and tasks(services)[0].reminded_count == 1


def test_filter_crowd_enrolls_incrementally_on_events(services: Services, library: Any) -> None:
    library(sop_doc("f", TWO_STEPS, crowd={"filter": {"all": [{"tag_has": "行业:制造"}]}}, exit=["left_crowd"]))
    start = cst(2025, 9, 22, 10, 0)
    add_customer(services, "wmF", "wangfang", start)
    assert enrollments(services, "wmF") == []
    add_tag(services, "wmF", "行业:制造", start + timedelta(minutes=1))
    assert [e.state for e in enrollments(services, "wmF")] == ["active"]
    with services.transaction() as s:
        from bot.actions import RemoveTags, TagRef

        apply([RemoveTags("wmF", (TagRef.parse("行业:制造"),), source="manual", mark_in_wecom=False)], s,
              now=start, context_key="test:rm")
    assert enrollments(services, "wmF")[0].exit_reason == "left_crowd"


def test_enrollment_unique_per_rotation_in_the_database(services: Services, library: Any) -> None:
    from sqlalchemy.exc import IntegrityError

    library(sop_doc("u", TWO_STEPS))
    add_customer(services, "wmU", "wangfang", cst(2025, 9, 22, 10, 0))
    (e,) = enrollments(services, "wmU")
    with pytest.raises(IntegrityError), services.transaction() as s:
        s.add(SopEnrollment(sop_id="u", customer_id=e.customer_id, external_userid="wmU", rotation=1,
                            started_at=e.started_at, reason="dup"))
