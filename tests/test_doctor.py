"""`sopbot doctor` against the simulator: a good configuration passes; a wrong secret and an untrusted IP
are both reported with their fixes, and the command exits non-zero instead of crashing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from bot.cli import main
from bot.services import Services
from tests.conftest import SimHarness, env_for_tests


@pytest.fixture
def live_app(app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _env(services: Services, sim: SimHarness, public_url: str, **extra: str) -> dict[str, str]:
    s = services.settings
    env = env_for_tests(s.database_url, s.redis_url or "", WECOM_API_BASE=sim.server.api_base,
                        SOPBOT_PUBLIC_URL=public_url, WECOM_CONTACT_SECRET="demo-contact-secret")
    env.update(extra)
    return env


def test_doctor_passes_on_a_good_configuration(services: Services, sim: SimHarness, live_app: str) -> None:
    result = CliRunner().invoke(main, ["doctor"], env=_env(services, sim, live_app))
    assert result.exit_code == 0, result.output
    assert "all checks passed" in result.output
    assert "✔ 回调URL自检" in result.output and "✔ 自建应用: access_token" in result.output


def test_doctor_reports_untrusted_ip_and_wrong_secret_with_fixes(services: Services, sim: SimHarness,
                                                                  live_app: str) -> None:
    sim.control("config", {"ip_trusted": {"1000002": False}})
    result = CliRunner().invoke(main, ["doctor"], env=_env(services, sim, live_app,
                                                           WECOM_CONTACT_SECRET="not-the-secret"))
    assert result.exit_code == 1, result.output
    out = result.output
    assert "60020" in out and "企业可信IP" in out and "from ip: 127.0.0.1" in out
    assert "40001" in out and "Secret 重新复制" in out
    assert "2 problem(s) found" in out
    assert "Traceback" not in out


def test_doctor_reports_bad_configuration_without_crashing(services: Services, sim: SimHarness,
                                                           live_app: str) -> None:
    result = CliRunner().invoke(main, ["doctor"], env=_env(services, sim, live_app, WECOM_ENCODING_AES_KEY="short"))
    assert result.exit_code == 1 and "WECOM_ENCODING_AES_KEY" in result.output and "Traceback" not in result.output
