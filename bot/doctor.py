"""`sopbot doctor`: check the configuration, database, Redis and WeCom, and say how to fix each problem.

Every check runs even when an earlier one failed (as far as it can), and none of them raises: WeCom
permission and network errors are reported with a plain-language fix, never a traceback. Start-up of
the service itself makes no WeCom call, so these problems can never crash it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from bot.config import ConfigError, Settings, load_settings

__all__ = ["Check", "run_doctor"]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    fix: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "", fix: str = "") -> None:
        self.checks.append(Check(name, ok, detail, fix))


# errcode -> (what it means, how to fix it); PROTOCOL.md §3.1, §4.1
WECOM_FIXES: dict[int, tuple[str, str]] = {
    40013: ("企业ID错误 (invalid corpid)", "把 WECOM_CORP_ID 设为 管理后台 → 我的企业 → 企业ID (ww 开头)"),
    40001: ("Secret 错误 (invalid credential)", "从 应用管理 → 自建应用 → Secret 重新复制到对应的环境变量"),
    40091: ("Secret 属于另一个企业", "确认 Secret 与 WECOM_CORP_ID 来自同一个企业"),
    50003: ("应用已停用", "在 应用管理 中启用该应用"),
    60020: ("服务器 IP 不在企业可信IP中 (not allow to access from your ip)",
            "在 应用管理 → 该应用 → 企业可信IP 中加入错误信息里 from ip 后面的地址"),
    48002: ("应用没有调用该接口的权限 (API forbidden)",
            "在 客户与上下游 → 客户联系 → API → 可调用接口的应用 中加入本应用"),
    48009: ("Secret 的权限范围不含该接口 (scope)",
            "用已加入「可调用接口的应用」的自建应用 Secret，或使用客户联系 Secret"),
    84074: ("没有客户联系权限", "在 客户联系 → 权限配置 中给成员开通客户联系"),
    60011: ("成员不在应用可见范围", "在 应用管理 → 可见范围 中加入相关成员/部门"),
}


def _wecom_problem(exc: Exception) -> tuple[str, str]:
    code = getattr(exc, "errcode", None)
    if isinstance(code, int) and code in WECOM_FIXES:
        meaning, fix = WECOM_FIXES[code]
        msg = str(getattr(exc, "errmsg", "") or "")
        ip = msg.split("from ip:", 1)[1].split(",", 1)[0].strip() if "from ip:" in msg else ""
        return f"{code} {meaning}" + (f"; from ip: {ip}" if ip else ""), fix
    if code is None:
        return f"无法连接企业微信: {exc}", "检查 WECOM_API_BASE 与出网网络/代理 (服务器需能访问 qyapi.weixin.qq.com)"
    return f"{code} {getattr(exc, 'errmsg', exc)}", "见 https://developer.work.weixin.qq.com/devtool/query 查询该错误码"


def _check_wecom(report: Report, label: str, settings: Settings, secret: str, redis_conn: Any,
                 calls: list[tuple[str, Callable[[Any], Any]]]) -> None:
    from bot.wecom.client import WeComClient, WeComError

    client = WeComClient(settings.corp_id, secret, redis_conn, api_base=settings.api_base,
                         agent_id=settings.agent_id, max_attempts=1, timeout=5,
                         key_prefix=f"sopbot:doctor:{secrets.token_hex(4)}")
    try:
        client.access_token  # noqa: B018 - fetching the token is the check
    except WeComError as exc:
        detail, fix = _wecom_problem(exc)
        report.add(f"{label}: access_token", False, detail, fix)
        return
    except requests.RequestException as exc:
        report.add(f"{label}: access_token", False, *_wecom_problem(exc))
        return
    report.add(f"{label}: access_token", True, "gettoken ok")
    for name, call in calls:
        try:
            call(client)
        except WeComError as exc:
            report.add(f"{label}: {name}", False, *_wecom_problem(exc))
            if exc.errcode == 60020:
                return  # every further call fails the same way; the one fix is enough
        else:
            report.add(f"{label}: {name}", True)


def _callback_selftest(report: Report, settings: Settings) -> None:
    """GET the callback URL the way WeCom verifies it: our own encrypted, signed echostr must come back."""
    from bot.wecom.crypto import WeComCrypto

    crypto = WeComCrypto(settings.callback_token, settings.encoding_aes_key, settings.corp_id)
    echo = str(secrets.randbelow(10**18))
    encrypted, ts, nonce = crypto.encrypt(echo), str(int(time.time())), str(secrets.randbelow(10**9))
    url = f"{settings.public_url}/wecom/callback"
    try:
        resp = requests.get(url, params={"msg_signature": crypto.signature(ts, nonce, encrypted), "timestamp": ts,
                                         "nonce": nonce, "echostr": encrypted}, timeout=5)
    except requests.RequestException as exc:
        report.add("回调URL自检", False, f"{url} 无法访问: {type(exc).__name__}",
                   "确认服务已启动，SOPBOT_PUBLIC_URL 指向它 (企业微信后台填写的 URL 也必须能从公网访问)")
        return
    if resp.status_code == 200 and resp.text == echo:
        report.add("回调URL自检", True, f"{url} 解密并原样返回 echostr")
    else:
        report.add("回调URL自检", False, f"{url} 返回 {resp.status_code} {resp.text[:80]!r}",
                   "检查 WECOM_CALLBACK_TOKEN / WECOM_ENCODING_AES_KEY 与后台「接收消息」设置一致")


def run_doctor(env: Mapping[str, str] | None = None, *, callback: bool = True) -> Report:
    report = Report()
    try:
        settings = load_settings(env)
    except ConfigError as exc:
        report.add("配置", False, str(exc), "按提示设置环境变量 (或 .env)，见 README 的 Configuration")
        return report
    report.add("配置", True, f"corp {settings.corp_id}, agent {settings.agent_id}")

    from sqlalchemy import text

    from bot.db import make_engine
    from bot.migrate import current_heads

    try:
        engine = make_engine(settings.database_url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        heads = current_heads(settings.database_url)
        from alembic.script import ScriptDirectory

        from bot.migrate import alembic_config

        head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
        if heads == [head]:
            report.add("数据库", True, f"schema at {head}")
        else:
            report.add("数据库", False, f"schema at {heads or 'none'}, code expects {head}", "运行 sopbot db upgrade")
    except Exception as exc:  # any driver error: report it, do not crash
        report.add("数据库", False, f"{type(exc).__name__}: {exc}"[:300],
                   "检查 SOPBOT_DATABASE_URL、数据库是否运行、账号权限")

    redis_conn = None
    try:
        from bot.redis_conn import connect, resolve_redis_url

        redis_conn = connect(resolve_redis_url(settings.redis_url, settings.var_dir))
        redis_conn.ping()
        report.add("Redis", True)
    except Exception as exc:
        report.add("Redis", False, f"{type(exc).__name__}: {exc}"[:300], "检查 SOPBOT_REDIS_URL 与 Redis 是否运行")

    if redis_conn is not None:
        _check_wecom(report, "自建应用", settings, settings.agent_secret, redis_conn, [
            ("客户联系权限 (get_follow_user_list)", lambda c: c.get_follow_user_list()),
            ("侧边栏应用 ticket (agent_config)", lambda c: c.get_agent_ticket()),
        ])
        contact_secret = settings.extra.get("WECOM_CONTACT_SECRET")
        if contact_secret:
            _check_wecom(report, "客户联系 Secret", settings, contact_secret, redis_conn, [
                ("客户联系权限 (get_follow_user_list)", lambda c: c.get_follow_user_list()),
            ])
    if callback:
        _callback_selftest(report, settings)
    return report
