"""/dashboard: the ops lead's and sales managers' page (Chinese, server-rendered SVG, CSV per chart).

Login (bot/dashboard/auth.py): 「企业微信登录」 — WeCom OAuth for the userids in SOPBOT_DASHBOARD_ADMINS — or the
admin token once, as `?token=` (then the same signed, HttpOnly session cookie scoped to /dashboard and a redirect
that drops the token from the address bar), or `Authorization: Bearer <token>` per request for scripts.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, render_template, request
from flask.typing import ResponseReturnValue

from bot import get_services
from bot.dashboard import auth, reports, svg
from bot.db import utcnow

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates")

COOKIE = auth.COOKIE
SESSION_MAX_AGE = auth.SESSION_MAX_AGE
PUBLIC_ENDPOINTS = ("dashboard.oauth_start", "dashboard.oauth_callback")


@bp.before_request
def _require_admin() -> ResponseReturnValue | None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    services = get_services()
    scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and auth.token_ok(services, bearer):
        return None
    token = request.args.get("token")
    if token is not None:
        if not auth.token_ok(services, token):
            return _login_page("令牌错误，请重试。"), 401
        args = {k: v for k, v in request.args.items() if k != "token"}
        return auth.session_response(services, request.path + (f"?{urlencode(args)}" if args else ""), "token")
    if auth.current_session(services) is not None:
        return None
    return _login_page(""), 401


def _login_page(message: str) -> str:
    services = get_services()
    next_path = request.full_path.rstrip("?") if request.endpoint not in PUBLIC_ENDPOINTS else "/dashboard"
    return render_template("dashboard_login.html", message=message, wecom_enabled=auth.wecom_login_enabled(services),
                           wecom_href="/dashboard/oauth/start?" + urlencode({"next": auth.safe_next(next_path)}))


@bp.get("/oauth/start")
def oauth_start() -> ResponseReturnValue:
    services = get_services()
    if not auth.wecom_login_enabled(services):
        return _login_page("企业微信登录未配置：请在 SOPBOT_DASHBOARD_ADMINS 中填写看板管理员的企业微信账号（userid），"
                           "或先用管理员令牌登录。"), 404
    return auth.start_login(services, request.args.get("next"))


@bp.get("/oauth/callback")
def oauth_callback() -> ResponseReturnValue:
    services = get_services()
    try:
        return auth.finish_login(services, request.args.get("code"), request.args.get("state"))
    except auth.LoginError as exc:
        title = "无权访问" if exc.status == 403 else "无法登录"
        return render_template("dashboard_denied.html", title=title, message=exc.message), exc.status


def _now() -> datetime:
    raw = request.args.get("now")
    if raw:
        value = datetime.fromisoformat(raw.replace(" ", "+"))  # an unescaped + arrives as a space
        if value.tzinfo is not None:
            return value
    return utcnow()


def _period() -> reports.Period:
    return reports.parse_period(request.args.get("from"), request.args.get("to"), _now())


def _chart(report: reports.Report) -> str:
    rows = report.rows
    if report.name == "funnel":
        return svg.hbars(report.title, [(r["label"], r["reached"], f"转化 {r['conversion_pct']}%"
                                         if r["conversion_pct"] is not None else "") for r in rows])
    if report.name == "channels":
        return svg.hbars(report.title, [(r["channel"], r["customers"], "") for r in rows], color=svg.COLORS[1])
    if report.name == "sop_execution":
        return svg.stacked_bars(report.title, ["按时完成", "逾期完成", "已逾期未完成", "待完成", "已跳过"],
                                [(r["userid"], [r["done_on_time"], r["done_late"], r["overdue"], r["open"],
                                                r["skipped"]]) for r in rows])
    if report.name == "sop_steps":
        return svg.grouped_bars(report.title, ["回复率", "咨询率"],
                                [(r["step"] + (f" [{r['variant']}]" if r["variant"] else ""),
                                  [r["reply_pct"] or 0.0, r["inquiry_pct"] or 0.0], f"{r['sop']} · n={r['done']}")
                                 for r in rows])
    if report.name == "keyword_hits":
        return svg.hbars(report.title, [(r["rule_id"], r["hits"], f"已打标签 {r['applied']}") for r in rows],
                         color=svg.COLORS[2])
    if report.name == "first_touch":
        sla = report.summary.get("sla_minutes")
        return svg.hbars(report.title, [(r["userid"], r["median_minutes"] or 0.0,
                                         f"分钟（中位数），时限内 {r['in_sla_pct']}%") for r in rows],
                         color=svg.COLORS[4], marker=(float(sla), f"时限 {sla} 分钟") if sla else None)
    return ""


@bp.get("")
@bp.get("/")
def index() -> ResponseReturnValue:
    try:
        period = _period()
    except ValueError as exc:
        return _login_page(f"时间范围有误：{exc}"), 400
    services = get_services()
    sections: list[dict[str, Any]] = []
    with services.transaction() as session:
        for name in reports.REPORTS:
            report = reports.build(session, name, period)
            sections.append({"report": report, "chart": _chart(report),
                             "csv": f"/dashboard/{name}.csv?" + urlencode(_period_args(period))})
    tz = reports.SHANGHAI
    return render_template(
        "dashboard.html", sections=sections, period=period, labels=reports.SUMMARY_CN,
        from_value=period.start.astimezone(tz).strftime("%Y-%m-%d"),
        to_value=(period.end - timedelta(microseconds=1)).astimezone(tz).strftime("%Y-%m-%d"),
        generated=period.now.astimezone(tz).strftime("%Y-%m-%d %H:%M"))


def _period_args(period: reports.Period) -> dict[str, str]:
    return {"from": period.start.isoformat(), "to": period.end.isoformat()}


@bp.get("/<name>.csv")
def report_csv(name: str) -> ResponseReturnValue:
    if name not in reports.REPORTS:
        return Response("没有这个报表", status=404, mimetype="text/plain")
    try:
        period = _period()
    except ValueError as exc:
        return Response(f"时间范围有误：{exc}", status=400, mimetype="text/plain")
    with get_services().transaction() as session:
        report = reports.build(session, name, period)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([label for _, label in report.columns])
    for row in report.rows:
        writer.writerow(["" if row.get(key) is None else row.get(key) for key, _ in report.columns])
    # BOM: Excel opens UTF-8 CSV with Chinese headers correctly only with it.
    body = "\ufeff" + out.getvalue()
    filename = f"{name}_{period.start.astimezone(reports.SHANGHAI):%Y%m%d}.csv"
    return Response(body, mimetype="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
