"""The dashboard's numbers, one function per report, shared by /dashboard, /api/v1/reports and bench/reports.py.

Each report is a few aggregate queries over indexed ranges (see docs/PERFORMANCE.md "Reports"), returns a
`Report` (columns with Chinese labels, rows, a summary) and never loads per-customer rows into Python:

- funnel: the cohort of customers added in the period, by the highest stage each has reached (the
  `lead_states.reached_rank` rollup), with conversion between consecutive stages; plus how many entered
  each stage during the period (`lead_stage_changes`).
- channels: customers added per channel (follow relations by `state`, named by channels.yaml).
- sop_execution: per employee, SOP tasks due in the period: done on time (within the SOP overdue window,
  SOPBOT_SOP_OVERDUE_HOURS, default 24 h, after due), done late, overdue (open past that window),
  still open, skipped.
- sop_steps: per SOP step and A/B variant, steps done in the period; reply = a customer message within 48 h
  after the step was done; inquiry = an intent keyword (a keyword rule that scored positive points in the
  lead-score ledger: 询价, 演示, 合同 …) within 48 h. Read from the `sop_step_outcomes` rollup, which the apply
  pipeline keeps exact as steps, messages and ledger rows are written (bot/scoring/outcomes.py).
- keyword_hits: keyword rule hits in the period (tagging_rule_hits): hits, applied, customers.
- first_touch: SQL assignments made in the period against the accept SLA: accepted in time, late, missed,
  time-to-first-touch (median / p90 minutes) per salesperson.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, func, literal, literal_column, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from bot.db import UTCDateTime
from bot.models import Customer, FollowRelation
from bot.scoring.models import LeadAssignment, LeadState, SopStepOutcome, StageChangeRow
from bot.sop.models import TASK_OPEN_STATES, SopTask
from bot.tagging.models import RuleHit

__all__ = ["REPORTS", "Period", "Report", "build", "parse_period"]

SHANGHAI = ZoneInfo("Asia/Shanghai")
SUMMARY_CN = {"cohort": "本期新增", "lost": "输单", "won_pct": "赢单率 %", "total": "合计", "due": "到期",
              "done_on_time": "按时完成", "done_late": "逾期完成", "overdue": "已逾期", "open": "待完成",
              "skipped": "跳过", "on_time_pct": "按时完成率 %", "done": "完成步骤", "hits": "命中",
              "assigned": "分配 SQL", "sla_minutes": "接受时限（工作分钟）", "median_minutes": "中位数（分钟）",
              "p90_minutes": "P90（分钟）", "in_sla_pct": "时限内跟进率 %"}
FUNNEL = (("new", "新线索"), ("engaged", "互动中"), ("mql", "MQL"), ("sql", "SQL"), ("won", "赢单"))


@dataclass(frozen=True)
class Period:
    start: datetime  # inclusive, aware UTC
    end: datetime  # exclusive
    now: datetime

    @property
    def label(self) -> str:
        last = (self.end - timedelta(microseconds=1)).astimezone(SHANGHAI)
        return f"{self.start.astimezone(SHANGHAI):%Y-%m-%d} 至 {last:%Y-%m-%d}"


@dataclass
class Report:
    name: str
    title: str
    columns: list[tuple[str, str]]  # (key, Chinese label)
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def as_json(self, period: Period) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "from": period.start.isoformat(),
                "to": period.end.isoformat(), "columns": [{"key": k, "label": v} for k, v in self.columns],
                "rows": self.rows, "summary": self.summary, "note": self.note}


def parse_period(raw_from: str | None, raw_to: str | None, now: datetime, tz: ZoneInfo = SHANGHAI,
                 default_days: int = 30) -> Period:
    """`from`/`to` as dates (YYYY-MM-DD, local; `to` inclusive) or ISO datetimes; default: the last 30 days."""

    def parse(raw: str, end: bool) -> datetime:
        raw = raw.strip()
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            value = datetime.fromisoformat(raw)
            return (value if value.tzinfo else value.replace(tzinfo=tz)).astimezone(ZoneInfo("UTC"))
        local = datetime.combine(day + timedelta(days=1) if end else day, time(0), tzinfo=tz)
        return local.astimezone(ZoneInfo("UTC"))

    end = parse(raw_to, True) if raw_to else now
    start = parse(raw_from, False) if raw_from else end - timedelta(days=default_days)
    if start >= end:
        raise ValueError("from must be before to")
    if end - start > timedelta(days=366):
        raise ValueError("a report period is at most 366 days")
    return Period(start, end, now)


def _plus(session: Session, column: Any, delta: timedelta) -> ColumnElement[Any]:
    """column + delta as a comparable SQL value on both backends."""
    seconds = int(delta.total_seconds())
    if session.get_bind().dialect.name == "postgresql":
        return column + literal_column(f"interval '{seconds} seconds'")
    return func.julianday(column) + seconds / 86400.0


def _cmp_value(session: Session, column: Any) -> Any:
    return column if session.get_bind().dialect.name == "postgresql" else func.julianday(column)


def _pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


# ------------------------------------------------------------------------------------------ reports


def funnel(session: Session, period: Period) -> Report:
    rank = func.coalesce(LeadState.reached_rank, 0)
    counts = dict((k, v) for k, v in session.execute(
        select(rank, func.count()).select_from(Customer)
        .outerjoin(LeadState, LeadState.customer_id == Customer.id)
        .where(Customer.created_at >= period.start, Customer.created_at < period.end)
        .group_by(rank)).all())
    lost = session.scalar(select(func.count()).select_from(Customer).where(
        Customer.created_at >= period.start, Customer.created_at < period.end, Customer.stage == "lost")) or 0
    entered = dict((k, v) for k, v in session.execute(
        select(StageChangeRow.to_stage, func.count(func.distinct(StageChangeRow.customer_id)))
        .where(StageChangeRow.at >= period.start, StageChangeRow.at < period.end,
               StageChangeRow.demotion.is_(False))
        .group_by(StageChangeRow.to_stage)).all())
    rows: list[dict[str, Any]] = []
    previous: int | None = None
    for i, (stage, label) in enumerate(FUNNEL):
        reached = sum(int(n) for r, n in counts.items() if int(r) >= i)
        rows.append({"stage": stage, "label": label, "reached": reached,
                     "conversion_pct": _pct(reached, previous) if previous is not None else None,
                     "entered_in_period": int(entered.get(stage, 0)) if stage != "new" else reached})
        previous = reached
    cohort = rows[0]["reached"]
    return Report("funnel", "阶段漏斗（本期新增客户）",
                  [("label", "阶段"), ("reached", "到达人数"), ("conversion_pct", "较上一阶段转化率 %"),
                   ("entered_in_period", "本期进入人数")], rows,
                  {"cohort": cohort, "lost": int(lost), "won_pct": _pct(rows[-1]["reached"], cohort)},
                  "按客户曾到达的最高阶段统计；输单单列。")


def channels(session: Session, period: Period, names: Mapping[str, str] | None = None) -> Report:
    names = names if names is not None else channel_names()
    result = session.execute(
        select(FollowRelation.state, func.count(func.distinct(FollowRelation.customer_id)))
        .where(FollowRelation.added_at >= period.start, FollowRelation.added_at < period.end)
        .group_by(FollowRelation.state)).all()
    rows: list[dict[str, Any]] = [
        {"state": state or "", "channel": names.get(state or "", state or "无渠道（直接添加）"), "customers": int(n)}
        for state, n in result]
    rows.sort(key=lambda r: (-r["customers"], r["state"]))
    return Report("channels", "各渠道新增客户", [("channel", "渠道"), ("state", "state"), ("customers", "新增客户数")],
                  rows, {"total": sum(r["customers"] for r in rows)})


def _overdue_after() -> timedelta:
    return timedelta(hours=float(os.environ.get("SOPBOT_SOP_OVERDUE_HOURS") or 24))


def sop_execution(session: Session, period: Period) -> Report:
    grace = _overdue_after()
    end = min(period.end, period.now)
    on_time_limit = _plus(session, SopTask.due_at, grace)
    completed = _cmp_value(session, SopTask.completed_at)
    now_value = _cmp_value(session, literal(period.now, UTCDateTime()))
    is_open = SopTask.state.in_(TASK_OPEN_STATES)
    stmt = (select(
        SopTask.owner_userid,
        func.count(),
        func.sum(case((and_(SopTask.state == "done", completed <= on_time_limit), 1), else_=0)),
        func.sum(case((and_(SopTask.state == "done", completed > on_time_limit), 1), else_=0)),
        func.sum(case((and_(is_open, on_time_limit < now_value), 1), else_=0)),
        func.sum(case((and_(is_open, on_time_limit >= now_value), 1), else_=0)),
        func.sum(case((SopTask.state == "skipped", 1), else_=0)))
        .where(SopTask.due_at >= period.start, SopTask.due_at < end)
        .group_by(SopTask.owner_userid))
    result = session.execute(stmt).all()
    rows: list[dict[str, Any]] = []
    for owner, due, on_time, late, overdue, open_, skipped in result:
        rows.append({"userid": owner or "（无执行人）", "due": int(due), "done_on_time": int(on_time or 0),
                     "done_late": int(late or 0), "overdue": int(overdue or 0), "open": int(open_ or 0),
                     "skipped": int(skipped or 0), "on_time_pct": _pct(int(on_time or 0), int(due))})
    rows.sort(key=lambda r: (-r["due"], r["userid"]))
    totals = {k: sum(r[k] for r in rows) for k in ("due", "done_on_time", "done_late", "overdue", "open", "skipped")}
    return Report("sop_execution", "员工 SOP 执行情况",
                  [("userid", "员工"), ("due", "到期任务"), ("done_on_time", "按时完成"), ("done_late", "逾期完成"),
                   ("overdue", "已逾期未完成"), ("open", "待完成（未逾期）"), ("skipped", "已跳过"),
                   ("on_time_pct", "按时完成率 %")], rows,
                  {**totals, "on_time_pct": _pct(totals["done_on_time"], totals["due"])},
                  f"按时 = 到期后 {grace / timedelta(hours=1):g} 小时内完成（SOP 逾期窗口）。")


def sop_steps(session: Session, period: Period) -> Report:
    # One range scan of the rollup kept by bot/scoring/outcomes.py (first reply / inquiry within 48 h per step).
    result = session.execute(
        select(SopStepOutcome.sop_id, SopStepOutcome.step_id, SopStepOutcome.variant_id, func.count(),
               func.count(SopStepOutcome.replied_at), func.count(SopStepOutcome.inquired_at))
        .where(SopStepOutcome.done_at >= period.start, SopStepOutcome.done_at < period.end)
        .group_by(SopStepOutcome.sop_id, SopStepOutcome.step_id, SopStepOutcome.variant_id)).all()
    rows = []
    for sop_id, step_id, variant, done, n_replied, n_inquired in result:
        rows.append({"sop": sop_id, "step": step_id, "variant": variant or "", "done": int(done),
                     "replied": int(n_replied or 0), "reply_pct": _pct(int(n_replied or 0), int(done)),
                     "inquired": int(n_inquired or 0), "inquiry_pct": _pct(int(n_inquired or 0), int(done))})
    rows.sort(key=lambda r: (r["sop"], r["step"], r["variant"]))
    return Report("sop_steps", "SOP 步骤与 A/B 版本效果（完成后 48 小时内）",
                  [("sop", "SOP"), ("step", "步骤"), ("variant", "版本"), ("done", "完成数"), ("replied", "回复数"),
                   ("reply_pct", "回复率 %"), ("inquired", "询价/咨询数"), ("inquiry_pct", "咨询率 %")], rows,
                  {"done": sum(r["done"] for r in rows)},
                  "回复 = 步骤完成后 48 小时内客户发来消息；"
                  "咨询 = 48 小时内命中加分的意向关键词（询价、演示、合同等）。")


def keyword_hits(session: Session, period: Period) -> Report:
    result = session.execute(
        select(RuleHit.rule_id, func.count(), func.sum(case((RuleHit.applied.is_(True), 1), else_=0)),
               func.count(func.distinct(RuleHit.customer_id)))
        .where(RuleHit.rule_kind == "keyword", RuleHit.at >= period.start, RuleHit.at < period.end)
        .group_by(RuleHit.rule_id)).all()
    rows = [{"rule_id": rule_id, "hits": int(hits), "applied": int(applied or 0), "customers": int(customers)}
            for rule_id, hits, applied, customers in result]
    rows.sort(key=lambda r: (-r["hits"], r["rule_id"]))
    return Report("keyword_hits", "关键词规则命中次数",
                  [("rule_id", "规则"), ("hits", "命中次数"), ("applied", "已打标签"), ("customers", "客户数")], rows,
                  {"hits": sum(r["hits"] for r in rows)}, "命中未打标签 = 未达阈值或冷却中。")


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 1)


def first_touch(session: Session, period: Period) -> Report:
    from bot.scoring.service import config

    result = session.execute(
        select(LeadAssignment.userid, LeadAssignment.status, LeadAssignment.assigned_at, LeadAssignment.accept_by,
               LeadAssignment.accepted_at, LeadAssignment.first_touch_at)
        .where(LeadAssignment.assigned_at >= period.start, LeadAssignment.assigned_at < period.end)).all()
    per: dict[str, dict[str, Any]] = {}
    all_minutes: list[float] = []
    for userid, status, assigned_at, accept_by, accepted_at, touched_at in result:
        row = per.setdefault(userid, {"userid": userid, "assigned": 0, "accepted_in_sla": 0, "accepted_late": 0,
                                      "missed_open": 0, "pending": 0, "touched_in_sla": 0, "minutes": []})
        row["assigned"] += 1
        if accepted_at is not None:
            row["accepted_in_sla" if accepted_at <= accept_by else "accepted_late"] += 1
        elif status == "pending":
            row["missed_open" if period.now > accept_by else "pending"] += 1
        if touched_at is not None:
            minutes = (touched_at - assigned_at).total_seconds() / 60
            row["minutes"].append(minutes)
            all_minutes.append(minutes)
            if touched_at <= accept_by:
                row["touched_in_sla"] += 1
    rows = []
    for row in sorted(per.values(), key=lambda r: (-r["assigned"], r["userid"])):
        minutes = row.pop("minutes")
        rows.append({**row, "median_minutes": _quantile(minutes, 0.5), "p90_minutes": _quantile(minutes, 0.9),
                     "in_sla_pct": _pct(row["touched_in_sla"], row["assigned"])})
    assigned = sum(r["assigned"] for r in rows)
    return Report("first_touch", "SQL 首次跟进时长（对比接受时限）",
                  [("userid", "销售"), ("assigned", "分配 SQL"), ("accepted_in_sla", "时限内接受"),
                   ("accepted_late", "超时接受"), ("missed_open", "超时未接受"), ("pending", "待接受"),
                   ("touched_in_sla", "时限内首次跟进"), ("in_sla_pct", "时限内跟进率 %"),
                   ("median_minutes", "首次跟进中位数（分钟）"), ("p90_minutes", "P90（分钟）")], rows,
                  {"assigned": assigned, "sla_minutes": config().sla_minutes,
                   "median_minutes": _quantile(all_minutes, 0.5), "p90_minutes": _quantile(all_minutes, 0.9),
                   "in_sla_pct": _pct(sum(r["touched_in_sla"] for r in rows), assigned)},
                  f"接受时限 = 分配后 {config().sla_minutes} 个工作分钟（工作日 09:00-18:00）；"
                  "首次跟进 = 接受或员工首条消息。")


def channel_names() -> dict[str, str]:
    from scripts_library import channel_snapshots

    try:
        return {state: snap.name for state, snap in channel_snapshots().items()}
    except Exception:  # noqa: BLE001 - a broken channels file must not take the dashboard down
        return {}


ReportFn = Callable[[Session, Period], Report]
REPORTS: dict[str, ReportFn] = {
    "funnel": funnel, "channels": channels, "sop_execution": sop_execution, "sop_steps": sop_steps,
    "keyword_hits": keyword_hits, "first_touch": first_touch,
}


def build(session: Session, name: str, period: Period) -> Report:
    if name not in REPORTS:
        raise KeyError(name)
    return REPORTS[name](session, period)
