"""The SOP tick (reminders, overdue, escalation, mass-send polling) and the sop area's outbox executors.

`tick(services, now)` runs from `sopbot scheduler`, possibly from several schedulers at once:

1. claim, in bounded batches, each its own transaction: pending tasks that came due (pending -> due),
   overdue tasks due for another reminder, overdue tasks past the reminder limit (escalation), and tasks
   whose claim a crashed run left behind (claim_until passed). A claim is a compare-and-set UPDATE; on
   PostgreSQL the candidates are picked with FOR UPDATE SKIP LOCKED, on SQLite BEGIN IMMEDIATE serialises
   the batches. A task claimed as due is re-checked for exit conditions right there (exit -> skipped with
   the reason), its step's next task is planned, and a mass-send step gets its add_msg_template call.
2. digests: the tasks this run claimed, grouped by employee (escalations by manager), become ONE outbox
   row `send_digest` per (employee, run) — in the same transaction that releases the claims, with a
   compare-and-set on the run id, so each task is reminded once whatever runs concurrently.
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, case, literal, or_, select, update
from sqlalchemy.orm import Session

from bot.actions import Action
from bot.apply import apply, insert_ignore
from bot.db import UTCDateTime, utcnow
from bot.models import Customer, Employee, Outbox
from bot.observability import REMINDERS
from bot.queues import enqueue_outbox
from bot.services import Services
from bot.sop.apply_sop import CloseSopTask, MassSendCreated
from bot.sop.engine import check_exit
from bot.sop.models import TASK_OPEN_STATES, SopTask
from bot.sop.service import (
    READ_CHUNK,
    PlanContext,
    any_of,
    budget_from_env,
    bulk_insert,
    customer_views,
    definitions,
    enrollment_rows,
    exit_enrollment,
    insert_tasks,
    plan_next,
    render_task,
    save_enrollment_rows,
    touches_for,
)
from bot.wecom.client import WeComError
from jobs.wecom_calls import GiveUp, Outcome, executor

log = logging.getLogger("sopbot.jobs.sop")

__all__ = ["tick", "TickReport", "SopTickConfig", "send_digest", "sop_mass_send", "sop_mass_result"]

DIGEST_QUEUE = "reminders"
MASS_QUEUE = "default"
DIGEST_ITEMS = 5  # a textcard shows a few lines; the sidebar has the rest


@dataclass(frozen=True)
class SopTickConfig:
    """Bounds of one tick (SOPBOT_SOP_* variables override the defaults)."""

    batch: int = 10000  # tasks per claim transaction: large batches amortise the candidate scan
    lease: timedelta = timedelta(minutes=10)
    overdue_after: timedelta = timedelta(hours=24)
    remind_every: timedelta = timedelta(hours=24)
    max_reminders: int = 3  # the first reminder plus two re-reminders, then the manager hears of it
    mass_poll_every: timedelta = timedelta(minutes=30)

    @classmethod
    def from_settings(cls, extra: Any) -> SopTickConfig:
        def hours(name: str, default: timedelta) -> timedelta:
            raw = extra.get(name)
            return timedelta(hours=float(raw)) if raw else default

        return cls(batch=int(extra.get("SOPBOT_SOP_BATCH") or cls.batch),
                   overdue_after=hours("SOPBOT_SOP_OVERDUE_HOURS", cls.overdue_after),
                   remind_every=hours("SOPBOT_SOP_REMIND_EVERY_HOURS", cls.remind_every),
                   max_reminders=int(extra.get("SOPBOT_SOP_MAX_REMINDERS") or 3))


@dataclass
class TickReport:
    run: str
    claimed: int = 0
    became_overdue: int = 0
    exited: int = 0
    planned: int = 0
    digests: int = 0
    escalations: int = 0
    outbox_ids: list[int] = field(default_factory=list)


def tick(services: Services, now: datetime | None = None, *, config: SopTickConfig | None = None,
         enqueue: bool = True) -> TickReport:
    now = now or utcnow()
    config = config or SopTickConfig.from_settings(services.settings.extra)
    report = TickReport(run=f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}")
    with services.transaction() as session:
        report.became_overdue = int(getattr(session.execute(
            update(SopTask).where(SopTask.state == "due", SopTask.due_at <= now - config.overdue_after)
            .values(state="overdue")), "rowcount", 0) or 0)
    while True:  # newly due tasks, batch by batch, until none is left
        with services.transaction() as session:
            claimed = _claim(session, _due_candidates(now), report.run, now, config, new_state="due", kind="remind")
            if claimed:
                _process_due(services, session, claimed, now, report)
        report.claimed += len(claimed)
        if len(claimed) < config.batch:
            break
    for kind, candidates in (("remind", _reremind_candidates(now, config)),
                             ("escalate", _escalate_candidates(config))):
        while True:
            with services.transaction() as session:
                held = _claim(session, candidates, report.run, now, config, new_state=None, kind=kind)
            report.claimed += len(held)
            if len(held) < config.batch:
                break
    _build_digests(services, report, now)
    REMINDERS.labels(kind="remind", outcome="queued").inc(report.digests)
    REMINDERS.labels(kind="escalate", outcome="queued").inc(report.escalations)
    _poll_mass_sends(services, report, now, config)
    if enqueue and report.outbox_ids:
        with services.transaction() as session:
            rows = session.execute(select(Outbox.id, Outbox.queue).where(
                any_of(session, Outbox.id, report.outbox_ids))).all()
        try:
            enqueue_outbox(services.redis, [(i, q) for i, q in rows])
        except Exception:  # Redis away: the sweeper enqueues the rows later
            log.warning("sop outbox enqueue failed; left for the sweeper")
    if report.claimed or report.digests:
        log.info("sop tick %s: %d claimed, %d digests, %d escalations, %d exits", report.run, report.claimed,
                 report.digests, report.escalations, report.exited)
    return report


# ------------------------------------------------------------------------------------------ claiming


def _unclaimed(now: datetime) -> Any:
    # A claim left by a crashed run lapses at claim_until: that is the stale reclaim.
    return or_(SopTask.claimed_by.is_(None), SopTask.claim_until < now)


def _due_candidates(now: datetime) -> Any:
    return and_(SopTask.state == "pending", SopTask.due_at <= now, _unclaimed(now))


def _reremind_candidates(now: datetime, config: SopTickConfig) -> Any:
    # Includes due/overdue tasks whose reminder claim lapsed (their run died before the digest).
    lapsed = and_(SopTask.state.in_(("due", "overdue")), SopTask.claimed_by.is_not(None), SopTask.claim_until < now)
    again = and_(SopTask.state == "overdue", SopTask.claimed_by.is_(None),
                 SopTask.reminded_count < config.max_reminders,
                 or_(SopTask.last_reminded_at.is_(None), SopTask.last_reminded_at <= now - config.remind_every))
    return or_(lapsed, again)


def _escalate_candidates(config: SopTickConfig) -> Any:
    return and_(SopTask.state == "overdue", SopTask.claimed_by.is_(None), SopTask.escalated_at.is_(None),
                SopTask.reminded_count >= config.max_reminders)


# What the due path needs of a claimed task, returned by the claiming UPDATE itself (no second read).
_CLAIMED_COLUMNS = (SopTask.id, SopTask.enrollment_id, SopTask.sop_id, SopTask.step_index, SopTask.customer_id,
                    SopTask.touchpoint, SopTask.due_at)


def _claim(session: Session, condition: Any, run: str, now: datetime, config: SopTickConfig, *,
           new_state: str | None, kind: str) -> list[Any]:
    """Compare-and-set claim of at most `batch` tasks in one statement; returns the rows this run now holds.

    UPDATE … WHERE id IN (SELECT … LIMIT n [FOR UPDATE SKIP LOCKED]) AND <condition> RETURNING: on
    PostgreSQL a concurrent scheduler skips the rows this one has locked instead of waiting on them, and the
    repeated condition makes the UPDATE itself the compare-and-set; on SQLite BEGIN IMMEDIATE serialises
    whole batches (FOR UPDATE is not rendered there).
    """
    pick: Select[Any] = select(SopTask.id).where(condition).order_by(SopTask.due_at, SopTask.id).limit(config.batch)
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    values: dict[str, Any] = {"claimed_by": run, "claim_until": now + config.lease, "claim_kind": kind}
    if new_state:
        values["state"] = new_state
    return list(session.execute(update(SopTask).where(SopTask.id.in_(pick.scalar_subquery()), condition)
                                .values(**values).returning(*_CLAIMED_COLUMNS)))


def _process_due(services: Services, session: Session, claimed: list[Any], now: datetime,
                 report: TickReport) -> None:
    """Right before a task becomes due: exit check, next step, mass-send call. Same transaction as the claim.

    Reads plain rows (tasks from the claim's RETURNING, enrollments, customers) and writes in bulk: the
    per-task cost is the engine's decision, not ORM bookkeeping.
    """
    sops = definitions()
    # RETURNING comes back in no particular order; plan in due order so the budget goes to the earlier step.
    claimed = sorted(claimed, key=lambda t: (t.due_at, t.id))
    enrollments = enrollment_rows(session, {t.enrollment_id for t in claimed})
    states = customer_views(session, {t.customer_id for t in claimed})
    plan = PlanContext(budget_from_env(services.settings.extra), touches_for(session, states, now), now)
    actions: list[Action] = []
    new_rows: list[dict[str, Any]] = []
    ended: list[int] = []  # enrollment gone/inactive or customer gone: the task is skipped
    for task in claimed:
        enrollment = enrollments.get(task.enrollment_id)
        sop = sops.get(task.sop_id)
        state = states.get(task.customer_id)
        if enrollment is None or enrollment.state != "active" or state is None:
            ended.append(task.id)
            continue
        if sop is None or not sop.enabled:
            actions += exit_enrollment(session, enrollment, "SOP 已删除或停用", now)
            report.exited += 1
            continue
        view = state.view(enrollment.owner_userid)
        verdict = check_exit(sop, view, enrollment.started_at, enrollment.last_reply_at, now)
        if verdict.exit:
            actions += exit_enrollment(session, enrollment, verdict.reason, now)
            report.exited += 1
            continue
        if task.touchpoint == "mass_send":
            actions.append(_mass_send_call(task.id))
        rows, more = plan_next(session, sop, enrollment, view, task.step_index + 1, task.due_at, plan)
        new_rows += rows
        actions += more
    for start in range(0, len(ended), READ_CHUNK):
        session.execute(update(SopTask).where(any_of(session, SopTask.id, ended[start:start + READ_CHUNK])).values(
            state="skipped", reason="报名已结束", claimed_by=None))
    save_enrollment_rows(session, enrollments.values(), now)
    insert_tasks(session, new_rows)
    report.planned += len(new_rows)
    if actions:
        report.outbox_ids += apply(actions, session, now=now, context_key=f"sop_tick:{report.run}")


def _mass_send_call(task_id: int) -> Action:
    from bot.actions import EnqueueCall

    return EnqueueCall("sop_mass_send", {"task_id": task_id}, dedupe_key=f"sop_mass_send:{task_id}",
                       queue=MASS_QUEUE)


# ------------------------------------------------------------------------------------------- digests


def _build_digests(services: Services, report: TickReport, now: datetime) -> None:
    """One digest per (employee, run): release this run's claims and write the outbox rows together."""
    with services.transaction() as session:
        owners = sorted({o or "" for o in session.scalars(select(SopTask.owner_userid).where(
            SopTask.claimed_by == report.run).distinct())})
    for start in range(0, len(owners), 2000):
        chunk = owners[start:start + 2000]
        with services.transaction() as session:
            report.outbox_ids += _digest_chunk(session, report, chunk, now)


def _digest_chunk(session: Session, report: TickReport, owners: list[str], now: datetime) -> list[int]:
    # Release the claims and count the reminder/escalation in the same UPDATE (the claim kind picks which),
    # so each released task costs one row write instead of two.
    escalating = SopTask.claim_kind == "escalate"
    # Typed explicitly: a bare datetime inside CASE would bind as plain DateTime and skip UTCDateTime's
    # SQLite conversion, and the stored text would then compare wrongly with every other timestamp.
    at = literal(now, UTCDateTime())
    released = session.execute(
        update(SopTask).where(SopTask.claimed_by == report.run, any_of(session, SopTask.owner_userid, owners),
                              SopTask.state.in_(TASK_OPEN_STATES))
        .values(claimed_by=None, claim_until=None,
                reminded_count=case((escalating, SopTask.reminded_count), else_=SopTask.reminded_count + 1),
                last_reminded_at=case((escalating, SopTask.last_reminded_at), else_=at),
                escalated_at=case((escalating, at), else_=SopTask.escalated_at))
        .returning(SopTask.id, SopTask.owner_userid, SopTask.claim_kind, SopTask.customer_id, SopTask.sop_id,
                   SopTask.step_id, SopTask.touchpoint, SopTask.due_at, SopTask.state)).all()
    remind = [r for r in released if r.claim_kind != "escalate"]
    escalate = [r for r in released if r.claim_kind == "escalate"]
    by_owner: dict[str, list[Any]] = defaultdict(list)
    for r in remind:
        if r.owner_userid:
            by_owner[r.owner_userid].append(r)
    by_manager: dict[str, list[Any]] = defaultdict(list)
    if escalate:
        managers = dict(session.execute(select(Employee.userid, Employee.manager_userid).where(
            Employee.userid.in_({r.owner_userid for r in escalate if r.owner_userid}))).all())
        for r in escalate:
            manager = managers.get(r.owner_userid or "")
            if manager:
                by_manager[manager].append(r)
            else:
                log.warning("overdue SOP task %s has no manager to escalate to", r.id)
    firsts = [r for rows in (*by_owner.values(), *by_manager.values()) for r in sorted(rows, key=_order)[:DIGEST_ITEMS]]
    names = _customer_names(session, {r.customer_id for r in firsts})
    rows: list[dict[str, Any]] = []
    for kind, groups in (("remind", by_owner), ("escalate", by_manager)):
        for userid, items in groups.items():
            items = sorted(items, key=_order)
            payload = {"userid": userid, "run": report.run, "kind": kind, "count": len(items),
                       "overdue": sum(1 for r in items if r.state == "overdue"),
                       "items": [{"task_id": r.id, "customer": names.get(r.customer_id, ""), "sop": r.sop_id,
                                  "step": r.step_id, "touchpoint": r.touchpoint, "due_at": r.due_at.isoformat(),
                                  "owner": r.owner_userid, "state": r.state} for r in items[:DIGEST_ITEMS]]}
            rows.append({"kind": "send_digest", "queue": DIGEST_QUEUE, "payload": payload, "status": "pending",
                         "attempts": 0, "created_at": now, "dedupe_key": f"sop_digest:{report.run}:{kind}:{userid}"})
    report.digests += sum(1 for r in rows if r["payload"]["kind"] == "remind")
    report.escalations += sum(1 for r in rows if r["payload"]["kind"] == "escalate")
    if not rows:
        return []
    # dedupe_key is unique: (employee, run) once. A bulk insert, then one read of the ids by key: cheaper
    # than RETURNING, whose multi-row VALUES the driver must parse page by page.
    bulk_insert(session, Outbox.__table__, rows)  # type: ignore[arg-type]
    keys = [r["dedupe_key"] for r in rows]
    return list(session.scalars(select(Outbox.id).where(any_of(session, Outbox.dedupe_key, keys))))


def _order(r: Any) -> tuple[int, datetime, int]:
    return (0 if r.state == "overdue" else 1, r.due_at, r.id)


def _customer_names(session: Session, ids: set[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    ordered = sorted(ids)
    for start in range(0, len(ordered), 2000):
        out.update(dict(session.execute(select(Customer.id, Customer.name).where(
            any_of(session, Customer.id, ordered[start:start + 2000]))).all()))
    return out


TOUCHPOINT_LABEL = {"chat": "私聊", "mass_send": "群发确认", "group": "群聊", "moments": "朋友圈"}


def digest_textcard(payload: dict[str, Any], public_url: str, tz: Any) -> dict[str, str]:
    """The employee-facing card (Chinese): count, the first items, a link to the sidebar task list."""
    lines = []
    for n, item in enumerate(payload["items"], 1):
        due = datetime.fromisoformat(item["due_at"]).astimezone(tz)
        who = item["customer"] or "客户"
        label = TOUCHPOINT_LABEL.get(item["touchpoint"], item["touchpoint"])
        late = "（已逾期）" if item["state"] == "overdue" else ""
        lines.append(f'<div class="normal">{n}. {who} · {item["step"]} · {label} · {due:%m-%d %H:%M}{late}</div>')
    more = payload["count"] - len(payload["items"])
    if more > 0:
        lines.append(f'<div class="gray">还有 {more} 项</div>')
    if payload["kind"] == "escalate":
        title = f"团队逾期提醒：{payload['count']} 个 SOP 任务未完成"
        head = '<div class="highlight">以下任务已多次提醒仍未完成，请跟进</div>'
    else:
        title = f"SOP 任务提醒：{payload['count']} 个待办"
        head = (f'<div class="highlight">其中 {payload["overdue"]} 个已逾期</div>' if payload["overdue"]
                else '<div class="highlight">今天的跟进任务到了</div>')
    return {"title": title[:128], "description": (head + "".join(lines))[:512],
            "url": f"{public_url}/sidebar/tasks", "btntxt": "查看任务"}


@executor("send_digest")
def send_digest(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    """发送应用消息: one textcard per employee per run (the outbox row is unique per (employee, run))."""
    card = digest_textcard(payload, services.settings.public_url, services.settings.tz)
    try:
        services.wecom.send_app_message([payload["userid"]], textcard=card)
    except WeComError as exc:
        from jobs.executors import _policy

        REMINDERS.labels(kind=payload["kind"], outcome="error").inc()
        raise _policy(exc) from exc
    REMINDERS.labels(kind=payload["kind"], outcome="sent").inc()
    return Outcome(result={"userid": payload["userid"], "count": payload["count"]})


# ---------------------------------------------------------------------------------------- mass sends


@executor("sop_mass_send")
def sop_mass_send(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    """创建企业群发 for one task: sender = the executor, the one customer, the rendered script."""
    from jobs.executors import _call, attachments_for

    settings = services.settings
    with services.transaction() as session:
        task = session.get(SopTask, payload["task_id"])
        if task is None or task.state not in TASK_OPEN_STATES or task.msgid:
            return Outcome(result={"skipped": "task closed or already sent"})
        rendered = render_task(session, task, secret=settings.secret_key, public_url=settings.public_url,
                               company=settings.extra.get("SOPBOT_COMPANY_NAME", ""), now=utcnow(), tz=settings.tz)
        sender, ext, task_id = task.owner_userid, task.external_userid, task.id
    text = "\n".join(p.text for p in rendered.parts if p.type == "text" and p.text)
    attachments = attachments_for(services, [p for p in rendered.parts if p.type != "text"])
    template: dict[str, Any] = {"chat_type": "single", "external_userid": [ext], "sender": sender,
                                "text": {"content": text}, "attachments": attachments}
    answer = _call(services.wecom.add_msg_template, template)
    if ext in (answer.get("fail_list") or []) or not answer.get("msgid"):
        return Outcome([CloseSopTask(task_id, "skipped", reason="群发创建失败：客户不可达（不是好友）", by="wecom")],
                       {"fail_list": answer.get("fail_list")})
    return Outcome([MassSendCreated(task_id, str(answer["msgid"]))], {"msgid": answer["msgid"]})


MASS_RESULT_REASON = {2: "群发未送达：客户已不是好友", 3: "群发未送达：客户已收到本月上限的群发"}


@executor("sop_mass_result")
def sop_mass_result(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    """获取企业群发成员执行结果: status 1 sent -> done; 2/3 -> skipped with the reason; 0 -> ask again later."""
    from jobs.executors import _call

    with services.transaction() as session:
        task = session.get(SopTask, payload["task_id"])
        if task is None or task.state not in TASK_OPEN_STATES or not task.msgid:
            return Outcome(result={"skipped": "task closed"})
        msgid, sender, ext, task_id = task.msgid, task.owner_userid or "", task.external_userid, task.id
    results = _call(services.wecom.get_groupmsg_send_result, msgid, sender)
    mine = next((r for r in results if r.get("external_userid") == ext), None)
    if mine is None:
        raise GiveUp(f"no send result for {ext} in {msgid}")
    status = int(mine.get("status") or 0)
    if status == 1:
        return Outcome([CloseSopTask(task_id, "done", reason="群发已发送", by=sender)], {"status": 1})
    if status in MASS_RESULT_REASON:
        return Outcome([CloseSopTask(task_id, "skipped", reason=MASS_RESULT_REASON[status], by="wecom")],
                       {"status": status})
    return Outcome(result={"status": status})  # not confirmed yet: the next poll asks again


def _poll_mass_sends(services: Services, report: TickReport, now: datetime, config: SopTickConfig) -> None:
    slot = int(now.timestamp() // config.mass_poll_every.total_seconds())
    with services.transaction() as session:
        ids = list(session.scalars(select(SopTask.id).where(
            SopTask.touchpoint == "mass_send", SopTask.state.in_(("due", "overdue")), SopTask.msgid.is_not(None))
            .limit(config.batch)))
        for task_id in ids:
            if insert_ignore(session, Outbox.__table__, {  # type: ignore[arg-type]
                    "kind": "sop_mass_result", "queue": MASS_QUEUE, "payload": {"task_id": task_id},
                    "status": "pending", "attempts": 0, "created_at": now,
                    "dedupe_key": f"sop_mass_result:{task_id}:{slot}"}, ["dedupe_key"]):
                report.outbox_ids += list(session.scalars(select(Outbox.id).where(
                    Outbox.dedupe_key == f"sop_mass_result:{task_id}:{slot}")))

