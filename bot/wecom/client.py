"""WeCom server API client (企业微信服务端API) shared by every sopbot process.

Built on wechatpy's work `WeChatClient`: its wrapped calls (`self.user.get`,
`self.external_contact.mark_tag`, …) are used where they fit, and every request — wrapped or
not — goes through `WeComClient._request`, which adds what a multi-process service needs:

* one access_token per (corp, secret) in Redis, refreshed single-flight under a Redis lock
  (gettoken is frequency-limited and "do not call frequently", PROTOCOL.md §3.1, §4.2);
* refresh-once-and-retry on 40014/42001/40001 (invalidate only the token that failed, so a
  slow process cannot throw away a token another process just fetched);
* a Redis fixed-window limiter per (corp, API path) and a per-corp concurrency semaphore,
  because WeCom's limits are per corp, not per process (45009 frequency, 45033 concurrency);
* bounded exponential backoff with jitter for transient failures, typed errors for the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import redis as redis_lib
import requests
from wechatpy.work import WeChatClient

from bot.observability import WECOM_CALLS, api_path_label

__all__ = [
    "DEFAULT_API_BASE",
    "WeComClient",
    "WeComError",
    "WeComTransientError",
    "WeComTokenError",
    "WeComConfigError",
    "WeComNotFound",
    "SharedCredential",
    "RedisRateLimiter",
    "RedisSemaphore",
    "error_for",
]

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://qyapi.weixin.qq.com/cgi-bin/"
Observer = Callable[[str, "int | None", float], None]

TRANSIENT_CODES = frozenset({-1, 6000, 45009, 45033})
TOKEN_CODES = frozenset({40014, 42001, 40001, 41001})
CONFIG_CODES = frozenset({40013, 40091, 48002, 48009, 50001, 50003, 60011, 60020, 84074, 301002})
NOT_FOUND_CODES = frozenset({40096, 84061, 60111})
# WeCom's documented per-corp per-API limit is 10 000/min, older pages say 1 000–2 000/min; the
# lower number is the safe default when several corps share an egress IP (PROTOCOL.md §4.2).
DEFAULT_RATE_LIMITS: Mapping[str, int] = {"*": 1000}


# -- errors ------------------------------------------------------------------------------------------
class WeComError(Exception):
    """A failed WeCom call; `errcode` is None for HTTP/network failures."""

    def __init__(self, errcode: int | None, errmsg: str, path: str) -> None:
        super().__init__(f"{path}: errcode={errcode} {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg
        self.path = path


class WeComTransientError(WeComError):
    """Worth retrying later: -1 busy, 45009 frequency, 45033 concurrency, 6000, HTTP 5xx, network."""


class WeComTokenError(WeComError):
    """The token kept failing after one refresh (40014/42001/40001/41001)."""


class WeComConfigError(WeComError):
    """Admin must fix something: trusted IP (60020), app scope (48002/48009), corp id/secret, domain."""


class WeComNotFound(WeComError):
    """The member/customer/relationship does not exist (40096, 84061, 60111): sync local state."""


def error_for(errcode: int | None, errmsg: str, path: str) -> WeComError:
    if path == "gettoken" and errcode in (40001, 40091):  # bad secret is config, not a stale token
        return WeComConfigError(errcode, errmsg, path)
    if errcode is None or errcode in TRANSIENT_CODES:
        return WeComTransientError(errcode, errmsg, path)
    if errcode in TOKEN_CODES:
        return WeComTokenError(errcode, errmsg, path)
    if errcode in CONFIG_CODES:
        return WeComConfigError(errcode, errmsg, path)
    if errcode in NOT_FOUND_CODES:
        return WeComNotFound(errcode, errmsg, path)
    return WeComError(errcode, errmsg, path)


# -- shared Redis primitives -------------------------------------------------------------------------
_DEL_IF_EQUAL = (
    "if redis.call('hget', KEYS[1], 'value') == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


class SharedCredential:
    """One short-lived secret (access_token, jsapi ticket) cached in Redis for all processes.

    Stored as a hash {value, expires_at}; a reader treats it as stale `margin` seconds early so
    in-flight calls never carry a token that dies mid-request. Refreshes are single-flight: one
    process holds `<key>:lock` and calls `fetch`, the others block on the lock, then read.
    """

    def __init__(
        self,
        redis: redis_lib.Redis,
        key: str,
        fetch: Callable[[], tuple[str, int]],
        *,
        clock: Callable[[], float] = time.time,
        margin: float = 300,
        lock_timeout: float = 30,
    ) -> None:
        self.redis, self.key, self.fetch, self.clock = redis, key, fetch, clock
        self.margin, self.lock_timeout = margin, lock_timeout
        self._invalidate = redis.register_script(_DEL_IF_EQUAL)

    def _cached(self) -> str | None:
        raw = {_text(k): _text(v) for k, v in self.redis.hgetall(self.key).items()}
        value, expires_at = raw.get("value"), raw.get("expires_at")
        if value and expires_at and float(expires_at) - self.margin > self.clock():
            return value
        return None

    def get(self) -> str:
        value = self._cached()
        if value:
            return value
        lock = self.redis.lock(
            f"{self.key}:lock", timeout=self.lock_timeout, blocking_timeout=self.lock_timeout
        )
        if not lock.acquire():
            raise WeComTransientError(
                None, f"timed out waiting for the refresh lock of {self.key}", "gettoken"
            )
        try:
            value = self._cached()  # someone refreshed while we waited
            if value:
                return value
            value, expires_in = self.fetch()
            pipe = self.redis.pipeline()
            pipe.hset(self.key, mapping={"value": value, "expires_at": self.clock() + expires_in})
            pipe.expire(self.key, max(1, int(expires_in)))
            pipe.execute()
            return value
        finally:
            try:
                lock.release()
            except redis_lib.exceptions.LockError:  # expired while fetching; nothing to release
                log.warning("refresh lock of %s expired before release", self.key)

    def invalidate(self, value: str) -> bool:
        """Drop the cached value only if it is still the one that failed."""
        return bool(self._invalidate(keys=[self.key], args=[value]))


class RedisRateLimiter:
    """Fixed one-minute windows per (corp, path), shared by all processes (WeCom counts per corp)."""

    def __init__(
        self,
        redis: redis_lib.Redis,
        prefix: str,
        limits: Mapping[str, int] | None = None,
        window: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis, self.prefix, self.window, self.clock = redis, prefix, window, clock
        self.limits = dict(DEFAULT_RATE_LIMITS if limits is None else limits)

    def limit_for(self, path: str) -> int | None:
        return self.limits.get(path, self.limits.get("*"))

    def acquire(self, corp_id: str, path: str) -> float:
        """0 when the call may go now, else the seconds until the next window opens."""
        limit = self.limit_for(path)
        if limit is None:
            return 0.0
        now = self.clock()
        slot = int(now // self.window)
        key = f"{self.prefix}:rl:{corp_id}:{path}:{slot}"
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, self.window * 2)
        count = int(pipe.execute()[0])
        return 0.0 if count <= limit else (slot + 1) * self.window - now


_SEM_ACQUIRE = """
redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[1])
if redis.call('zcard', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('zadd', KEYS[1], ARGV[2], ARGV[4])
  redis.call('expire', KEYS[1], ARGV[5])
  return 1
end
return 0
"""


class RedisSemaphore:
    """Counting semaphore in a sorted set; each holder has a lease so a crashed process frees its slot."""

    def __init__(
        self,
        redis: redis_lib.Redis,
        key: str,
        limit: int,
        lease: float = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis, self.key, self.limit, self.lease, self.clock = redis, key, limit, lease, clock
        self._acquire = redis.register_script(_SEM_ACQUIRE)

    def try_acquire(self) -> str | None:
        holder = uuid.uuid4().hex
        now = self.clock()
        ok = self._acquire(
            keys=[self.key], args=[now, now + self.lease, self.limit, holder, int(self.lease) + 1]
        )
        return holder if ok else None

    def release(self, holder: str) -> None:
        self.redis.zrem(self.key, holder)


# -- the client --------------------------------------------------------------------------------------
class WeComClient(WeChatClient):
    """One self-built app (自建应用) of one corp. Safe to build in every process; state is in Redis."""

    def __init__(
        self,
        corp_id: str,
        secret: str,
        redis: redis_lib.Redis,
        api_base: str | None = None,
        agent_id: int | None = None,
        timeout: float = 10,
        rate_limits: Mapping[str, int] | None = None,
        *,
        max_concurrency: int = 5,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30,
        observer: Observer | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        token_margin: float = 300,
        key_prefix: str = "sopbot:wecom",
    ) -> None:
        super().__init__(corp_id, secret, timeout=timeout, auto_retry=False)
        base = api_base or os.environ.get("WECOM_API_BASE") or DEFAULT_API_BASE
        self.API_BASE_URL = base if base.endswith("/") else base + "/"
        self.agent_id = agent_id
        self.redis = redis
        self.max_attempts, self.backoff_base, self.backoff_cap = max_attempts, backoff_base, backoff_cap
        self.observer, self.sleep, self.clock = observer, sleep, clock
        self.key_prefix = key_prefix
        self.secret_id = hashlib.sha1(secret.encode()).hexdigest()[:12]  # noqa: S324 - key name, not security
        self.tokens = SharedCredential(
            redis,
            f"{key_prefix}:token:{corp_id}:{self.secret_id}",
            self._fetch_token,
            clock=clock,
            margin=token_margin,
        )
        self.limiter = RedisRateLimiter(redis, key_prefix, rate_limits, clock=clock)
        # 45033 is reported at ~5–10 concurrent calls per corp (§4.1): cap below that across processes.
        self.semaphore = RedisSemaphore(redis, f"{key_prefix}:sem:{corp_id}", max_concurrency, clock=clock)
        self._rng = random.Random()  # noqa: S311 - jitter

    # -- wechatpy integration ----------------------------------------------------------------------
    @property
    def access_token(self) -> str:
        return self.tokens.get()

    def fetch_access_token(self) -> dict[str, Any]:
        token, expires_in = self._fetch_token()
        return {"access_token": token, "expires_in": expires_in}

    def _request(self, method: str, url_or_endpoint: str, **kwargs: Any) -> Any:
        """Every wechatpy-wrapped call lands here; route it through token/limiter/retry."""
        path = url_or_endpoint
        for base in (kwargs.pop("api_base_url", None), self.API_BASE_URL, DEFAULT_API_BASE):
            if base and path.startswith(base):
                path = path[len(base) :]
        params = {k: v for k, v in (kwargs.pop("params", None) or {}).items() if k != "access_token"}
        processor = kwargs.pop("result_processor", None)
        result = self.call(
            method.upper(),
            path,
            params=params,
            body=kwargs.pop("data", None),
            files=kwargs.pop("files", None),
        )
        return processor(result) if processor else result

    # -- the one request path ----------------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        files: Mapping[str, Any] | None = None,
        auth: bool = True,
    ) -> dict[str, Any]:
        """One API call with throttling, token handling and retries; returns the JSON on errcode 0."""
        attempt, refreshed, throttled = 0, False, 0
        while True:
            wait = self.limiter.acquire(self.corp_id, path)
            if wait > 0:
                throttled += 1
                if throttled > 10:
                    raise WeComTransientError(45009, "local rate limit keeps refusing", path)
                self.sleep(wait)
                continue
            token = self.tokens.get() if auth else None
            query = {**(params or {}), **({"access_token": token} if token else {})}
            attempt += 1
            with self._slot(path):
                errcode, result = self._send(method, path, query, body, files)
            if errcode == 0:
                return result
            errmsg = str(result.get("errmsg", "")) if result else "http/network error"
            err = error_for(errcode, errmsg, path)
            if auth and token and errcode in TOKEN_CODES and not refreshed:
                # Stale token: drop it (if nobody replaced it yet) and retry once; not a backoff attempt.
                self.tokens.invalidate(token)
                refreshed, attempt = True, attempt - 1
                continue
            if isinstance(err, WeComTransientError) and attempt < self.max_attempts:
                delay = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
                log.info("wecom %s transient errcode=%s, retry %d in %.2fs", path, errcode, attempt, delay)
                self.sleep(self._rng.uniform(delay / 2, delay))
                continue
            raise err

    @contextmanager
    def _slot(self, path: str) -> Iterator[None]:
        waited = 0.0
        holder = self.semaphore.try_acquire()
        while holder is None:
            if waited >= 30:
                raise WeComTransientError(45033, "local concurrency slots stayed full for 30 s", path)
            self.sleep(0.05)
            waited += 0.05
            holder = self.semaphore.try_acquire()
        try:
            yield
        finally:
            self.semaphore.release(holder)

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any],
        body: Any,
        files: Mapping[str, Any] | None,
    ) -> tuple[int | None, dict[str, Any]]:
        """One HTTP exchange -> (errcode, json). errcode None = HTTP 5xx / network (transient)."""
        if files:
            for f in files.values():  # a retried upload must resend the whole file
                if hasattr(f, "seek"):
                    f.seek(0)
        data = json.dumps(body, ensure_ascii=False).encode() if isinstance(body, dict | list) else body
        started = time.perf_counter()
        errcode: int | None = None
        result: dict[str, Any] = {}
        try:
            resp = self._http.request(
                method, self.API_BASE_URL + path, params=query, data=data, files=files, timeout=self.timeout
            )
            if resp.status_code >= 500:
                result = {"errmsg": f"HTTP {resp.status_code}"}
            else:
                resp.raise_for_status()
                result = resp.json()
                errcode = int(result.get("errcode", 0))
        except requests.HTTPError as exc:  # 4xx: not WeCom-shaped, do not retry
            errcode, result = -2, {"errmsg": str(exc)}
        except (requests.ConnectionError, requests.Timeout) as exc:
            result = {"errmsg": f"{type(exc).__name__}: {exc}"}
        except ValueError as exc:
            result = {"errmsg": f"non-JSON answer: {exc}"}
        elapsed = time.perf_counter() - started
        WECOM_CALLS.labels(path=api_path_label(path), errcode="http" if errcode is None else str(errcode)).observe(
            elapsed)
        if self.observer is not None:
            self.observer(path, errcode, elapsed)
        return errcode, result

    def _fetch_token(self) -> tuple[str, int]:
        result = self.call(
            "GET", "gettoken", params={"corpid": self.corp_id, "corpsecret": self.secret}, auth=False
        )
        return str(result["access_token"]), int(result.get("expires_in", 7200))

    def _pages(self, path: str, body: dict[str, Any], items: str) -> Iterator[dict[str, Any]]:
        """Follow `next_cursor` until it comes back empty."""
        cursor = ""
        while True:
            page = self.call("POST", path, body={**body, "cursor": cursor})
            yield from page.get(items) or []
            cursor = page.get("next_cursor") or ""
            if not cursor:
                return

    # -- 通讯录 contacts ----------------------------------------------------------------------------
    def get_user(self, userid: str) -> dict[str, Any]:
        """读取成员 user/get."""
        return dict(self.user.get(userid))

    def list_users(self, department_id: int, fetch_child: bool = False) -> list[dict[str, Any]]:
        """获取部门成员详情 user/list."""
        return list(self.user.list(department_id, fetch_child=fetch_child))

    def list_departments(self, department_id: int | None = None) -> list[dict[str, Any]]:
        """获取部门列表 department/list."""
        return list(self.department.list(department_id))

    # -- 客户联系 customers -------------------------------------------------------------------------
    def get_follow_user_list(self) -> list[str]:
        """获取配置了客户联系功能的成员列表."""
        return list(self.external_contact.get_follow_user_list().get("follow_user") or [])

    def list_external_contacts(self, userid: str) -> list[str]:
        """获取客户列表 externalcontact/list."""
        return list(self.external_contact.list(userid).get("external_userid") or [])

    def get_external_contact(self, external_userid: str) -> dict[str, Any]:
        """获取客户详情; follows `next_cursor` when the customer has > 500 follow users."""
        result = self.call("GET", "externalcontact/get", params={"external_userid": external_userid})
        follow = list(result.get("follow_user") or [])
        while result.get("next_cursor"):
            result = self.call(
                "GET",
                "externalcontact/get",
                params={"external_userid": external_userid, "cursor": result["next_cursor"]},
            )
            follow += result.get("follow_user") or []
        return {"external_contact": result["external_contact"], "follow_user": follow}

    def batch_get_by_user(self, userids: list[str], limit: int = 100) -> Iterator[dict[str, Any]]:
        """批量获取客户详情: one row per (member, customer) pair, across cursor pages (≤100 members/call)."""
        for i in range(0, len(userids), 100):
            yield from self._pages(
                "externalcontact/batch/get_by_user",
                {"userid_list": userids[i : i + 100], "limit": min(limit, 100)},
                "external_contact_list",
            )

    def remark(
        self,
        userid: str,
        external_userid: str,
        *,
        remark: str | None = None,
        description: str | None = None,
        remark_company: str | None = None,
        remark_mobiles: list[str] | None = None,
    ) -> None:
        """修改客户备注信息; omitted fields stay unchanged, `remark_mobiles=[]` clears them."""
        body: dict[str, Any] = {"userid": userid, "external_userid": external_userid}
        for key, value in (
            ("remark", remark),
            ("description", description),
            ("remark_company", remark_company),
            ("remark_mobiles", remark_mobiles),
        ):
            if value is not None:
                body[key] = value
        self.call("POST", "externalcontact/remark", body=body)

    # -- 企业客户标签 corp tags -----------------------------------------------------------------------
    def get_corp_tag_list(
        self,
        tag_ids: list[str] | None = None,
        group_ids: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """获取企业标签库 (group_id wins over tag_id when both are given)."""
        body = {"tag_id": tag_ids or [], "group_id": group_ids or []}
        return list(self.call("POST", "externalcontact/get_corp_tag_list", body=body).get("tag_group") or [])

    def add_corp_tag(
        self,
        tags: list[dict[str, Any]],
        *,
        group_id: str | None = None,
        group_name: str | None = None,
        order: int | None = None,
    ) -> dict[str, Any]:
        """添加企业客户标签; returns the tag_group with the new tag ids."""
        return dict(self.external_contact.add_corp_tag(group_id, group_name, order, tags)["tag_group"])

    def edit_corp_tag(self, tag_or_group_id: str, name: str | None = None, order: int | None = None) -> None:
        """编辑企业客户标签 (a tag or a group)."""
        self.external_contact.edit_corp_tag(tag_or_group_id, name=name, order=order)

    def del_corp_tag(self, tag_ids: list[str] | None = None, group_ids: list[str] | None = None) -> None:
        """删除企业客户标签; deleting a group's last tag deletes the group."""
        self.call(
            "POST",
            "externalcontact/del_corp_tag",
            body={"tag_id": tag_ids or [], "group_id": group_ids or []},
        )

    def mark_tag(
        self,
        userid: str,
        external_userid: str,
        add_tag: list[str] | None = None,
        remove_tag: list[str] | None = None,
    ) -> None:
        """编辑客户企业标签 (per member-customer pair; raises WeComNotFound 84061 without a relationship)."""
        self.external_contact.mark_tag(
            userid, external_userid, add_tag=add_tag or [], remove_tag=remove_tag or []
        )

    # -- 欢迎语与群发 welcome & mass send --------------------------------------------------------------
    def send_welcome_msg(
        self, welcome_code: str, text: str | None = None, attachments: list[dict[str, Any]] | None = None
    ) -> None:
        """发送新客户欢迎语: once per code, within 20 s of the event (41051 used/late, 41096 contention)."""
        body: dict[str, Any] = {"welcome_code": welcome_code}
        if text:
            body["text"] = {"content": text}
        if attachments:
            body["attachments"] = attachments
        self.external_contact.send_welcome_msg(body)

    def add_msg_template(self, template: dict[str, Any]) -> dict[str, Any]:
        """创建企业群发: returns {msgid, fail_list}; nothing is sent until the member confirms."""
        return dict(self.external_contact.add_msg_template(template))

    def get_groupmsg_task(self, msgid: str, limit: int = 1000) -> list[dict[str, Any]]:
        """获取群发成员发送任务列表 (status 0 not sent, 1 sent)."""
        return list(
            self._pages("externalcontact/get_groupmsg_task", {"msgid": msgid, "limit": limit}, "task_list")
        )

    def get_groupmsg_send_result(self, msgid: str, userid: str, limit: int = 1000) -> list[dict[str, Any]]:
        """获取企业群发成员执行结果 (status 0 unsent, 1 sent, 2 not a friend, 3 over quota)."""
        return list(
            self._pages(
                "externalcontact/get_groupmsg_send_result",
                {"msgid": msgid, "userid": userid, "limit": limit},
                "send_list",
            )
        )

    # -- 客户群 groups --------------------------------------------------------------------------------
    def groupchat_list(
        self, owner_userids: list[str] | None = None, status_filter: int = 0, limit: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """获取客户群列表 ({chat_id, status}), across cursor pages."""
        body: dict[str, Any] = {"status_filter": status_filter, "limit": limit}
        if owner_userids:
            body["owner_filter"] = {"userid_list": owner_userids}
        return self._pages("externalcontact/groupchat/list", body, "group_chat_list")

    def groupchat_get(self, chat_id: str, need_name: bool = False) -> dict[str, Any]:
        """获取客户群详情."""
        body = {"chat_id": chat_id, "need_name": int(need_name)}
        return dict(self.call("POST", "externalcontact/groupchat/get", body=body)["group_chat"])

    def groupchat_transfer(self, chat_ids: list[str], new_owner: str) -> list[dict[str, Any]]:
        """分配离职成员的客户群; returns failed_chat_list."""
        body = {"chat_id_list": chat_ids, "new_owner": new_owner}
        return list(
            self.call("POST", "externalcontact/groupchat/transfer", body=body).get("failed_chat_list") or []
        )

    def groupchat_onjob_transfer(self, chat_ids: list[str], new_owner: str) -> list[dict[str, Any]]:
        """分配在职成员的客户群; returns failed_chat_list."""
        body = {"chat_id_list": chat_ids, "new_owner": new_owner}
        result = self.call("POST", "externalcontact/groupchat/onjob_transfer", body=body)
        return list(result.get("failed_chat_list") or [])

    # -- 应用消息 app messages -------------------------------------------------------------------------
    def send_app_message(
        self,
        userids: list[str],
        *,
        text: str | None = None,
        textcard: dict[str, str] | None = None,
        duplicate_check_interval: int | None = None,
    ) -> dict[str, Any]:
        """发送应用消息 (text or textcard) to members; 81013 when every recipient is invalid."""
        if self.agent_id is None:
            raise WeComConfigError(None, "agent_id is required to send app messages", "message/send")
        if (text is None) == (textcard is None):
            raise ValueError("pass exactly one of text / textcard")
        msg: dict[str, Any] = (
            {"msgtype": "text", "text": {"content": text}}
            if text is not None
            else {"msgtype": "textcard", "textcard": {"btntxt": "详情", **(textcard or {})}}
        )
        if duplicate_check_interval:
            msg.update(enable_duplicate_check=1, duplicate_check_interval=duplicate_check_interval)
        return dict(self.message.send(self.agent_id, userids, msg=msg))

    # -- 微信客服 kf ----------------------------------------------------------------------------------
    def kf_sync_msg(
        self, cursor: str = "", token: str | None = None, open_kfid: str | None = None, limit: int = 1000
    ) -> dict[str, Any]:
        """读取消息 kf/sync_msg: one page {next_cursor, has_more, msg_list}; keep the cursor per kf."""
        body: dict[str, Any] = {"cursor": cursor, "limit": limit}
        if token:
            body["token"] = token
        if open_kfid:
            body["open_kfid"] = open_kfid
        return self.call("POST", "kf/sync_msg", body=body)

    # -- 继承 handover --------------------------------------------------------------------------------
    def transfer_customer(
        self,
        handover_userid: str,
        takeover_userid: str,
        external_userids: list[str],
        transfer_success_msg: str | None = None,
    ) -> dict[str, int]:
        """分配在职成员的客户: {external_userid: errcode}; 0 means started (completes after 24 h)."""
        body: dict[str, Any] = {
            "handover_userid": handover_userid,
            "takeover_userid": takeover_userid,
            "external_userid": _at_most_100(external_userids),
        }
        if transfer_success_msg:
            body["transfer_success_msg"] = transfer_success_msg
        result = self.call("POST", "externalcontact/transfer_customer", body=body)
        return {c["external_userid"]: int(c["errcode"]) for c in result.get("customer") or []}

    def transfer_result(self, handover_userid: str, takeover_userid: str) -> Iterator[dict[str, Any]]:
        """查询客户接替状态 (在职): {external_userid, status 1..5, takeover_time} across pages."""
        return self._pages(
            "externalcontact/transfer_result",
            {"handover_userid": handover_userid, "takeover_userid": takeover_userid},
            "customer",
        )

    def resigned_transfer_customer(
        self, handover_userid: str, takeover_userid: str, external_userids: list[str]
    ) -> dict[str, int]:
        """分配离职成员的客户: {external_userid: errcode}."""
        body = {
            "handover_userid": handover_userid,
            "takeover_userid": takeover_userid,
            "external_userid": _at_most_100(external_userids),
        }
        result = self.call("POST", "externalcontact/resigned/transfer_customer", body=body)
        return {c["external_userid"]: int(c["errcode"]) for c in result.get("customer") or []}

    def resigned_transfer_result(
        self, handover_userid: str, takeover_userid: str
    ) -> Iterator[dict[str, Any]]:
        """查询离职客户接替状态, across pages."""
        return self._pages(
            "externalcontact/resigned/transfer_result",
            {"handover_userid": handover_userid, "takeover_userid": takeover_userid},
            "customer",
        )

    def get_unassigned_list(self, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """获取待分配的离职成员列表: {handover_userid, external_userid, dimission_time} across pages."""
        return self._pages("externalcontact/get_unassigned_list", {"page_size": page_size}, "info")

    # -- OAuth, JS-SDK, media, misc ---------------------------------------------------------------------
    def auth_getuserinfo(self, code: str, legacy: bool = False) -> dict[str, Any]:
        """获取访问用户身份: {userid} for members, {openid, external_userid?} otherwise.

        The legacy `user/getuserinfo` answers with UserId/OpenId/DeviceId; keys are normalised so
        callers never care which endpoint answered (PROTOCOL.md §3.10, §6.3).
        """
        raw = (
            self.oauth.get_user_info(code)
            if legacy
            else self.call("GET", "auth/getuserinfo", params={"code": code})
        )
        keys = {
            "UserId": "userid",
            "OpenId": "openid",
            "DeviceId": "deviceid",
            "user_ticket": "user_ticket",
            "userid": "userid",
            "openid": "openid",
            "external_userid": "external_userid",
        }
        return {keys[k]: v for k, v in raw.items() if k in keys and v not in (None, "")}

    def get_jsapi_ticket(self) -> tuple[str, int]:
        """获取企业的jsapi_ticket (wx.config)."""
        result = self.jsapi.get_ticket()
        return str(result["ticket"]), int(result.get("expires_in", 7200))

    def get_agent_ticket(self) -> tuple[str, int]:
        """获取应用的jsapi_ticket (wx.agentConfig)."""
        result = self.jsapi.get_agent_ticket()
        return str(result["ticket"]), int(result.get("expires_in", 7200))

    def upload_media(self, media_type: str, file: IO[bytes] | tuple[str, IO[bytes]]) -> dict[str, Any]:
        """上传临时素材 (image/voice/video/file; valid 3 days): {type, media_id, created_at}."""
        return dict(self.media.upload(media_type, file))

    def get_callback_ip(self) -> list[str]:
        """获取企业微信回调IP段."""
        return list(self.misc.get_wechat_ips())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _at_most_100(ids: list[str]) -> list[str]:
    if not 1 <= len(ids) <= 100:
        raise ValueError("WeCom takes 1..100 external_userid per handover call; batch the list")
    return ids
