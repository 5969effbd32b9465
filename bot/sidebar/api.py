"""Sidebar JSON API under /sidebar/api/ (session cookie; CSRF header on every state-changing call).

Authorization is checked on every customer-scoped call, from the session's userid and the database —
never from anything the page sends: the employee must follow the customer (active FollowRelation)
or be in SOPBOT_ADMIN_USERIDS. Anyone else gets 403 with a Chinese message and the attempt is logged.
For non-admins an unknown customer answers the same 403 as someone else's, so ids cannot be probed.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, g, jsonify, request
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from bot import get_services
from bot.actions import Action, AddTags, RemoveTags, TagRef
from bot.apply import apply
from bot.db import utcnow
from bot.models import (
    CorpTag,
    Customer,
    CustomerTag,
    Employee,
    FollowRelation,
    GroupChat,
    GroupMember,
    Outbox,
    TimelineEntry,
)
from bot.queues import enqueue_outbox
from bot.services import Services
from bot.sidebar import messages, tasks
from bot.sidebar.auth import SidebarSession, csrf_ok, current_session
from bot.wecom.client import WeComError
from bot.wecom.jssdk import TicketStore

log = logging.getLogger("sopbot.sidebar")

sidebar_api_bp = Blueprint("sidebar_api", __name__, url_prefix="/sidebar/api")

# What the page asks WeCom for (PROTOCOL.md §3.11): customer-contact APIs need the agent identity.
JS_API_LIST = ["getContext", "getCurExternalContact", "getCurExternalChat", "sendChatMessage"]
DENIED = "您不是该客户的跟进人，无权查看或操作该客户的资料。如需查看，请联系管理员。"
DENIED_GROUP = "您不在该客户群中，无权查看该群的资料。"
MAX_TIMELINE = 50
MAX_NOTE = 200

STAGE_LABELS = {"new": "新客户", "engaged": "互动中", "mql": "MQL 市场认可", "sql": "SQL 销售认可",
                "won": "已成交", "lost": "已流失"}
SOURCE_LABELS = {"channel": "渠道", "keyword_rule": "关键词规则", "behaviour_rule": "行为规则",
                 "manual": "手动", "wecom": "企业微信", "sop": "SOP", "scoring": "评分"}
ADD_WAY_LABELS = {0: "未知来源", 1: "扫描二维码", 2: "搜索手机号", 3: "名片分享", 4: "群聊", 5: "手机通讯录",
                  6: "微信联系人", 8: "第三方应用", 9: "搜索邮箱", 10: "视频号", 11: "日程参与人",
                  12: "会议参与人", 13: "微信好友分享", 14: "智能推荐", 201: "内部成员共享", 202: "管理员/负责人分配"}
DELETED_BY_LABELS = {"employee": "员工删除了客户", "customer": "客户删除了员工", "transfer": "已转接给其他员工"}
TIMELINE_LABELS = {
    "customer_added": "添加为好友", "customer_deleted_employee": "客户删除了员工",
    "employee_deleted_customer": "员工删除了客户", "customer_edited": "资料更新", "tag_added": "打上标签",
    "tag_removed": "移除标签", "welcome_sent": "发送欢迎语", "welcome_skipped": "未发送欢迎语",
    "keyword_hit": "消息命中关键词", "link_opened": "打开链接", "sop_step_done": "SOP 步骤已完成",
    "sop_step_skipped": "SOP 步骤已跳过", "transferred_away": "已转接", "transfer_failed": "转接失败",
    "stage_changed": "阶段变化", "joined_group": "入群", "left_group": "退群",
}


class SidebarError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@sidebar_api_bp.errorhandler(SidebarError)
def _sidebar_error(exc: SidebarError) -> ResponseReturnValue:
    return jsonify(error=exc.message), exc.status


@sidebar_api_bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> ResponseReturnValue:
    return jsonify(error=exc.description or exc.name), exc.code or 500


@sidebar_api_bp.before_request
def _require_session() -> ResponseReturnValue | None:
    services = get_services()
    session = current_session(services)
    if session is None:
        return jsonify(error="登录已过期，请关闭侧边栏后重新打开。", login=True), 401
    # Every state change carries the per-session token in a header: a cross-site form cannot set one.
    if request.method not in ("GET", "HEAD", "OPTIONS") and not csrf_ok(session):
        log.warning("sidebar: state-changing call without a valid CSRF token",
                    extra={"userid": session.userid, "path": request.path})
        return jsonify(error="请求校验失败，请刷新页面后重试。"), 403
    g.sidebar_session = session
    return None


@sidebar_api_bp.after_request
def _no_store(resp: Response) -> Response:
    # Customer data must not sit in a shared cache or the webview's back-forward cache.
    resp.headers["Cache-Control"] = "no-store"
    security_headers(resp)
    return resp


def security_headers(resp: Response, script_origin: str = "") -> None:
    """No external origin anywhere (corp networks often cannot reach a CDN); only the JS-SDK file may be one."""
    script_src = "'self'" + (f" {script_origin}" if script_origin else "")
    resp.headers.setdefault(
        "Content-Security-Policy",
        f"default-src 'none'; script-src {script_src}; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    )
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")


def json_object() -> dict[str, Any]:
    """The request's JSON object ({} for an empty body), else 400: a list, a string or bytes is no request."""
    if not request.get_data(cache=True):
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise SidebarError(400, "请求内容应为 JSON 对象。")
    return body


def me() -> SidebarSession:
    session: SidebarSession = g.sidebar_session
    return session


def is_admin(services: Services, userid: str) -> bool:
    return userid in services.settings.admin_userids


def local_time(services: Services, value: datetime | None) -> str:
    return value.astimezone(services.settings.tz).strftime("%Y-%m-%d %H:%M") if value else ""


def follows_customer(session: Session, customer_id: int, userid: str) -> bool:
    return session.scalar(select(FollowRelation.id).where(
        FollowRelation.customer_id == customer_id, FollowRelation.userid == userid,
        FollowRelation.deleted_at.is_(None)).limit(1)) is not None


def authorized_customer(services: Services, session: Session, external_userid: str, userid: str) -> Customer:
    """The customer if this employee may see it, else 403 (logged)."""
    customer = session.scalar(select(Customer).where(Customer.external_userid == external_userid))
    if is_admin(services, userid):
        if customer is None:
            raise SidebarError(404, "该客户的资料尚未同步，请稍后再试。")
        return customer
    if customer is None or not follows_customer(session, customer.id, userid):
        log.warning("sidebar: access denied to a customer the employee does not follow",
                    extra={"userid": userid, "external_userid": external_userid, "path": request.path})
        raise SidebarError(403, DENIED)
    return customer


def enqueue_after_commit(services: Services, queued: list[tuple[int, str]]) -> None:
    if not queued:
        return
    try:
        enqueue_outbox(services.redis, queued)
    except RedisError:
        log.warning("sidebar: outbox enqueue failed; the sweeper will pick the rows up")


# -- identity and JS-SDK ---------------------------------------------------------------------------

@sidebar_api_bp.get("/me")
def whoami() -> ResponseReturnValue:
    services = get_services()
    with services.transaction() as session:
        employee = session.get(Employee, me().userid)
        name = employee.name if employee else ""
    return jsonify(userid=me().userid, name=name or me().userid, is_admin=is_admin(services, me().userid))


def jssdk_params(services: Services, url: str) -> dict[str, Any]:
    """wx.config (corp ticket) and wx.agentConfig (app ticket) for the exact page URL, fragment dropped."""
    page = url.split("#", 1)[0]
    store = TicketStore(services.wecom)
    return {"url": page, "config": store.config_params(page, JS_API_LIST),
            "agentConfig": store.agent_config_params(page, JS_API_LIST)}


@sidebar_api_bp.get("/jssdk")
def jssdk() -> ResponseReturnValue:
    services = get_services()
    url = request.args.get("url", "")
    ours = urlsplit(services.settings.public_url)
    asked = urlsplit(url)
    # Only our own sidebar pages are signed: the tickets are the corp's, not a signing service for others.
    if (asked.scheme, asked.netloc) != (ours.scheme, ours.netloc) or not asked.path.startswith("/sidebar/"):
        raise SidebarError(400, "只能为侧边栏页面签名。")
    try:
        return jsonify(jssdk_params(services, url))
    except WeComError as exc:
        log.warning("sidebar: jsapi ticket unavailable: %s", exc)
        raise SidebarError(502, "暂时无法连接企业微信，请稍后重试。") from exc


# -- customer --------------------------------------------------------------------------------------

def reason_text(source: str, reason: Mapping[str, Any] | None) -> str:
    """A one-line Chinese 'why' for a tag, from the reason JSON each source writes."""
    r = dict(reason or {})
    bits: list[str] = []
    if r.get("by_name") or r.get("by"):
        bits.append(f"{r.get('by_name') or r.get('by')} 手动")
    if r.get("channel"):
        bits.append(f"渠道「{r['channel']}」")
    if r.get("rule"):
        bits.append(f"规则「{r.get('rule_name') or r['rule']}」")
    for key in ("excerpt", "text", "keyword"):
        if r.get(key):
            bits.append(f"“{str(r[key])[:40]}”")
            break
    if r.get("note"):
        bits.append(str(r["note"])[:60])
    if not bits and r:
        bits.append(json.dumps(r, ensure_ascii=False)[:80])
    return "，".join(bits) or SOURCE_LABELS.get(source, source)


def tag_groups(services: Services, session: Session, customer_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(CustomerTag).where(
        CustomerTag.customer_id == customer_id, CustomerTag.removed_at.is_(None))
        .order_by(CustomerTag.group_name, CustomerTag.applied_at)).all()
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in rows:
        groups.setdefault(t.group_name, []).append({
            "name": t.name, "tag": f"{t.group_name}:{t.name}", "source": SOURCE_LABELS.get(t.source, t.source),
            "reason": reason_text(t.source, t.reason), "applied_at": local_time(services, t.applied_at)})
    return [{"group": k, "tags": v} for k, v in groups.items()]


def tag_library(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(select(CorpTag.group_name, CorpTag.name).where(
        CorpTag.is_group.is_(False), CorpTag.deleted.is_(False)).order_by(CorpTag.group_name, CorpTag.order)).all()
    groups: dict[str, list[str]] = {}
    for group, name in rows:
        groups.setdefault(group, []).append(name)
    return [{"group": k, "tags": v} for k, v in groups.items()]


def task_card(services: Services, session: Session, task: tasks.TaskView, customer: Customer | None,
              userid: str) -> dict[str, Any]:
    script = messages.get_script(task.script_id)
    card: dict[str, Any] = {
        "id": task.id, "sop_id": task.sop_id, "step_id": task.step_id, "script_id": task.script_id,
        "touchpoint": task.touchpoint, "state": task.state, "due_at": local_time(services, task.due_at),
        "overdue": task.state == "overdue", "external_userid": task.external_userid,
        "customer_name": task.customer_name, "preview": None, "error": None,
    }
    if script is None:
        card["error"] = f"话术 {task.script_id} 不在话术库中"
        return card
    try:
        rendered = messages.render_for(services, session, script, customer, task.owner_userid or userid)
        card["preview"] = messages.preview(services, rendered, script.category)
    except messages.RenderError as exc:
        card["error"] = str(exc)
    return card


def customer_view(services: Services, session: Session, customer: Customer, userid: str) -> dict[str, Any]:
    names = dict(session.execute(select(Employee.userid, Employee.name)).all())
    follows = session.scalars(select(FollowRelation).where(FollowRelation.customer_id == customer.id)
                              .order_by(FollowRelation.added_at, FollowRelation.id)).all()
    timeline = session.scalars(select(TimelineEntry).where(TimelineEntry.customer_id == customer.id)
                               .order_by(TimelineEntry.at.desc(), TimelineEntry.id.desc()).limit(MAX_TIMELINE)).all()
    admin = is_admin(services, userid)
    open_tasks = tasks.open_tasks_for_customer(
        session, customer.id, None if admin and not follows_customer(session, customer.id, userid) else userid)
    return {
        "customer": {
            "external_userid": customer.external_userid, "name": customer.name or "（未命名客户）",
            "corp_name": customer.corp_name or "", "gender": {1: "男", 2: "女"}.get(customer.gender or 0, ""),
            "stage": customer.stage, "stage_label": STAGE_LABELS.get(customer.stage, customer.stage),
            "score": round(customer.score or 0, 1), "created_at": local_time(services, customer.created_at),
            "lost": customer.lost_at is not None,
        },
        "follows": [{
            "userid": f.userid, "name": names.get(f.userid) or f.userid, "me": f.userid == userid,
            "channel": _channel_name(services, f.state), "added_at": local_time(services, f.added_at),
            "add_way": ADD_WAY_LABELS.get(f.add_way, "") if f.add_way is not None else "",
            "added_by": _added_by(f.oper_userid, customer.external_userid, names),
            "remark": f.remark or "",
            "ended": DELETED_BY_LABELS.get(f.deleted_by or "", "已删除") if f.deleted_at else "",
        } for f in follows],
        "tag_groups": tag_groups(services, session, customer.id),
        "tag_library": tag_library(session),
        "timeline": [{
            "label": TIMELINE_LABELS.get(t.kind, t.kind), "at": local_time(services, t.at),
            "by": (names.get(t.userid) or t.userid) if t.userid else "", "text": _timeline_text(t.detail),
        } for t in timeline],
        "tasks": [task_card(services, session, t, customer, userid) for t in open_tasks],
    }


def _added_by(oper_userid: str | None, external_userid: str, names: Mapping[str, str]) -> str:
    # WeCom names the side that initiated the add: the customer (scanned a code) or a member.
    if not oper_userid:
        return ""
    if oper_userid == external_userid:
        return "客户主动添加"
    return f"{names.get(oper_userid) or oper_userid} 添加"


def _channel_name(services: Services, state: str | None) -> str:
    if not state:
        return ""
    snapshot = services.channels.get(state)
    return snapshot.name if snapshot else state


def _timeline_text(detail: Mapping[str, Any] | None) -> str:
    d = dict(detail or {})
    for key in ("tag", "text", "excerpt", "title", "script_id", "script", "reason"):
        value = d.get(key)
        if isinstance(value, str) and value:
            return value[:80]
    return ""


@sidebar_api_bp.get("/customers/<external_userid>")
def get_customer(external_userid: str) -> ResponseReturnValue:
    services = get_services()
    with services.transaction() as session:
        customer = authorized_customer(services, session, external_userid, me().userid)
        return jsonify(customer_view(services, session, customer, me().userid))


def _parse_tags(values: Any, field: str) -> tuple[TagRef, ...]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values) or len(values) > 100:
        raise SidebarError(400, f"{field} 应为标签列表（分组:标签）。")
    try:
        return tuple(dict.fromkeys(TagRef.parse(v) for v in values))
    except ValueError as exc:
        raise SidebarError(400, f"标签格式应为“分组:标签”：{exc}") from exc


@sidebar_api_bp.post("/customers/<external_userid>/tags")
def edit_tags(external_userid: str) -> ResponseReturnValue:
    """Manual tag edit: the same AddTags/RemoveTags path as the rules (local rows + one mark_tag job)."""
    services = get_services()
    body = json_object()
    add, remove = _parse_tags(body.get("add", []), "add"), _parse_tags(body.get("remove", []), "remove")
    note = str(body.get("note") or "").strip()[:MAX_NOTE]
    if not add and not remove:
        raise SidebarError(400, "没有要修改的标签。")
    userid, now = me().userid, utcnow()
    with services.transaction() as session:
        customer = authorized_customer(services, session, external_userid, userid)
        library = {(g, n) for g, n in session.execute(select(CorpTag.group_name, CorpTag.name).where(
            CorpTag.is_group.is_(False), CorpTag.deleted.is_(False))).all()}
        unknown = [str(t) for t in add if (t.group, t.name) not in library]
        if unknown:
            raise SidebarError(400, f"企业标签库中没有这些标签：{'、'.join(unknown)}")
        employee = session.get(Employee, userid)
        reason = {"by": userid, "by_name": (employee.name if employee else "") or userid, "via": "sidebar",
                  **({"note": note} if note else {})}
        # mark_tag goes to this employee's pair; an admin who does not follow it marks every follower's pair.
        pair = userid if follows_customer(session, customer.id, userid) else None
        actions: list[Action] = []
        if add:
            actions.append(AddTags(external_userid, add, source="manual", reason=reason, at=now, userid=pair))
        if remove:
            actions.append(RemoveTags(external_userid, remove, source="manual", reason=reason, at=now, userid=pair))
        outbox_ids = apply(actions, session, now=now, context_key=f"sidebar:{userid}:{secrets.token_hex(8)}")
        queued = [(i, q) for i, q in session.execute(select(Outbox.id, Outbox.queue).where(Outbox.id.in_(outbox_ids)))]
        groups = tag_groups(services, session, customer.id)
    enqueue_after_commit(services, queued)
    log.info("sidebar tag edit", extra={"userid": userid, "external_userid": external_userid,
                                        "add": [str(t) for t in add], "remove": [str(t) for t in remove]})
    return jsonify(tag_groups=groups)


# -- scripts and sending ---------------------------------------------------------------------------

@sidebar_api_bp.get("/scripts")
def search_scripts() -> ResponseReturnValue:
    """Quick replies: the scripts library searched by every word, rendered for the current customer."""
    services = get_services()
    query = (request.args.get("q") or "").strip()[:100]
    external_userid = request.args.get("customer") or ""
    hits = messages.search(query)
    items = []
    with services.transaction() as session:
        customer = authorized_customer(services, session, external_userid, me().userid) if external_userid else None
        for script in hits:
            try:
                rendered = messages.render_for(services, session, script, customer, me().userid)
                items.append(messages.preview(services, rendered, script.category))
            except messages.RenderError as exc:
                items.append({"script_id": script.id, "title": script.title, "category": script.category,
                              "parts": [], "error": str(exc)})
    return jsonify(items=items)


def _payloads(services: Services, rendered: Any) -> ResponseReturnValue:
    try:
        return jsonify(messages=messages.send_payloads(services, rendered))
    except (WeComError, OSError) as exc:
        log.warning("sidebar: media upload failed: %s", exc)
        raise SidebarError(502, "素材上传到企业微信失败，请稍后重试。") from exc


@sidebar_api_bp.post("/customers/<external_userid>/scripts/<script_id>/messages")
def script_messages(external_userid: str, script_id: str) -> ResponseReturnValue:
    """sendChatMessage arguments for one script, rendered for this customer, media as WeCom media ids."""
    services = get_services()
    script = messages.get_script(script_id)
    if script is None:
        raise SidebarError(404, "话术不存在或已下线。")
    with services.transaction() as session:
        customer = authorized_customer(services, session, external_userid, me().userid)
        try:
            rendered = messages.render_for(services, session, script, customer, me().userid)
        except messages.RenderError as exc:
            raise SidebarError(422, str(exc)) from exc
    return _payloads(services, rendered)  # uploads after the transaction: media_id_for opens its own


MAX_ID = 2**63 - 1  # BIGINT: a larger id names no task (and would overflow the database driver)


def _authorized_task(services: Services, session: Session, task_id: int) -> tuple[tasks.TaskView, Customer]:
    task = tasks.get_task(session, task_id) if 0 < task_id <= MAX_ID else None
    userid = me().userid
    if task is None or (task.owner_userid != userid and not is_admin(services, userid)):
        log.warning("sidebar: access denied to a task", extra={"userid": userid, "task_id": task_id})
        raise SidebarError(403, "这不是您的任务，无权查看或操作。")
    return task, authorized_customer(services, session, task.external_userid, userid)


@sidebar_api_bp.post("/tasks/<int:task_id>/messages")
def task_messages(task_id: int) -> ResponseReturnValue:
    services = get_services()
    with services.transaction() as session:
        task, customer = _authorized_task(services, session, task_id)
        script = messages.get_script(task.script_id)
        if script is None:
            raise SidebarError(404, f"话术 {task.script_id} 不在话术库中。")
        try:
            rendered = messages.render_for(services, session, script, customer, task.owner_userid or me().userid)
        except messages.RenderError as exc:
            raise SidebarError(422, str(exc)) from exc
    return _payloads(services, rendered)


def _finish_task(task_id: int, skip: bool) -> ResponseReturnValue:
    services = get_services()
    userid = me().userid
    body = json_object()
    with services.transaction() as session:
        _authorized_task(services, session, task_id)
        admin = is_admin(services, userid)
        if skip:
            result = tasks.skip_task(session, task_id, userid, is_admin=admin, now=utcnow(),
                                     reason=str(body.get("reason") or "")[:MAX_NOTE] or None)
        else:
            result = tasks.complete_task(session, task_id, userid, is_admin=admin, now=utcnow())
    if result in ("done", "skipped"):
        return jsonify(id=task_id, state="done" if result == "done" else "skipped")
    if result == "closed":
        raise SidebarError(409, "该任务已经完成或跳过。")
    raise SidebarError(403, "这不是您的任务，无权操作。")


@sidebar_api_bp.post("/tasks/<int:task_id>/done")
def task_done(task_id: int) -> ResponseReturnValue:
    return _finish_task(task_id, skip=False)


@sidebar_api_bp.post("/tasks/<int:task_id>/skip")
def task_skip(task_id: int) -> ResponseReturnValue:
    return _finish_task(task_id, skip=True)


@sidebar_api_bp.get("/tasks")
def my_tasks() -> ResponseReturnValue:
    services = get_services()
    with services.transaction() as session:
        items = [task_card(services, session, t, None, me().userid)
                 for t in tasks.open_tasks_for_employee(session, me().userid)]
    return jsonify(items=items)


# -- group chats -----------------------------------------------------------------------------------

@sidebar_api_bp.get("/groups/<chat_id>")
def get_group(chat_id: str) -> ResponseReturnValue:
    """Opened from a group chat's toolbar: the group and the customers in it this employee follows."""
    services = get_services()
    userid = me().userid
    with services.transaction() as session:
        group = session.get(GroupChat, chat_id)
        member = session.scalar(select(GroupMember.id).where(
            GroupMember.chat_id == chat_id, GroupMember.member_id == userid, GroupMember.left_at.is_(None)))
        allowed = group is not None and (group.owner == userid or member is not None or is_admin(services, userid))
        if not allowed:
            log.warning("sidebar: access denied to a group chat", extra={"userid": userid, "chat_id": chat_id})
            raise SidebarError(403, DENIED_GROUP)
        assert group is not None  # noqa: S101 - allowed implies it exists
        rows = session.execute(
            select(Customer.external_userid, Customer.name, Customer.stage)
            .join(GroupMember, GroupMember.member_id == Customer.external_userid)
            .join(FollowRelation, FollowRelation.customer_id == Customer.id)
            .where(GroupMember.chat_id == chat_id, GroupMember.left_at.is_(None),
                   FollowRelation.userid == userid, FollowRelation.deleted_at.is_(None))
            .order_by(Customer.name)).all()
        total = len(session.scalars(select(GroupMember.id).where(
            GroupMember.chat_id == chat_id, GroupMember.left_at.is_(None))).all())
        return jsonify(chat_id=chat_id, name=group.name or "客户群", members=total, customers=[
            {"external_userid": e, "name": n or e, "stage_label": STAGE_LABELS.get(s, s)} for e, n, s in rows])
