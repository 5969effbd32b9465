"""Flask app of the fake WeCom (企业微信模拟器): `/cgi-bin/...` APIs + `/_sim/...` control API.

The API half answers with WeCom's JSON shapes and errcodes (PROTOCOL.md §3, §4) so the real
client code (bot/wecom/client.py) can be pointed at it unchanged. The control half lets tests
and the demo act as employees and customers (add a customer, confirm a mass send, send a KF
message…), which makes the simulator push encrypted callbacks like WeCom does.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import yaml
from flask import Flask, Response, jsonify, request

from bot.wecom.simulator import callbacks as cb
from bot.wecom.simulator.scenario import load_scenario
from bot.wecom.simulator.state import (
    KF_RETENTION,
    OAUTH_CODE_TTL,
    WELCOME_WINDOW,
    Handover,
    Relation,
    SimState,
    new_id,
)

__all__ = ["create_simulator_app", "ApiError", "DEFAULT_CALLBACK"]

# Used when no callback config is given; the PROTOCOL vector parameters, so fixtures line up.
DEFAULT_CALLBACK = {
    "token": "Tk7wecomCallback2024",
    "encoding_aes_key": "3wWuV0OlkswubuguJWZd7LezQB9AuodY8QjNDGgCJcn",
}
TOKEN_CODES = {40014, 42001, 40001}  # never injected into gettoken itself
NINETY_DAYS = 90 * 24 * 3600


class ApiError(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(errcode, errmsg)
        self.errcode = errcode
        self.errmsg = errmsg


@dataclass
class Ctx:
    state: SimState
    emitter: cb.CallbackEmitter
    app: str  # which app's token made the call
    args: dict[str, str]
    body: dict[str, Any]


Handler = Callable[[Ctx], dict[str, Any]]
_ROUTES: dict[str, Handler] = {}


def api(path: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _ROUTES[path] = fn
        return fn

    return register


def _errmsg(code: int, text: str) -> str:
    # Real errmsgs carry a hint and a devtool link; clients must branch on errcode only.
    hint = secrets.token_hex(6)
    return (
        f"{text}, hint: [{hint}], from ip: {request.remote_addr}, more info at "
        f"https://open.work.weixin.qq.com/devtool/query?e={code}"
    )


def _page(items: list[Any], cursor: str | None, limit: int) -> tuple[list[Any], str]:
    """Opaque cursor = 'c<offset>'; empty next_cursor means the last page."""
    start = int(cursor[1:]) if cursor and cursor.startswith("c") and cursor[1:].isdigit() else 0
    chunk = items[start : start + limit]
    nxt = f"c{start + limit}" if start + limit < len(items) else ""
    return chunk, nxt


def _need(body: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if body.get(n) in (None, "", [])]
    if missing:
        raise ApiError(41035 if "welcome_code" in missing else 40058, f"missing parameter {missing[0]}")


def _employee(ctx: Ctx, userid: str) -> dict[str, Any]:
    emp = ctx.state.employees.get(userid)
    if emp is None:
        raise ApiError(60111, "invalid string value `userid`. userid not found")
    return emp


def _customer(ctx: Ctx, external_userid: str) -> dict[str, Any]:
    cust = ctx.state.customers.get(external_userid)
    if cust is None or not external_userid.startswith(("wm", "wo")):
        raise ApiError(40096, "invalid external userid")
    return cust


def _relation(ctx: Ctx, userid: str, external_userid: str) -> Relation:
    _customer(ctx, external_userid)
    rel = ctx.state.relations.get((userid, external_userid))
    if rel is None:
        raise ApiError(84061, "not external contact")
    return rel


# -- 通讯录 / contacts ----------------------------------------------------------------------------
_USER_FIELDS = ("userid", "name", "department", "is_leader_in_dept", "position", "status", "direct_leader")


def _user_json(emp: dict[str, Any]) -> dict[str, Any]:
    out = {k: emp[k] for k in _USER_FIELDS if k in emp}
    out["main_department"] = emp["department"][0] if emp["department"] else 1
    return out


@api("user/get")
def user_get(ctx: Ctx) -> dict[str, Any]:
    return _user_json(_employee(ctx, ctx.args.get("userid", "")))


@api("user/list")
def user_list(ctx: Ctx) -> dict[str, Any]:
    dept = int(ctx.args.get("department_id", "0") or 0)
    if dept not in ctx.state.departments:
        raise ApiError(60123, "invalid party id")
    wanted = {dept}
    if ctx.args.get("fetch_child") == "1":
        grew = True
        while grew:
            more = {d for d, v in ctx.state.departments.items() if v["parentid"] in wanted} - wanted
            wanted |= more
            grew = bool(more)
    users = [
        _user_json(e)
        for e in ctx.state.employees.values()
        if e["status"] != 5 and wanted & set(e["department"])
    ]
    return {"userlist": users}


@api("department/list")
def department_list(ctx: Ctx) -> dict[str, Any]:
    return {"department": sorted(ctx.state.departments.values(), key=lambda d: d["id"])}


# -- 客户联系 / customers ---------------------------------------------------------------------------
@api("externalcontact/get_follow_user_list")
def get_follow_user_list(ctx: Ctx) -> dict[str, Any]:
    users = [u for u, e in ctx.state.employees.items() if e["customer_contact"] and e["status"] == 1]
    return {"follow_user": users}


@api("externalcontact/list")
def external_list(ctx: Ctx) -> dict[str, Any]:
    userid = ctx.args.get("userid", "")
    _employee(ctx, userid)
    return {"external_userid": [e for (u, e) in ctx.state.relations if u == userid]}


def _tags_detail(ctx: Ctx, rel: Relation) -> list[dict[str, Any]]:
    idx = ctx.state.tag_index()
    return [
        {"group_name": idx[t][0]["group_name"], "tag_name": idx[t][1]["name"], "tag_id": t, "type": 1}
        for t in rel.tags
        if t in idx
    ]


def _follow_common(rel: Relation) -> dict[str, Any]:
    return {
        "userid": rel.userid,
        "remark": rel.remark,
        "description": rel.description,
        "createtime": rel.createtime,
        "remark_corp_name": rel.remark_corp_name,
        "remark_mobiles": list(rel.remark_mobiles),
        "oper_userid": rel.oper_userid,
        "add_way": rel.add_way,
        "state": rel.state,
    }


@api("externalcontact/get")
def external_get(ctx: Ctx) -> dict[str, Any]:
    eid = ctx.args.get("external_userid", "")
    cust = _customer(ctx, eid)
    rels = [r for (u, e), r in ctx.state.relations.items() if e == eid]
    if not rels:
        raise ApiError(84061, "not external contact")
    follow = [{**_follow_common(r), "tags": _tags_detail(ctx, r)} for r in rels]
    return {"external_contact": dict(cust), "follow_user": follow, "next_cursor": ""}


@api("externalcontact/batch/get_by_user")
def batch_get_by_user(ctx: Ctx) -> dict[str, Any]:
    userids = ctx.body.get("userid_list") or []
    if not userids or len(userids) > 100:
        raise ApiError(40058, "userid_list must hold 1..100 userids")
    limit = min(int(ctx.body.get("limit") or 50), 100)
    rels = _relations_of(ctx.state, tuple(userids))
    page, nxt = _page(rels, ctx.body.get("cursor"), limit)
    rows = [{"external_contact": dict(ctx.state.customers[r.external_userid]),
             "follow_info": {**_follow_common(r), "tag_id": list(r.tags)}} for r in page]
    return {"external_contact_list": rows, "next_cursor": nxt}


_REL_CACHE: dict[tuple[int, int, tuple[str, ...]], list[Relation]] = {}


def _relations_of(state: SimState, userids: tuple[str, ...]) -> list[Relation]:
    """The members' relations in a stable order; cached while the relation set is unchanged in size,
    so paging through 100,000 customers does not rescan and resort them for every page."""
    key = (id(state), len(state.relations), userids)
    cached = _REL_CACHE.get(key)
    if cached is None:
        if len(_REL_CACHE) > 64:
            _REL_CACHE.clear()
        order = {u: i for i, u in enumerate(userids)}
        cached = sorted((r for (u, _), r in state.relations.items() if u in order),
                        key=lambda r: (order[r.userid], r.createtime, r.external_userid))
        _REL_CACHE[key] = cached
    return cached


@api("externalcontact/remark")
def remark(ctx: Ctx) -> dict[str, Any]:
    _need(ctx.body, "userid", "external_userid")
    rel = _relation(ctx, ctx.body["userid"], ctx.body["external_userid"])
    if len(ctx.body.get("remark") or "") > 20 or len(ctx.body.get("description") or "") > 150:
        raise ApiError(40058, "remark ≤ 20 chars, description ≤ 150 chars")
    for key, attr in (
        ("remark", "remark"),
        ("description", "description"),
        ("remark_company", "remark_corp_name"),
        ("remark_mobiles", "remark_mobiles"),
    ):
        if key in ctx.body:  # omitted fields stay unchanged (§3.2)
            setattr(rel, attr, ctx.body[key])
    return {}


# -- 企业客户标签 / corp tags ------------------------------------------------------------------------
@api("externalcontact/get_corp_tag_list")
def get_corp_tag_list(ctx: Ctx) -> dict[str, Any]:
    group_ids, tag_ids = ctx.body.get("group_id") or [], ctx.body.get("tag_id") or []
    groups = sorted(ctx.state.tag_groups.values(), key=lambda g: -g["order"])
    out = []
    for g in groups:
        if group_ids and g["group_id"] not in group_ids:
            continue
        tags = [t for t in g["tag"] if group_ids or not tag_ids or t["id"] in tag_ids]
        if tags or not tag_ids or group_ids:
            out.append({**g, "tag": sorted(tags, key=lambda t: -t["order"])})
    return {"tag_group": out}


@api("externalcontact/add_corp_tag")
def add_corp_tag(ctx: Ctx) -> dict[str, Any]:
    st, now = ctx.state, ctx.state.now()
    tags = ctx.body.get("tag") or []
    if not tags or any(len(t.get("name", "")) > 30 or not t.get("name") for t in tags):
        raise ApiError(40071, "tag name must be 1..30 characters")
    group = None
    if ctx.body.get("group_id"):
        group = st.tag_groups.get(ctx.body["group_id"])
        if group is None:
            raise ApiError(40068, "invalid tagid")
    else:
        _need(ctx.body, "group_name")
        group = next((g for g in st.tag_groups.values() if g["group_name"] == ctx.body["group_name"]), None)
        if group is None:
            gid = new_id("et", 32)
            group = {
                "group_id": gid,
                "group_name": ctx.body["group_name"],
                "create_time": now,
                "order": int(ctx.body.get("order") or 0),
                "deleted": False,
                "tag": [],
            }
            st.tag_groups[gid] = group
    existing = {t["name"] for t in group["tag"]}
    new = [
        {
            "id": new_id("et", 32),
            "name": t["name"],
            "create_time": now,
            "order": int(t.get("order") or 0),
            "deleted": False,
        }
        for t in tags
        if t["name"] not in existing
    ]
    group["tag"].extend(new)
    return {"tag_group": {**{k: v for k, v in group.items() if k != "tag"}, "tag": new}}


@api("externalcontact/edit_corp_tag")
def edit_corp_tag(ctx: Ctx) -> dict[str, Any]:
    _need(ctx.body, "id")
    target: dict[str, Any] | None = ctx.state.tag_groups.get(ctx.body["id"])
    name_key = "group_name"
    if target is None:
        hit = ctx.state.tag_index().get(ctx.body["id"])
        if hit is None:
            raise ApiError(40068, "invalid tagid")
        target, name_key = hit[1], "name"
    if "name" in ctx.body:
        target[name_key] = ctx.body["name"]
    if "order" in ctx.body:
        target["order"] = int(ctx.body["order"])
    return {}


@api("externalcontact/del_corp_tag")
def del_corp_tag(ctx: Ctx) -> dict[str, Any]:
    st = ctx.state
    tag_ids, group_ids = set(ctx.body.get("tag_id") or []), set(ctx.body.get("group_id") or [])
    if not tag_ids and not group_ids:
        raise ApiError(40058, "tag_id or group_id required")
    idx = st.tag_index()
    if any(t not in idx for t in tag_ids) or any(g not in st.tag_groups for g in group_ids):
        raise ApiError(40068, "invalid tagid")
    for gid in group_ids:
        tag_ids |= {t["id"] for t in st.tag_groups.pop(gid)["tag"]}
    for g in list(st.tag_groups.values()):
        g["tag"] = [t for t in g["tag"] if t["id"] not in tag_ids]
        if not g["tag"]:  # deleting the last tag deletes the group (§3.3)
            del st.tag_groups[g["group_id"]]
    for rel in st.relations.values():
        rel.tags = [t for t in rel.tags if t not in tag_ids]
    return {}


@api("externalcontact/mark_tag")
def mark_tag(ctx: Ctx) -> dict[str, Any]:
    _need(ctx.body, "userid", "external_userid")
    add, remove = ctx.body.get("add_tag") or [], ctx.body.get("remove_tag") or []
    if not add and not remove:
        raise ApiError(40058, "add_tag or remove_tag required")
    rel = _relation(ctx, ctx.body["userid"], ctx.body["external_userid"])
    idx = ctx.state.tag_index()
    if any(t not in idx for t in [*add, *remove]):
        raise ApiError(40068, "invalid tagid")
    rel.tags = [t for t in rel.tags if t not in remove] + [t for t in add if t not in rel.tags]
    return {}


# -- 欢迎语 / welcome ------------------------------------------------------------------------------
@api("externalcontact/send_welcome_msg")
def send_welcome_msg(ctx: Ctx) -> dict[str, Any]:
    _need(ctx.body, "welcome_code")
    code = ctx.body["welcome_code"]
    entry = ctx.state.welcome_codes.get(code)
    if entry is None:
        raise ApiError(41051, "invalid welcome_code")
    if code in ctx.state.welcome_busy_once:
        ctx.state.welcome_busy_once.discard(code)
        raise ApiError(41096, "welcome msg is being sent by another app")
    if entry["used"] or ctx.state.now() - entry["issued_at"] > WELCOME_WINDOW:
        raise ApiError(41051, "customer already begin chatting")
    entry.update(
        used=True,
        sent_at=ctx.state.now(),
        text=ctx.body.get("text"),
        attachments=ctx.body.get("attachments") or [],
    )
    return {}


# -- 群发 / mass send ------------------------------------------------------------------------------
@api("externalcontact/add_msg_template")
def add_msg_template(ctx: Ctx) -> dict[str, Any]:
    st, body = ctx.state, ctx.body
    chat_type = body.get("chat_type") or "single"
    sender: str = body.get("sender") or ""
    targets: dict[str, str] = {}  # external id / chat id -> sending member
    fail: list[str] = []
    if chat_type == "group":
        _need(body, "sender")
        for chat_id in body.get("chat_id_list") or [c for c, g in st.groups.items() if g["owner"] == sender]:
            targets[chat_id] = sender
    else:
        eids = body.get("external_userid") or []
        if not eids and body.get("tag_filter"):
            lists = [set(g.get("tag_list") or []) for g in body["tag_filter"].get("group_list") or []]
            eids = sorted(
                {
                    r.external_userid
                    for r in st.relations.values()
                    if (not sender or r.userid == sender) and all(set(r.tags) & lst for lst in lists)
                }
            )
        for eid in eids:
            owners = [r.userid for r in st.relations.values() if r.external_userid == eid]
            if sender:
                owners = [u for u in owners if u == sender]
            if owners:
                targets[eid] = owners[0]
            else:
                fail.append(eid)
    if not targets:
        raise ApiError(41048, "no valid external contact")
    msgid = new_id("msg", 24)
    st.mass_sends[msgid] = {
        "msgid": msgid,
        "chat_type": chat_type,
        "creator": sender,
        "create_time": st.now(),
        "text": body.get("text"),
        "attachments": body.get("attachments") or [],
        "results": [{"target": t, "userid": u, "status": 0, "send_time": 0} for t, u in targets.items()],
    }
    return {"fail_list": fail, "msgid": msgid}


def _mass(ctx: Ctx) -> dict[str, Any]:
    _need(ctx.body, "msgid")
    ms = ctx.state.mass_sends.get(ctx.body["msgid"])
    if ms is None:
        raise ApiError(41063, "invalid msgid")
    return ms


@api("externalcontact/get_groupmsg_task")
def get_groupmsg_task(ctx: Ctx) -> dict[str, Any]:
    ms = _mass(ctx)
    users: dict[str, dict[str, Any]] = {}
    for r in ms["results"]:
        t = users.setdefault(r["userid"], {"userid": r["userid"], "status": 0, "send_time": 0})
        if r["status"]:
            t.update(status=1, send_time=r["send_time"])
    page, nxt = _page(
        list(users.values()), ctx.body.get("cursor"), min(int(ctx.body.get("limit") or 500), 1000)
    )
    return {"task_list": page, "next_cursor": nxt}


@api("externalcontact/get_groupmsg_send_result")
def get_groupmsg_send_result(ctx: Ctx) -> dict[str, Any]:
    ms = _mass(ctx)
    _need(ctx.body, "userid")
    key = "chat_id" if ms["chat_type"] == "group" else "external_userid"
    rows = [
        {key: r["target"], "userid": r["userid"], "status": r["status"], "send_time": r["send_time"]}
        for r in ms["results"]
        if r["userid"] == ctx.body["userid"]
    ]
    page, nxt = _page(rows, ctx.body.get("cursor"), min(int(ctx.body.get("limit") or 500), 1000))
    return {"send_list": page, "next_cursor": nxt}


# -- 客户群 / groups ---------------------------------------------------------------------------------
@api("externalcontact/groupchat/list")
def groupchat_list(ctx: Ctx) -> dict[str, Any]:
    limit = int(ctx.body.get("limit") or 0)
    if not 1 <= limit <= 1000:
        raise ApiError(40058, "limit must be 1..1000")
    owners = (ctx.body.get("owner_filter") or {}).get("userid_list")
    status = int(ctx.body.get("status_filter") or 0)
    rows = [
        {"chat_id": g["chat_id"], "status": g.get("status", 0)}
        for g in ctx.state.groups.values()
        if (not owners or g["owner"] in owners) and (not status or g.get("status", 0) == status)
    ]
    page, nxt = _page(rows, ctx.body.get("cursor"), limit)
    return {"group_chat_list": page, "next_cursor": nxt}


@api("externalcontact/groupchat/get")
def groupchat_get(ctx: Ctx) -> dict[str, Any]:
    _need(ctx.body, "chat_id")
    g = ctx.state.groups.get(ctx.body["chat_id"])
    if g is None:
        raise ApiError(40050, "invalid chatid")
    members = []
    for m in g["member_list"]:
        row = dict(m)
        if ctx.body.get("need_name"):
            who = ctx.state.employees.get(m["userid"]) or ctx.state.customers.get(m["userid"]) or {}
            row["name"] = who.get("name", "")
        members.append(row)
    out = {
        k: g[k] for k in ("chat_id", "name", "owner", "create_time", "notice", "admin_list", "member_version")
    }
    return {"group_chat": {**out, "member_list": members}}


def _group_transfer(ctx: Ctx, onjob: bool) -> dict[str, Any]:
    _need(ctx.body, "chat_id_list", "new_owner")
    new_owner = _employee(ctx, ctx.body["new_owner"])
    failed = []
    for chat_id in ctx.body["chat_id_list"][:100]:
        g = ctx.state.groups.get(chat_id)
        owner_status = ctx.state.employees.get(g["owner"], {}).get("status") if g else None
        if g is None:
            failed.append({"chat_id": chat_id, "errcode": 90501, "errmsg": "not external group chat"})
        elif onjob != (owner_status == 1):
            code, msg = (90507, "owner has resigned") if onjob else (90500, "owner not resigned")
            failed.append({"chat_id": chat_id, "errcode": code, "errmsg": msg})
        else:
            g["owner"] = new_owner["userid"]
            g["status"] = 0 if onjob else 3
    return {"failed_chat_list": failed}


@api("externalcontact/groupchat/transfer")
def groupchat_transfer(ctx: Ctx) -> dict[str, Any]:
    return _group_transfer(ctx, onjob=False)


@api("externalcontact/groupchat/onjob_transfer")
def groupchat_onjob_transfer(ctx: Ctx) -> dict[str, Any]:
    return _group_transfer(ctx, onjob=True)


# -- 应用消息 / app messages --------------------------------------------------------------------------
@api("message/send")
def message_send(ctx: Ctx) -> dict[str, Any]:
    body = ctx.body
    _need(body, "msgtype")
    agent = ctx.state.apps[ctx.app].get("agent_id")
    if agent is None or int(body.get("agentid") or 0) != agent:
        raise ApiError(301002, "not allow operate another agent with this accesstoken")
    active = {u.lower(): u for u, e in ctx.state.employees.items() if e["status"] == 1}
    wanted = [u for u in str(body.get("touser") or "").split("|") if u]
    if wanted == ["@all"]:
        wanted = list(active.values())
    valid = [active[u.lower()] for u in wanted if u.lower() in active]
    invalid = [u.lower() for u in wanted if u.lower() not in active]
    if not valid:
        raise ApiError(81013, "user & party & tag all invalid")
    msgid = new_id("sim_msg_", 32)
    ctx.state.app_messages.append(
        {
            "msgid": msgid,
            "touser": valid,
            "msgtype": body["msgtype"],
            "content": body.get(body["msgtype"]),
            "time": ctx.state.now(),
        }
    )
    return {
        "invaliduser": "|".join(invalid),
        "invalidparty": "",
        "invalidtag": "",
        "unlicenseduser": "",
        "msgid": msgid,
    }


# -- 微信客服 / kf ----------------------------------------------------------------------------------
@api("kf/sync_msg")
def kf_sync_msg(ctx: Ctx) -> dict[str, Any]:
    st, body = ctx.state, ctx.body
    token = body.get("token")
    if token and st.kf_tokens.get(token, 0) < st.now():
        raise ApiError(95007, "invalid msg token")
    limit = int(body.get("limit") or 1000)
    if not 1 <= limit <= 1000:
        raise ApiError(40058, "limit must be 1..1000")
    after = int(body["cursor"][1:]) if str(body.get("cursor") or "").startswith("c") else -1
    horizon = st.now() - KF_RETENTION
    rows = [
        m
        for m in st.kf_messages
        if m["seq"] > after
        and m["send_time"] >= horizon
        and (not body.get("open_kfid") or m["open_kfid"] == body["open_kfid"])
    ]
    page = rows[:limit]
    last = page[-1]["seq"] if page else max(after, 0)
    return {
        "next_cursor": f"c{last}",
        "has_more": int(len(rows) > limit),
        "msg_list": [{k: v for k, v in m.items() if k != "seq"} for m in page],
    }


# -- 继承 / handover ---------------------------------------------------------------------------------
def _start_transfer(ctx: Ctx, kind: str) -> dict[str, Any]:
    st, body = ctx.state, ctx.body
    _need(body, "handover_userid", "takeover_userid", "external_userid")
    handover = _employee(ctx, body["handover_userid"])
    taker = _employee(ctx, body["takeover_userid"])
    if len(body["external_userid"]) > 100:
        raise ApiError(40058, "at most 100 external_userid per call")
    if kind == "resigned" and handover["status"] != 5:
        raise ApiError(40097, "handover user has not resigned")
    if kind == "onjob" and handover["status"] != 1:
        raise ApiError(40097, "handover user is not on the job")
    if not taker["customer_contact"] or taker["status"] != 1:
        raise ApiError(84074, "takeover user has no external contact permission")
    out = []
    for eid in body["external_userid"]:
        recent = [
            h for h in st.handovers if h.external_userid == eid and st.now() - h.started_at < NINETY_DAYS
        ]
        if (body["handover_userid"], eid) not in st.relations or eid not in st.customers:
            code = 84061
        elif any(h.handover_userid == body["handover_userid"] and st.handover_status(h) == 2 for h in recent):
            code = 40129  # already being handed over
        elif len(recent) >= 2:
            code = 40128  # twice within 90 days (§3.7)
        else:
            code = 0
            outcome = 3 if eid in st.refusing_customers else 4 if taker["userid"] in st.takers_at_limit else 1
            st.handovers.append(
                Handover(kind, body["handover_userid"], taker["userid"], eid, st.now(), outcome)
            )
        out.append({"external_userid": eid, "errcode": code})
    return {"customer": out}


def _transfer_result(ctx: Ctx, kind: str) -> dict[str, Any]:
    st = ctx.state
    _need(ctx.body, "handover_userid", "takeover_userid")
    rows = [
        {
            "external_userid": h.external_userid,
            "status": st.handover_status(h),
            "takeover_time": h.takeover_time,
        }
        for h in st.handovers
        if h.kind == kind
        and h.handover_userid == ctx.body["handover_userid"]
        and h.takeover_userid == ctx.body["takeover_userid"]
    ]
    page, nxt = _page(rows, ctx.body.get("cursor"), int(st.page_sizes.get("transfer_result", 1000)))
    return {"customer": page, "next_cursor": nxt}


@api("externalcontact/transfer_customer")
def transfer_customer(ctx: Ctx) -> dict[str, Any]:
    return _start_transfer(ctx, "onjob")


@api("externalcontact/transfer_result")
def transfer_result(ctx: Ctx) -> dict[str, Any]:
    return _transfer_result(ctx, "onjob")


@api("externalcontact/resigned/transfer_customer")
def resigned_transfer_customer(ctx: Ctx) -> dict[str, Any]:
    return _start_transfer(ctx, "resigned")


@api("externalcontact/resigned/transfer_result")
def resigned_transfer_result(ctx: Ctx) -> dict[str, Any]:
    return _transfer_result(ctx, "resigned")


@api("externalcontact/get_unassigned_list")
def get_unassigned_list(ctx: Ctx) -> dict[str, Any]:
    st = ctx.state
    busy = {(h.handover_userid, h.external_userid) for h in st.handovers if st.handover_status(h) in (1, 2)}
    rows = [
        {
            "handover_userid": u,
            "external_userid": e,
            "dimission_time": st.employees[u].get("dimission_time", 0),
        }
        for (u, e) in st.relations
        if st.employees.get(u, {}).get("status") == 5 and (u, e) not in busy
    ]
    page, nxt = _page(rows, ctx.body.get("cursor"), min(int(ctx.body.get("page_size") or 1000), 1000))
    return {"info": page, "is_last": not nxt, "next_cursor": nxt}


# -- OAuth, JS-SDK, media, misc -------------------------------------------------------------------
def _consume_oauth_code(ctx: Ctx) -> dict[str, Any]:
    entry = ctx.state.oauth_codes.get(ctx.args.get("code", ""))
    if entry is None or entry["used"] or ctx.state.now() - entry["issued_at"] > OAUTH_CODE_TTL:
        raise ApiError(40029, "invalid code")
    entry["used"] = True
    return entry


@api("auth/getuserinfo")
def auth_getuserinfo(ctx: Ctx) -> dict[str, Any]:
    entry = _consume_oauth_code(ctx)
    if entry.get("userid"):
        return {"userid": entry["userid"]}
    return {
        "openid": entry["openid"],
        **({"external_userid": entry["external_userid"]} if entry.get("external_userid") else {}),
    }


@api("user/getuserinfo")
def legacy_getuserinfo(ctx: Ctx) -> dict[str, Any]:
    entry = _consume_oauth_code(ctx)
    if entry.get("userid"):
        return {"UserId": entry["userid"], "DeviceId": ""}
    return {"OpenId": entry["openid"], "DeviceId": ""}


@api("get_jsapi_ticket")
def get_jsapi_ticket(ctx: Ctx) -> dict[str, Any]:
    ticket, ttl = ctx.state.issue_ticket(ctx.app, "corp")
    return {"ticket": ticket, "expires_in": ttl}


@api("ticket/get")
def ticket_get(ctx: Ctx) -> dict[str, Any]:
    if ctx.args.get("type") != "agent_config":
        raise ApiError(40058, "type must be agent_config")
    ticket, ttl = ctx.state.issue_ticket(ctx.app, "agent_config")
    return {"ticket": ticket, "expires_in": ttl}


@api("media/upload")
def media_upload(ctx: Ctx) -> dict[str, Any]:
    kind = ctx.args.get("type", "")
    upload = request.files.get("media")
    if kind not in ("image", "voice", "video", "file") or upload is None:
        raise ApiError(40004 if upload is None else 40005, "invalid media type or missing media")
    media_id = "3" + secrets.token_urlsafe(40)
    data = upload.read()
    ctx.state.media[media_id] = {
        "type": kind,
        "filename": upload.filename,
        "size": len(data),
        "at": ctx.state.now(),
    }
    return {"type": kind, "media_id": media_id, "created_at": str(ctx.state.now())}


@api("getcallbackip")
def getcallbackip(ctx: Ctx) -> dict[str, Any]:
    return {"ip_list": list(ctx.state.callback_ips)}


# -- settling the clock-driven parts ---------------------------------------------------------------
def _settle(state: SimState, emitter: cb.CallbackEmitter) -> None:
    """Apply handovers whose outcome is due: refusals fire transfer_fail, completions move the relation."""
    corp = state.corp_id
    for h in state.handovers:
        status = state.handover_status(h)
        if h.settled or status == 2:
            continue
        h.settled = True
        if status in (3, 4):
            reason = "customer_refused" if status == 3 else "customer_limit_exceed"
            emitter.emit(
                cb.change_external_contact(
                    corp,
                    h.started_at,
                    "transfer_fail",
                    h.takeover_userid,
                    h.external_userid,
                    fail_reason=reason,
                )
            )
            continue
        old = state.relations.pop((h.handover_userid, h.external_userid), None)
        if old is None:
            continue
        state.relations[(h.takeover_userid, h.external_userid)] = replace(
            old,
            userid=h.takeover_userid,
            createtime=h.takeover_time,
            add_way=202,
            oper_userid=h.handover_userid,
        )
        if h.kind == "onjob":
            emitter.emit(
                cb.change_external_contact(
                    corp,
                    h.takeover_time,
                    "del_external_contact",
                    h.handover_userid,
                    h.external_userid,
                    source="DELETE_BY_TRANSFER",
                )
            )
        emitter.emit(
            cb.change_external_contact(
                corp, h.takeover_time, "add_external_contact", h.takeover_userid, h.external_userid
            )
        )


# -- the Flask app ---------------------------------------------------------------------------------
def create_simulator_app(state: SimState | None = None, config: dict[str, Any] | None = None) -> Flask:
    """config: callback_url, callback_token, encoding_aes_key, agent_id, callback_post (test hook)."""
    st = state or SimState()
    cfg = {**DEFAULT_CALLBACK, **(config or {})}
    emitter = cb.CallbackEmitter(
        cfg.get("callback_url"),
        cfg.get("callback_token") or cfg["token"],
        cfg["encoding_aes_key"],
        st.corp_id,
        post=cfg.get("callback_post"),
        outbox=st.outbox,
        agent_id=cfg.get("agent_id"),
    )
    app = Flask("wecom_simulator")
    app.config["SIM_STATE"] = st
    app.config["SIM_EMITTER"] = emitter

    def answer(path: str, errcode: int, payload: dict[str, Any], app_name: str | None) -> Response:
        query = {k: ("***" if k in ("access_token", "corpsecret") else v) for k, v in request.args.items()}
        st.log_call(
            {
                "path": path,
                "method": request.method,
                "query": query,
                "body": _json_body(),
                "errcode": errcode,
                "time": st.now(),
                "app": app_name,
            }
        )
        return jsonify({"errcode": errcode, "errmsg": payload.pop("errmsg", "ok"), **payload})

    def fail(path: str, code: int, text: str, app_name: str | None = None) -> Response:
        return answer(path, code, {"errmsg": _errmsg(code, text)}, app_name)

    @app.route("/cgi-bin/gettoken", methods=["GET"])
    def gettoken() -> Response:
        with st.lock:
            _settle(st, emitter)
            if request.args.get("corpid") != st.corp_id:
                return fail("gettoken", 40013, "invalid corpid")
            app_name = st.app_by_secret(request.args.get("corpsecret", ""))
            if app_name is None:
                return fail("gettoken", 40001, "invalid credential")
            fault = st.draw_fault("gettoken")
            if fault is not None and fault not in TOKEN_CODES:
                return fail("gettoken", fault, "simulated fault", app_name)
            token, ttl = st.issue_token(app_name)
            return answer("gettoken", 0, {"access_token": token, "expires_in": ttl}, app_name)

    @app.route("/cgi-bin/<path:path>", methods=["GET", "POST"])
    def cgi(path: str) -> Response:
        with st.lock:
            _settle(st, emitter)
            handler = _ROUTES.get(path)
            if handler is None:
                return fail(path, 404, f"api {path} not served by the simulator")
            token = request.args.get("access_token")
            if not token:
                return fail(path, 41001, "access_token missing")
            info = st.tokens.get(token)
            if info is None:
                return fail(path, 40014, "invalid access_token")
            if info["expires_at"] <= st.now():
                return fail(path, 42001, "access_token expired", info["app"])
            app_name = info["app"]
            if not st.apps[app_name].get("ip_trusted", True):
                return fail(path, 60020, "not allow to access from your ip", app_name)
            if st.over_rate_limit(path):
                return fail(path, 45009, "api freq out of limit", app_name)
            fault = st.draw_fault(path)
            if fault is not None:
                if fault == 42001:  # the caller must really refresh, not just retry
                    st.tokens.pop(token, None)
                return fail(path, fault, "simulated fault", app_name)
            ctx = Ctx(st, emitter, app_name, dict(request.args), _json_body())
            try:
                payload = handler(ctx)
            except ApiError as err:
                return fail(path, err.errcode, err.errmsg, app_name)
            return answer(path, 0, dict(payload), app_name)

    _register_control(app, st, emitter)
    return app


def _json_body() -> dict[str, Any]:
    if request.method != "POST" or request.files:
        return {}
    try:
        body = json.loads(request.get_data() or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# -- control API (/_sim) --------------------------------------------------------------------------
def _register_control(app: Flask, st: SimState, emitter: cb.CallbackEmitter) -> None:
    corp = st.corp_id

    def body() -> dict[str, Any]:
        return request.get_json(silent=True) or {}

    @app.get("/_sim/calls")
    def calls() -> Response:
        return jsonify({"calls": st.calls_to(request.args.get("path"))})

    @app.post("/_sim/reset-log")
    def reset_log() -> Response:
        with st.lock:
            st.calls.clear()
        return jsonify({"ok": True})

    @app.get("/_sim/clock")
    def clock() -> Response:
        return jsonify({"now": st.now()})

    @app.post("/_sim/clock/advance")
    def advance() -> Response:
        now = st.advance(float(body().get("seconds", 0)))
        with st.lock:
            _settle(st, emitter)
        return jsonify({"now": now})

    @app.post("/_sim/faults")
    def faults() -> Response:
        b = body()
        st.set_faults(float(b.get("rate", 0)), b.get("codes"), b.get("seed"), b.get("paths"))
        if b.get("next"):  # {"path": [errcodes…]}: deterministic faults for the next calls
            with st.lock:
                for path, codes in b["next"].items():
                    st.scripted_faults.setdefault(path, []).extend(int(c) for c in codes)
        if "rate_limits" in b:
            with st.lock:
                st.rate_limits = {k: int(v) for k, v in (b["rate_limits"] or {}).items()}
        return jsonify({"faults": st.faults, "rate_limits": st.rate_limits})

    @app.post("/_sim/config")
    def configure() -> Response:
        """Switches: ip_trusted per app, refusing customers, takers at limit, 41096 once, page sizes."""
        b = body()
        with st.lock:
            for name, trusted in (b.get("ip_trusted") or {}).items():
                st.apps[name]["ip_trusted"] = bool(trusted)
            st.refusing_customers |= set(b.get("refusing_customers") or [])
            st.takers_at_limit |= set(b.get("takers_at_limit") or [])
            st.welcome_busy_once |= set(b.get("welcome_busy_once") or [])
            st.page_sizes.update(b.get("page_sizes") or {})
        return jsonify({"ok": True})

    @app.post("/_sim/scenario")
    def scenario() -> Response:
        raw = request.get_data(as_text=True)
        data = yaml.safe_load(raw) if raw.strip() else {}
        with st.lock:
            summary = load_scenario(st, data or {})
        return jsonify(summary)

    @app.get("/_sim/outbox")
    def outbox() -> Response:
        with st.lock:
            items = list(st.outbox)
            if request.args.get("clear"):
                st.outbox.clear()
        return jsonify({"events": items})

    def action(name: str) -> Callable[[Callable[[dict[str, Any]], dict[str, Any]]], Any]:
        def register(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
            def view() -> Response:
                with st.lock:
                    _settle(st, emitter)
                    try:
                        return jsonify(fn(body()))
                    except (KeyError, ValueError) as exc:
                        return Response(
                            json.dumps({"error": f"bad request: {exc!r}"}), 400, mimetype="application/json"
                        )

            app.add_url_rule(f"/_sim/actions/{name}", f"sim_{name}", view, methods=["POST"])
            return fn

        return register

    @action("add_customer")
    def add_customer(b: dict[str, Any]) -> dict[str, Any]:
        """An employee adds a customer (or a customer scans a channel code) -> add_external_contact."""
        userid = b["userid"]
        if userid not in st.employees:
            raise KeyError(userid)
        eid = b.get("external_userid")
        if not eid or eid not in st.customers:
            eid = st.add_customer(b.get("name") or "微信用户", eid, **(b.get("profile") or {}))
        state = b.get("state") or ""
        st.relate(userid, eid, state=state, add_way=int(b.get("add_way", 1)), oper_userid=eid)
        code = st.issue_welcome_code(userid, eid) if b.get("welcome", True) else None
        change = "add_half_external_contact" if b.get("half") else "add_external_contact"
        emitter.emit(
            cb.change_external_contact(
                corp, st.now(), change, userid, eid, state=state or None, welcome_code=code
            ),
            st.now(),
        )
        return {"external_userid": eid, "welcome_code": code}

    @action("delete_customer")
    def delete_customer(b: dict[str, Any]) -> dict[str, Any]:
        st.relations.pop((b["userid"], b["external_userid"]))
        emitter.emit(
            cb.change_external_contact(
                corp, st.now(), "del_external_contact", b["userid"], b["external_userid"]
            ),
            st.now(),
        )
        return {"ok": True}

    @action("customer_deletes")
    def customer_deletes(b: dict[str, Any]) -> dict[str, Any]:
        st.relations.pop((b["userid"], b["external_userid"]))
        emitter.emit(
            cb.change_external_contact(corp, st.now(), "del_follow_user", b["userid"], b["external_userid"]),
            st.now(),
        )
        return {"ok": True}

    @action("create_group")
    def create_group(b: dict[str, Any]) -> dict[str, Any]:
        chat_id = st.create_group(b)
        emitter.emit(cb.change_external_chat(corp, st.now(), "create", chat_id), st.now())
        return {"chat_id": chat_id}

    @action("kf_message")
    def kf_message(b: dict[str, Any]) -> dict[str, Any]:
        """A WeChat user writes to a KF account -> the message is stored, kf_msg_or_event fires."""
        open_kfid = b["open_kfid"]
        if open_kfid not in st.kf_accounts:
            raise KeyError(open_kfid)
        origin = int(b.get("origin", 3))
        msg: dict[str, Any] = {
            "seq": len(st.kf_messages),
            "msgid": new_id("kfmsg", 24),
            "open_kfid": open_kfid,
            "external_userid": b["external_userid"],
            "send_time": st.now(),
            "origin": origin,
        }
        if origin == 4:
            msg.update(
                msgtype="event",
                event={
                    "event_type": b.get("event_type", "enter_session"),
                    "open_kfid": open_kfid,
                    "external_userid": b["external_userid"],
                    "welcome_code": secrets.token_hex(8),
                },
            )
        else:
            msg.update(
                msgtype="text", text={"content": b["text"]}, servicer_userid=b.get("servicer_userid", "")
            )
        st.kf_messages.append(msg)
        token = "ENC" + secrets.token_urlsafe(32)
        st.kf_tokens[token] = st.now() + 600  # the callback Token lives 10 minutes (§2.4)
        emitter.emit(cb.kf_msg_or_event(corp, st.now(), token, open_kfid), st.now())
        return {"msgid": msg["msgid"], "token": token}

    @action("confirm_mass_send")
    def confirm_mass_send(b: dict[str, Any]) -> dict[str, Any]:
        """The employee taps send in 群发助手: results become 1 (sent) or 3 (over the monthly quota)."""
        ms = st.mass_sends[b["msgid"]]
        over = set(b.get("over_quota") or [])
        for r in ms["results"]:
            if b.get("userid") in (None, r["userid"]):
                r.update(status=3 if r["target"] in over else 1, send_time=st.now())
        return {"results": ms["results"]}

    @action("emit")
    def emit(b: dict[str, Any]) -> dict[str, Any]:
        env = emitter.emit(b["xml"], st.now())
        return {"msg_signature": env.msg_signature, "timestamp": env.timestamp, "nonce": env.nonce}

    @action("app_text")
    def app_text(b: dict[str, Any]) -> dict[str, Any]:
        msg_id = secrets.randbelow(2**63)
        emitter.emit(
            cb.text_message(
                corp, st.now(), b["userid"], b["content"], msg_id, int(b.get("agent_id", 1000002))
            ),
            st.now(),
        )
        return {"msg_id": str(msg_id)}

    @action("delete_user")
    def delete_user(b: dict[str, Any]) -> dict[str, Any]:
        """The employee leaves: status 5 (离职), customers become unassigned, change_contact fires."""
        emp = st.employees[b["userid"]]
        emp.update(status=5, dimission_time=st.now())
        emitter.emit(cb.change_contact(corp, st.now(), "delete_user", b["userid"]), st.now())
        return {"ok": True}

    @action("oauth_code")
    def oauth_code(b: dict[str, Any]) -> dict[str, Any]:
        code = secrets.token_urlsafe(32)
        entry: dict[str, Any] = {"issued_at": st.now(), "used": False}
        if b.get("userid"):
            entry["userid"] = b["userid"]
        else:
            entry.update(
                openid=b.get("openid") or "o" + secrets.token_hex(12),
                external_userid=b.get("external_userid"),
            )
        st.oauth_codes[code] = entry
        return {"code": code}
