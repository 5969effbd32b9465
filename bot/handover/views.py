"""The handover brief page: /sidebar/handover/<id>?token=… (server-rendered, Chinese, mobile-friendly).

The new owner opens it from the textcard app message. Until the sidebar's OAuth session exists the
page is protected by the link itself: an itsdangerous signature over (handover id, new owner) made
with SOPBOT_SECRET_KEY, expiring after BRIEF_MAX_AGE.
"""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, abort, render_template, request
from flask.typing import ResponseReturnValue

from bot import get_services
from bot.handover.service import brief_rows, read_brief_token

bp = Blueprint("handover_views", __name__, url_prefix="/sidebar/handover", template_folder="templates")

STATUS_TEXT = {
    "done": "已接手", "waiting": "等待客户确认", "started": "已发起", "calling": "发起中", "pending": "待发起",
    "refused": "客户拒绝", "taker_limit": "客户数已达上限", "no_record": "无接替记录", "failed": "转接失败",
    "refused_local": "未发起", "unknown": "结果未知",
}
KIND_TEXT = {
    "handover_started": "发起转接", "handover_done": "完成转接", "handover_refused": "转接被拒", "handover_failed":
    "转接失败", "tag_added": "打标签", "tag_removed": "移除标签", "customer_added": "添加客户", "welcome_sent":
    "发送欢迎语", "message_keyword": "消息关键词", "transfer_failed": "接替失败", "transferred_away": "转出",
}


@bp.get("/<int:handover_id>")
def brief(handover_id: int) -> ResponseReturnValue:
    from bot.handover.models import Handover
    from bot.models import Employee

    services = get_services()
    userid = read_brief_token(services.settings.secret_key, request.args.get("token", ""), handover_id)
    if userid is None:
        abort(403, "链接无效或已过期")
    with services.transaction() as session:
        h = session.get(Handover, handover_id)
        if h is None or userid != h.to_userid:
            abort(404)
        giver = session.get(Employee, h.from_userid)
        taker = session.get(Employee, h.to_userid)
        rows = brief_rows(session, handover_id)
        context = {
            "handover": h, "rows": rows, "giver": (giver.name if giver else "") or h.from_userid,
            "taker": (taker.name if taker else "") or h.to_userid,
            "done": sum(1 for r in rows if r["status"] == "done"),
        }
    tz = services.settings.tz

    def local(value: datetime | None) -> str:
        return value.astimezone(tz).strftime("%Y-%m-%d %H:%M") if value else ""

    return render_template("handover/brief.html", status_text=STATUS_TEXT, kind_text=KIND_TEXT, local=local,
                           **context)
