from __future__ import annotations

import hashlib
import io
import multiprocessing
from collections.abc import Callable
from typing import Any

import pytest
import redis

from bot.wecom.client import (
    RedisSemaphore,
    WeComClient,
    WeComConfigError,
    WeComError,
    WeComNotFound,
    WeComTokenError,
    WeComTransientError,
)
from tests.wecom.conftest import APP_SECRET, Sim, redis_url

Factory = Callable[..., WeComClient]


def codes(sim: Sim, path: str) -> list[int]:
    return [c["errcode"] for c in sim.calls(path)]


# -- access_token ------------------------------------------------------------------------------------
def test_token_is_cached_in_redis_and_shared_by_two_clients(
    sim: Sim, make_client: Factory, redis_conn: redis.Redis
) -> None:
    a, b = make_client(), make_client()
    assert a.get_user("LiMing")["name"] == "李明"
    assert b.get_user("ZhaoLei")["name"] == "赵磊"
    assert len(sim.calls("gettoken")) == 1
    key = f"sopbot:wecom:token:{sim.state.corp_id}:{hashlib.sha1(APP_SECRET.encode()).hexdigest()[:12]}"
    assert redis_conn.hget(key, "value") in {t.encode() for t in sim.state.tokens}
    assert 0 < redis_conn.ttl(key) <= 7200


def _process_worker(url: str, api_base: str, corp_id: str, barrier: Any, out: Any) -> None:
    client = WeComClient(corp_id, APP_SECRET, redis.Redis.from_url(url), api_base=api_base)
    barrier.wait()
    out.put([client.get_user(u)["userid"] for u in ("LiMing", "ZhaoLei", "WangFang")])


def test_two_os_processes_fetch_the_token_once(sim: Sim, redis_conn: redis.Redis) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_worker,
            args=(redis_url(redis_conn), sim.api_base, sim.state.corp_id, barrier, out),
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert results == [["LiMing", "ZhaoLei", "WangFang"]] * 2
    assert len(sim.calls("gettoken")) == 1
    assert codes(sim, "user/get") == [0] * 6


def test_token_refreshed_before_expiry_by_the_clock(sim: Sim, make_client: Factory) -> None:
    client = make_client()
    client.get_user("LiMing")
    sim.state.advance(7200 - 200)  # inside the 5-minute safety margin
    client.get_user("LiMing")
    assert len(sim.calls("gettoken")) == 2
    assert codes(sim, "user/get") == [0, 0]  # refreshed proactively, never sent an expired token


def test_expired_token_answer_42001_refreshes_once_and_retries(sim: Sim, make_client: Factory) -> None:
    import time

    client = make_client(clock=time.time)  # the client cannot see the sim clock jump
    client.get_user("LiMing")
    sim.state.advance(7201)
    assert client.get_user("LiMing")["userid"] == "LiMing"
    assert codes(sim, "user/get") == [0, 42001, 0]
    assert len(sim.calls("gettoken")) == 2


@pytest.mark.parametrize("code", [42001, 40014, 40001])
def test_injected_token_error_invalidates_and_retries(sim: Sim, make_client: Factory, code: int) -> None:
    client = make_client()
    client.get_user("LiMing")
    sim.control("faults", {"next": {"user/get": [code]}})
    assert client.get_user("LiMing")["userid"] == "LiMing"
    assert codes(sim, "user/get") == [0, code, 0]
    assert len(sim.calls("gettoken")) == 2


def test_token_error_twice_is_raised_typed(sim: Sim, make_client: Factory) -> None:
    sim.control("faults", {"next": {"user/get": [42001, 42001]}})
    with pytest.raises(WeComTokenError) as exc:
        make_client().get_user("LiMing")
    assert exc.value.errcode == 42001


def test_invalidate_keeps_a_token_another_process_already_replaced(sim: Sim, make_client: Factory) -> None:
    client = make_client()
    fresh = client.tokens.get()
    assert client.tokens.invalidate("an-older-token") is False
    assert client.tokens.get() == fresh


def test_transient_faults_at_20_percent_all_calls_succeed(
    sim: Sim, make_client: Factory, sleeps: list[float]
) -> None:
    sim.control("faults", {"rate": 0.2, "codes": [-1, 45009, 45033, 42001], "seed": 1})
    client = make_client()
    users = ["LiMing", "ZhaoLei", "WangFang", "ChenJing", "LiuYang"]
    for i in range(60):
        assert client.get_user(users[i % 5])["userid"] == users[i % 5]
    assert len(client.get_corp_tag_list()) == 4
    rows = list(client.batch_get_by_user(users, limit=3))
    assert len(rows) == len(sim.state.relations)
    injected = [c for c in sim.calls() if c["errcode"] != 0]
    assert {c["errcode"] for c in injected} == {-1, 45009, 45033, 42001}
    assert sleeps and all(0 < s <= 30 for s in sleeps)  # backoff happened, bounded


def test_transient_errors_give_up_after_max_attempts(
    sim: Sim, make_client: Factory, sleeps: list[float]
) -> None:
    sim.control("faults", {"rate": 1.0, "codes": [-1], "seed": 3, "paths": ["user/get"]})
    with pytest.raises(WeComTransientError) as exc:
        make_client(max_attempts=4).get_user("LiMing")
    assert exc.value.errcode == -1
    assert codes(sim, "user/get") == [-1] * 4
    assert len(sleeps) == 3
    assert sleeps[1] > sleeps[0] / 2  # exponential-ish with jitter in [d/2, d]


def test_network_failure_is_transient(make_client: Factory) -> None:
    client = make_client(api_base="http://127.0.0.1:9/cgi-bin/", max_attempts=2, timeout=1)
    with pytest.raises(WeComTransientError) as exc:
        client.get_user("LiMing")
    assert exc.value.errcode is None


# -- permanent errors ----------------------------------------------------------------------------------
def test_permanent_errors_are_typed(sim: Sim, make_client: Factory) -> None:
    client = make_client()
    with pytest.raises(WeComNotFound) as nf:
        client.get_external_contact("not-an-id")
    assert nf.value.errcode == 40096 and nf.value.path == "externalcontact/get"
    some_customer = next(e for (u, e) in sim.state.relations if u == "LiMing")
    with pytest.raises(WeComNotFound) as rel:
        client.mark_tag("SunLi", some_customer, add_tag=[next(iter(sim.state.tag_index()))])
    assert rel.value.errcode == 84061
    with pytest.raises(WeComConfigError) as bad_secret:
        make_client(secret="wrong").get_user("LiMing")
    assert (bad_secret.value.errcode, bad_secret.value.path) == (40001, "gettoken")
    with pytest.raises(WeComConfigError) as bad_corp:
        make_client(corp_id="wwnotmycorp0000000").get_user("LiMing")
    assert bad_corp.value.errcode == 40013
    with pytest.raises(WeComError) as code:
        client.auth_getuserinfo("never-issued")
    assert code.value.errcode == 40029 and not isinstance(code.value, WeComTransientError)
    assert len([c for c in sim.calls("externalcontact/get")]) == 1  # permanent errors are not retried


def test_untrusted_ip_is_a_config_error_naming_the_ip(sim: Sim, make_client: Factory) -> None:
    sim.control("config", {"ip_trusted": {"1000002": False}})
    with pytest.raises(WeComConfigError) as exc:
        make_client().get_user("LiMing")
    assert exc.value.errcode == 60020
    assert "from ip: 127.0.0.1" in exc.value.errmsg


# -- limiter and concurrency ---------------------------------------------------------------------------
def test_shared_rate_limiter_spreads_calls_over_windows(
    sim: Sim, make_client: Factory, sleeps: list[float]
) -> None:
    sim.control("faults", {"rate_limits": {"user/get": 3}})  # WeCom side answers 45009 above 3/min
    a, b = make_client(rate_limits={"user/get": 3}), make_client(rate_limits={"user/get": 3})
    for i in range(7):
        (a if i % 2 else b).get_user("LiMing")
    calls = sim.calls("user/get")
    assert [c["errcode"] for c in calls] == [0] * 7  # the shared limiter kept both clients under it
    per_minute: dict[int, int] = {}
    for c in calls:
        per_minute[c["time"] // 60] = per_minute.get(c["time"] // 60, 0) + 1
    assert max(per_minute.values()) == 3 and len(per_minute) == 3
    assert len(sleeps) == 2


def test_without_limiter_the_simulator_answers_45009(sim: Sim, make_client: Factory) -> None:
    sim.control("faults", {"rate_limits": {"user/get": 2}})
    client = make_client(rate_limits={}, max_attempts=1)
    client.get_user("LiMing")
    client.get_user("LiMing")
    with pytest.raises(WeComTransientError) as exc:
        client.get_user("LiMing")
    assert exc.value.errcode == 45009


def test_redis_semaphore_limits_and_expires(redis_conn: redis.Redis) -> None:
    now = [1000.0]
    sem = RedisSemaphore(
        redis_conn,
        "sopbot:test:sem:" + hashlib.sha1(str(id(now)).encode()).hexdigest(),
        limit=2,
        lease=10,
        clock=lambda: now[0],
    )
    a, b = sem.try_acquire(), sem.try_acquire()
    assert a and b and sem.try_acquire() is None
    sem.release(a)
    c = sem.try_acquire()
    assert c is not None and sem.try_acquire() is None
    now[0] += 11  # holders that crashed lose their slot when the lease runs out
    assert sem.try_acquire() is not None
    redis_conn.delete(sem.key)


def test_observer_sees_every_exchange(sim: Sim, make_client: Factory) -> None:
    seen: list[tuple[str, int | None]] = []
    sim.control("faults", {"next": {"user/get": [-1]}})
    make_client(observer=lambda path, code, secs: seen.append((path, code))).get_user("LiMing")
    assert seen == [("gettoken", 0), ("user/get", -1), ("user/get", 0)]


# -- welcome message -------------------------------------------------------------------------------------
def test_welcome_code_once_within_20_seconds(sim: Sim, make_client: Factory) -> None:
    client = make_client()
    first = sim.control(
        "actions/add_customer", {"userid": "WangFang", "name": "新客户甲", "state": "webinar"}
    )
    client.send_welcome_msg(first["welcome_code"], "您好，我是王芳")
    with pytest.raises(WeComError) as again:
        client.send_welcome_msg(first["welcome_code"], "您好")
    assert again.value.errcode == 41051
    late = sim.control("actions/add_customer", {"userid": "WangFang", "name": "新客户乙"})
    sim.state.advance(21)
    with pytest.raises(WeComError) as expired:
        client.send_welcome_msg(late["welcome_code"], "您好")
    assert expired.value.errcode == 41051
    busy = sim.control("actions/add_customer", {"userid": "WangFang", "name": "新客户丙"})
    sim.control("config", {"welcome_busy_once": [busy["welcome_code"]]})
    with pytest.raises(WeComError) as contention:
        client.send_welcome_msg(busy["welcome_code"], "您好")
    assert contention.value.errcode == 41096
    client.send_welcome_msg(busy["welcome_code"], "您好")  # 41096 may be retried
    assert sim.state.welcome_codes[first["welcome_code"]]["text"] == {"content": "您好，我是王芳"}


# -- paging ------------------------------------------------------------------------------------------------
def test_batch_get_by_user_follows_cursor(sim: Sim, make_client: Factory) -> None:
    client = make_client()
    users = ["LiMing", "WangFang"]
    expected = {(u, e) for (u, e) in sim.state.relations if u in users}
    rows = list(client.batch_get_by_user(users, limit=2))
    assert {(r["follow_info"]["userid"], r["external_contact"]["external_userid"]) for r in rows} == expected
    assert len(rows) == len(expected)
    assert len(sim.calls("externalcontact/batch/get_by_user")) == -(-len(expected) // 2)
    tagged = next(r for r in rows if r["follow_info"]["tag_id"])
    assert all(t.startswith("et") for t in tagged["follow_info"]["tag_id"])


def test_transfer_results_page_and_complete_after_24h(sim: Sim, make_client: Factory) -> None:
    client = make_client()
    sim.control("config", {"page_sizes": {"transfer_result": 2}})
    customers = sorted(e for (u, e) in sim.state.relations if u == "ZhaoLei")[:5]
    assert len(customers) == 5
    sim.control("config", {"refusing_customers": [customers[0]]})
    started = sim.state.now()
    assert client.transfer_customer("ZhaoLei", "LiuYang", customers) == {e: 0 for e in customers}
    rows = {r["external_userid"]: r for r in client.transfer_result("ZhaoLei", "LiuYang")}
    assert len(sim.calls("externalcontact/transfer_result")) == 3  # 5 rows, 2 per page
    assert rows[customers[0]]["status"] == 3
    assert {rows[e]["status"] for e in customers[1:]} == {2}
    assert rows[customers[1]]["takeover_time"] == started + 86400
    fail = [e for e in sim.outbox() if "transfer_fail" in e["xml"]]
    assert len(fail) == 1 and "<FailReason><![CDATA[customer_refused]]></FailReason>" in fail[0]["xml"]

    sim.state.advance(86400)
    final = {r["external_userid"]: r["status"] for r in client.transfer_result("ZhaoLei", "LiuYang")}
    assert final == {customers[0]: 3, **{e: 1 for e in customers[1:]}}
    moved = client.get_external_contact(customers[1])
    assert [f["userid"] for f in moved["follow_user"]] == ["LiuYang"]
    assert client.transfer_customer("ZhaoLei", "LiuYang", [customers[1]]) == {customers[1]: 84061}


def test_resigned_handover_flow(sim: Sim, make_client: Factory) -> None:
    client = make_client()
    sim.control("actions/delete_user", {"userid": "WangFang"})
    unassigned = list(client.get_unassigned_list(page_size=3))
    mine = {r["external_userid"] for r in unassigned if r["handover_userid"] == "WangFang"}
    assert mine == {e for (u, e) in sim.state.relations if u == "WangFang"}
    chosen = sorted(mine)[:2]
    assert client.resigned_transfer_customer("WangFang", "ZhaoLei", chosen) == {e: 0 for e in chosen}
    assert {r["status"] for r in client.resigned_transfer_result("WangFang", "ZhaoLei")} == {2}
    sim.state.advance(86400)
    assert {r["status"] for r in client.resigned_transfer_result("WangFang", "ZhaoLei")} == {1}
    assert len(list(client.get_unassigned_list())) == len(unassigned) - 2
    assert "delete_user" in sim.outbox()[0]["xml"]


# -- the rest of the typed surface ---------------------------------------------------------------------
def test_contacts_and_tags(sim: Sim, make_client: Factory) -> None:
    client = make_client()
    assert {d["name"] for d in client.list_departments()} >= {"销售部", "客户成功部"}
    assert {u["userid"] for u in client.list_users(2)} == {"LiMing", "ZhaoLei", "WangFang"}
    assert "SunLi" not in client.get_follow_user_list()
    eid = client.list_external_contacts("LiMing")[0]
    group = client.add_corp_tag([{"name": "已参加演示"}], group_name="客户行为")
    tag_id = group["tag"][0]["id"]
    client.mark_tag("LiMing", eid, add_tag=[tag_id])
    client.remark("LiMing", eid, remark="重点客户", remark_mobiles=[])
    detail = client.get_external_contact(eid)
    follow = next(f for f in detail["follow_user"] if f["userid"] == "LiMing")
    assert follow["remark"] == "重点客户"
    assert {"group_name": "客户行为", "tag_name": "已参加演示", "tag_id": tag_id, "type": 1} in follow["tags"]
    client.edit_corp_tag(tag_id, name="已看演示")
    assert client.get_corp_tag_list(group_ids=[group["group_id"]])[0]["tag"][0]["name"] == "已看演示"
    client.del_corp_tag(tag_ids=[tag_id])
    assert group["group_id"] not in {g["group_id"] for g in client.get_corp_tag_list()}


def test_mass_send_groups_and_app_messages(sim: Sim, make_client: Factory) -> None:
    client = make_client()
    mine = sorted(e for (u, e) in sim.state.relations if u == "LiMing")[:3]
    res = client.add_msg_template(
        {
            "chat_type": "single",
            "sender": "LiMing",
            "external_userid": mine + ["wmNobody"],
            "text": {"content": "新品发布会邀请"},
        }
    )
    assert res["fail_list"] == ["wmNobody"]
    assert client.get_groupmsg_task(res["msgid"]) == [{"userid": "LiMing", "status": 0, "send_time": 0}]
    sim.control("actions/confirm_mass_send", {"msgid": res["msgid"], "over_quota": [mine[0]]})
    sent = {
        r["external_userid"]: r["status"] for r in client.get_groupmsg_send_result(res["msgid"], "LiMing")
    }
    assert sent == {mine[0]: 3, mine[1]: 1, mine[2]: 1}

    chats = list(client.groupchat_list(limit=1))
    assert len(chats) == 3 and len(sim.calls("externalcontact/groupchat/list")) == 3
    vip = next(
        c
        for c in (client.groupchat_get(c["chat_id"], need_name=True) for c in chats)
        if c["owner"] == "LiMing"
    )
    assert any(m["name"] == "黄磊" for m in vip["member_list"])
    assert client.groupchat_onjob_transfer([vip["chat_id"]], "ZhaoLei") == []
    assert client.groupchat_transfer([vip["chat_id"]], "LiMing")[0]["errcode"] == 90500

    out = client.send_app_message(["LiMing", "ghost"], text="您有 3 个待办")
    assert out["invaliduser"] == "ghost"
    client.send_app_message(
        ["ZhaoLei"], textcard={"title": "今日待办", "description": "3 个任务", "url": "https://x/t"}
    )
    assert sim.state.app_messages[-1]["content"]["btntxt"] == "详情"
    with pytest.raises(WeComError) as none_valid:
        client.send_app_message(["ghost"], text="x")
    assert none_valid.value.errcode == 81013


def test_kf_oauth_tickets_media_and_ips(sim: Sim, make_client: Factory) -> None:
    client = make_client()
    kfid = next(iter(sim.state.kf_accounts))
    for text in ("你好", "请问价格", "需要报价"):
        sent = sim.control(
            "actions/kf_message", {"open_kfid": kfid, "external_userid": "wmKfUser1", "text": text}
        )
    page = client.kf_sync_msg(token=sent["token"], open_kfid=kfid, limit=2)
    assert page["has_more"] == 1 and [m["text"]["content"] for m in page["msg_list"]] == ["你好", "请问价格"]
    rest = client.kf_sync_msg(cursor=page["next_cursor"], open_kfid=kfid)
    assert rest["has_more"] == 0 and [m["origin"] for m in rest["msg_list"]] == [3]
    sim.state.advance(3 * 86400 + 1)
    assert client.kf_sync_msg(open_kfid=kfid)["msg_list"] == []  # 3-day retention

    code = sim.control("actions/oauth_code", {"userid": "ChenJing"})["code"]
    assert client.auth_getuserinfo(code) == {"userid": "ChenJing"}
    with pytest.raises(WeComError):
        client.auth_getuserinfo(code)  # single use
    legacy = sim.control("actions/oauth_code", {"userid": "LiuYang"})["code"]
    assert client.auth_getuserinfo(legacy, legacy=True) == {"userid": "LiuYang"}

    assert client.get_jsapi_ticket()[0].startswith("simticket_corp")
    assert client.get_agent_ticket()[1] == 7200
    media = client.upload_media("image", ("poster.png", io.BytesIO(b"\x89PNG...")))
    assert media["media_id"] and media["created_at"].isdigit()
    assert client.get_callback_ip()
