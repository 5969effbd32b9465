"""Fuzzing the sidebar API (/sidebar/api/…) and enumerating ids: no 5xx, no change on refusal, no peeking.

WangFang follows customer A and owns task A; ZhaoLei follows customer B (“秘密客户”) and owns task B.
Hypothesis drives every endpoint with random path ids, queries and bodies, under a valid session, a session
without or with a wrong CSRF token, no session, and forged sessions. Any refusal leaves the database and the
queues exactly as they were; nothing about customer B ever reaches WangFang, whatever id she puts in a URL.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import select

from bot.models import Customer, CustomerTag, Outbox, TimelineEntry
from bot.queues import QUEUE_NAMES, get_queue
from bot.services import Services
from bot.sop.models import SopTask
from tests.conftest import SimHarness
from tests.sidebar.conftest import add_customer, add_task, csrf_of, login, sidebar_settings  # noqa: F401 - fixture

CI = bool(os.environ.get("CI"))
EXAMPLES = int(os.environ.get("SOPBOT_FUZZ_EXAMPLES", "150" if CI else "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not CI,
                suppress_health_check=list(HealthCheck))
SECRET_NAME = "秘密客户"
COOKIE = "sopbot_sidebar"

pytestmark = pytest.mark.usefixtures("sidebar_settings")


class World:
    def __init__(self, services: Services, sim: SimHarness, client: Any) -> None:
        self.ext_a = add_customer(services, sim, "WangFang", "周杰")
        self.ext_b = add_customer(services, sim, "ZhaoLei", SECRET_NAME)
        self.task_a = add_task(services, self.ext_a, "WangFang", "newcust.intro")
        self.task_b = add_task(services, self.ext_b, "ZhaoLei", "newcust.intro", step_id="d8")
        assert login(client, sim, "WangFang").status_code == 302
        cookie = client.get_cookie(COOKIE, path="/sidebar")
        assert cookie is not None
        self.cookie = cookie.value
        self.csrf = csrf_of(client)


def snapshot(services: Services) -> str:
    """Everything a sidebar call may change: tags, tasks, timeline, outbox, customers, queued jobs."""
    with services.transaction() as s:
        state = {
            "tags": s.execute(select(CustomerTag.customer_id, CustomerTag.group_name, CustomerTag.name,
                                     CustomerTag.removed_at).order_by(CustomerTag.id)).all(),
            "tasks": s.execute(select(SopTask.id, SopTask.state, SopTask.completed_by).order_by(SopTask.id)).all(),
            "timeline": s.execute(select(TimelineEntry.id).order_by(TimelineEntry.id)).all(),
            "outbox": s.execute(select(Outbox.id, Outbox.status).order_by(Outbox.id)).all(),
            "customers": s.execute(select(Customer.id, Customer.stage, Customer.score).order_by(Customer.id)).all(),
        }
    jobs = [get_queue(services.redis, q).count for q in QUEUE_NAMES]
    return hashlib.sha256(repr((state, jobs)).encode()).hexdigest()


# -- strategies ------------------------------------------------------------------------------------

nasty_text = st.text(max_size=80) | st.sampled_from(["\x00", "a\x00b", "../../etc", "%", "'; DROP TABLE x;--",
                                                     "9" * 30, "-1", "0", " ", "中文", "\u202e"])
LIBRARY_TAGS = ["意向程度:高", "行业:制造业", "来源:直播", "没有:这个", "a:b", ":", "无冒号", ""]
json_leaf = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | nasty_text
json_values = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
tag_lists = st.lists(st.sampled_from(LIBRARY_TAGS) | nasty_text, max_size=5) | json_values
objects = st.fixed_dictionaries({}, optional={"add": tag_lists, "remove": tag_lists, "note": json_values,
                                              "reason": json_values, "url": json_values})


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes | None, str | None]:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return None, None
    if kind == 1:
        return json.dumps(draw(objects), ensure_ascii=False).encode(), "application/json"
    if kind == 2:
        return json.dumps(draw(json_values)).encode(), "application/json"
    return draw(st.binary(max_size=300)), draw(st.sampled_from(["application/json", "text/plain", None,
                                                                 "application/x-www-form-urlencoded"]))


ENDPOINTS = [
    ("GET", "/sidebar/api/me"), ("GET", "/sidebar/api/jssdk"), ("GET", "/sidebar/api/tasks"),
    ("GET", "/sidebar/api/customers/{ext}"), ("POST", "/sidebar/api/customers/{ext}/tags"),
    ("GET", "/sidebar/api/scripts"), ("POST", "/sidebar/api/customers/{ext}/scripts/{script}/messages"),
    ("POST", "/sidebar/api/tasks/{task}/messages"), ("POST", "/sidebar/api/tasks/{task}/done"),
    ("POST", "/sidebar/api/tasks/{task}/skip"), ("GET", "/sidebar/api/groups/{chat}"),
]
SESSIONS = ["valid", "no_csrf", "wrong_csrf", "none", "garbage", "other_key", "tampered"]


def _set_session(client: Any, world: World, mode: str) -> dict[str, str]:
    client.delete_cookie(COOKIE, path="/sidebar")
    value = {
        "valid": world.cookie, "no_csrf": world.cookie, "wrong_csrf": world.cookie, "none": None,
        "garbage": "not.a.session", "tampered": world.cookie[:-2] + ("AA" if world.cookie[-2:] != "AA" else "BB"),
        "other_key": URLSafeTimedSerializer("someone-elses-secret-key", salt="sidebar-session").dumps(
            {"u": "ZhaoLei", "c": world.csrf}),
    }[mode]
    if value is not None:
        client.set_cookie(COOKIE, value, path="/sidebar")
    if mode == "no_csrf":
        return {}
    return {"X-CSRF-Token": world.csrf if mode != "wrong_csrf" else world.csrf[::-1]}


@pytest.mark.parametrize("mode", SESSIONS)
def test_fuzz_every_sidebar_endpoint(client: Any, services: Services, sim: SimHarness, mode: str) -> None:
    world = World(services, sim, client)
    statuses: set[int] = set()

    @settings(FUZZ, max_examples=EXAMPLES if mode == "valid" else max(EXAMPLES // 3, 10))
    @given(endpoint=st.sampled_from(ENDPOINTS),
           ext=st.sampled_from([world.ext_a, world.ext_b, "wmNOSUCHCUSTOMER"]) | nasty_text,
           task=st.sampled_from([world.task_a, world.task_b, 0, 10**6]).map(str) | nasty_text
           | st.integers(-2**70, 2**70).map(str),
           script=st.sampled_from(["newcust.intro", "newcust.guide", "nosuch.script"]) | nasty_text,
           chat=st.sampled_from(["wrNOSUCHGROUP"]) | nasty_text,
           query=st.dictionaries(st.sampled_from(["q", "customer", "url", "x"]), nasty_text, max_size=3),
           body=bodies())
    def run(endpoint: tuple[str, str], ext: str, task: str, script: str, chat: str,
            query: dict[str, str], body: tuple[bytes | None, str | None]) -> None:
        method, template = endpoint
        path = template.format(ext=quote(ext, safe=""), task=quote(task, safe=""), script=quote(script, safe=""),
                               chat=quote(chat, safe=""))
        headers = _set_session(client, world, mode)
        before = snapshot(services)
        data, content_type = body
        resp = client.open(path, method=method, query_string=query, data=data, content_type=content_type,
                           headers=headers)
        status = resp.status_code
        statuses.add(status)
        text = resp.get_data(as_text=True)
        assert status < 500, (method, path, mode, query, data, text[:300])
        assert SECRET_NAME not in text and world.ext_b not in text, (method, path, text[:300])
        if mode in ("none", "garbage", "other_key", "tampered"):
            nul = status == 400 and resp.is_json and "空字符" in resp.get_json()["error"]  # refused before auth
            assert status in (401, 404, 405) or nul, (method, path, mode, status)
        if method == "POST" and mode in ("no_csrf", "wrong_csrf") and status not in (400, 404, 405):
            assert status == 403 and "请求校验失败" in resp.get_json()["error"]
        if status >= 400:
            assert snapshot(services) == before, (method, path, mode, status, text[:300])
            if path.startswith("/sidebar/api/") and status not in (404, 405) and resp.is_json:
                assert resp.get_json().get("error"), "a refusal says why"
        if status < 300 and mode == "valid":
            # Anything accepted was about WangFang's own customer or task.
            if "{ext}" in template:
                assert ext == world.ext_a, (method, path)
            if "{task}" in template:  # task_a, or a task the pipeline planned for WangFang's customer (SOP)
                with services.transaction() as s:
                    owner = s.execute(select(SopTask.owner_userid, SopTask.external_userid)
                                      .where(SopTask.id == int(task))).one_or_none()
                assert owner is not None and tuple(owner) == ("WangFang", world.ext_a), (method, path, owner)

    run()
    if mode == "valid":  # the fuzz reached both sides of the authorization check
        assert {200, 403} <= statuses, statuses
    elif mode in ("no_csrf", "wrong_csrf"):
        assert 403 in statuses, statuses
    else:
        assert 401 in statuses, statuses


# -- authorization by enumerating ids --------------------------------------------------------------

def test_an_employee_cannot_reach_another_employees_customer_or_task_by_changing_ids(
        client: Any, services: Services, sim: SimHarness) -> None:
    world = World(services, sim, client)
    headers = {"X-CSRF-Token": world.csrf}
    with services.transaction() as s:
        every_customer = list(s.scalars(select(Customer.external_userid)))
        every_task = list(s.scalars(select(SopTask.id)))
        others_tasks = list(s.scalars(select(SopTask.id).where(SopTask.owner_userid != "WangFang")))
    assert world.ext_b in every_customer and world.task_b in every_task
    before = snapshot(services)
    others = [e for e in every_customer if e != world.ext_a]
    for ext in others + ["wmNOSUCHCUSTOMER"]:
        q = quote(ext, safe="")
        calls = [
            client.get(f"/sidebar/api/customers/{q}"),
            client.get("/sidebar/api/scripts", query_string={"q": "", "customer": ext}),
            client.post(f"/sidebar/api/customers/{q}/tags", json={"add": ["意向程度:高"]}, headers=headers),
            client.post(f"/sidebar/api/customers/{q}/tags", json={"remove": ["来源:直播"]}, headers=headers),
            client.post(f"/sidebar/api/customers/{q}/scripts/newcust.guide/messages", headers=headers),
        ]
        for resp in calls:
            assert resp.status_code == 403, (ext, resp.request.path, resp.status_code)
            assert "不是该客户的跟进人" in resp.get_json()["error"]
            assert SECRET_NAME not in resp.get_data(as_text=True)
    mine = {t["id"] for t in client.get("/sidebar/api/tasks").get_json()["items"]}
    assert world.task_b not in mine and world.task_a in mine
    assert world.task_b in others_tasks
    for task_id in others_tasks + [max(every_task) + 1, max(every_task) + 1000, 2**63, 10**30]:  # beyond BIGINT
        for action in ("messages", "done", "skip"):
            resp = client.post(f"/sidebar/api/tasks/{task_id}/{action}", json={"reason": "x"}, headers=headers)
            assert resp.status_code == 403 and "不是您的任务" in resp.get_json()["error"], (task_id, action)
            assert SECRET_NAME not in resp.get_data(as_text=True)
    assert snapshot(services) == before
    # The task page lists only her own; her customer stays readable (the refusals above were not blanket).
    page = client.get("/sidebar/tasks").get_data(as_text=True)
    assert SECRET_NAME not in page
    assert client.get(f"/sidebar/api/customers/{world.ext_a}").get_json()["customer"]["name"] == "周杰"


def test_the_sidebar_session_opens_neither_the_dashboard_nor_the_admin_api(
        client: Any, services: Services, sim: SimHarness) -> None:
    world = World(services, sim, client)
    # The same signed value under the dashboard's cookie name, and as a bearer token.
    client.set_cookie("sopbot_dashboard", world.cookie, path="/dashboard")
    assert client.get("/dashboard/").status_code == 401
    assert client.get("/dashboard/funnel.csv").status_code == 401
    assert client.get("/api/v1/customers", headers={"Authorization": f"Bearer {world.cookie}"}).status_code == 401
    assert client.get(f"/api/v1/customers/{world.ext_b}",
                      headers={"Authorization": f"Bearer {world.csrf}"}).status_code == 401


# -- regressions the fuzzing found -----------------------------------------------------------------

def test_a_body_that_is_not_a_json_object_is_400_and_changes_nothing(client: Any, services: Services,
                                                                      sim: SimHarness) -> None:
    # Was a 500: `request.get_json() or {}` handed a list or a string to `.get`.
    world = World(services, sim, client)
    headers = {"X-CSRF-Token": world.csrf}
    before = snapshot(services)
    for path in (f"/sidebar/api/tasks/{world.task_a}/skip", f"/sidebar/api/tasks/{world.task_a}/done",
                 f"/sidebar/api/customers/{world.ext_a}/tags"):
        for body in ([1], ["意向程度:高"], "x", 3, True):
            resp = client.post(path, json=body, headers=headers)
            assert resp.status_code == 400 and resp.get_json()["error"] == "请求内容应为 JSON 对象。", (path, body)
        resp = client.post(path, data=b"\xff\xfe", content_type="application/json", headers=headers)
        assert resp.status_code == 400
    assert snapshot(services) == before
    # An empty body still means "no options" (the page sends {} but other clients may send nothing).
    assert client.post(f"/sidebar/api/tasks/{world.task_a}/done", headers=headers).status_code == 200


def test_nul_characters_are_400_before_any_view_runs(client: Any, services: Services, sim: SimHarness) -> None:
    # Was a 500 on PostgreSQL: text columns cannot hold NUL, so the lookup itself failed.
    from tests.conftest import ADMIN

    world = World(services, sim, client)
    headers = {"X-CSRF-Token": world.csrf}
    before = snapshot(services)
    sidebar = [
        client.get("/sidebar/api/customers/a%00b"),
        client.get("/sidebar/api/scripts", query_string={"customer": "a\x00b"}),
        client.get("/sidebar/api/groups/wr%00"),
        client.post(f"/sidebar/api/customers/{world.ext_a}/tags", json={"add": ["意向程度:高"], "note": "a\x00"},
                    headers=headers),
        client.post(f"/sidebar/api/tasks/{world.task_a}/skip", json={"reason": "出差\x00"}, headers=headers),
        client.post(f"/sidebar/api/tasks/{world.task_a}/skip", json={"x\x00": 1}, headers=headers),
    ]
    for resp in sidebar:
        assert resp.status_code == 400 and "空字符" in resp.get_json()["error"], resp.request.path
    api = [client.get("/api/v1/customers/a%00b", headers=ADMIN),
           client.get("/api/v1/customers", query_string={"q": "a\x00"}, headers=ADMIN)]
    for resp in api:
        assert resp.status_code == 400 and "NUL" in resp.get_json()["error"]
    assert client.get("/dashboard/", query_string={"from": "2026\x00"}).status_code == 400
    assert snapshot(services) == before
