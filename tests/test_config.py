"""Settings: defaults, and start-up errors that name the variable to set."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, load_settings

GOOD = {
    "WECOM_CORP_ID": "ww59709431338c5fb3", "WECOM_CALLBACK_TOKEN": "Tk7wecomCallback2024",
    "WECOM_ENCODING_AES_KEY": "3wWuV0OlkswubuguJWZd7LezQB9AuodY8QjNDGgCJcn", "WECOM_AGENT_ID": "1000002",
    "WECOM_AGENT_SECRET": "s", "SOPBOT_SECRET_KEY": "x" * 32, "SOPBOT_ADMIN_TOKEN": "y" * 16,
}


def test_defaults() -> None:
    s = load_settings(GOOD)
    assert s.database_url == "sqlite:///var/sopbot.db" and s.redis_url is None
    assert s.timezone == "Asia/Shanghai" and s.agent_id == 1000002
    assert s.api_base == "https://qyapi.weixin.qq.com/cgi-bin/"
    assert s.wecom_rate_limit == 1000


def test_the_wecom_client_limits_calls_per_api_to_wecom_rate_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bot.services import Services

    for raw, expected in ((None, 1000), ("10000", 10000)):
        env = {**GOOD, "SOPBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "SOPBOT_REDIS_URL": "redis://x:1/0"}
        if raw is not None:
            env["WECOM_RATE_LIMIT"] = raw
        services = Services.from_settings(load_settings(env, dotenv=False))
        assert services.wecom.limiter.limit_for("externalcontact/mark_tag") == expected
        services.engine.dispose()


@pytest.mark.parametrize(("change", "named"), [
    ({"WECOM_CORP_ID": ""}, "WECOM_CORP_ID"),
    ({"WECOM_ENCODING_AES_KEY": "short"}, "WECOM_ENCODING_AES_KEY"),
    ({"WECOM_ENCODING_AES_KEY": "3wWuV0OlkswubuguJWZd7LezQB9AuodY8QjNDGgCJc="}, "WECOM_ENCODING_AES_KEY"),
    ({"WECOM_AGENT_ID": "abc"}, "WECOM_AGENT_ID"),
    ({"WECOM_CALLBACK_TOKEN": "has space"}, "WECOM_CALLBACK_TOKEN"),
    ({"SOPBOT_SECRET_KEY": ""}, "SOPBOT_SECRET_KEY"),
    ({"SOPBOT_ADMIN_TOKEN": "short"}, "SOPBOT_ADMIN_TOKEN"),
    ({"SOPBOT_TIMEZONE": "Mars/Olympus"}, "SOPBOT_TIMEZONE"),
    ({"SOPBOT_REDIS_URL": "localhost:6379"}, "SOPBOT_REDIS_URL"),
    ({"SOPBOT_DATABASE_URL": "just-a-path.db"}, "SOPBOT_DATABASE_URL"),
    ({"WECOM_API_BASE": "ftp://x"}, "WECOM_API_BASE"),
    ({"WECOM_RATE_LIMIT": "fast"}, "WECOM_RATE_LIMIT"),
    ({"WECOM_RATE_LIMIT": "0"}, "WECOM_RATE_LIMIT"),
    ({"WECOM_RATE_LIMIT": "50000"}, "WECOM_RATE_LIMIT"),
    ({"SOPBOT_INBOX_RETENTION_DAYS": "-1"}, "SOPBOT_INBOX_RETENTION_DAYS"),
    ({"SOPBOT_INBOX_RETENTION_DAYS": "thirty"}, "SOPBOT_INBOX_RETENTION_DAYS"),
])
def test_bad_settings_name_the_variable(change: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings({**GOOD, **change})


def test_inbox_retention_defaults_to_30_days_and_0_keeps_rows() -> None:
    assert load_settings(GOOD).inbox_retention_days == 30
    assert load_settings({**GOOD, "SOPBOT_INBOX_RETENTION_DAYS": "0"}).inbox_retention_days == 0
    assert load_settings({**GOOD, "SOPBOT_INBOX_RETENTION_DAYS": " 90 "}).inbox_retention_days == 90


def test_dotenv_is_read_and_environment_wins(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_text("\n".join(f"{k}={v}" for k, v in GOOD.items()) + "\nSOPBOT_TIMEZONE=UTC\n")
    monkeypatch.chdir(tmp_path)
    for key in GOOD:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SOPBOT_TIMEZONE", "Asia/Tokyo")
    s = load_settings()
    assert s.corp_id == "ww59709431338c5fb3" and s.timezone == "Asia/Tokyo"
