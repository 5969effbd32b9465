"""Dashboard fixtures: a demo month seeded through the pipeline; the sidebar area's live server and Chromium."""

from __future__ import annotations

from typing import Any

import pytest

from bot.services import Services
from bot.wecom.simulator.dev import demo_simulator
from bot.wecom.simulator.month import DemoMonth, MonthResult
from tests.sidebar.conftest import live_server, sidebar_settings  # noqa: F401

# Enough simulated days for the 直播线索培育 SOP's A/B step (day 7 in business days) to come due and be done
# for several customers (scaled down from 30).
DEMO_DAYS = 14


@pytest.fixture
def browser(chromium: Any) -> Any:
    return chromium  # the one Playwright instance of the session


@pytest.fixture
def demo_month(services: Services, app: Any) -> MonthResult:
    """The demo scenario played over DEMO_DAYS simulated days, as `sopbot dev` seeds an empty database."""
    result = DemoMonth(services, app, demo_simulator(services.settings), days=DEMO_DAYS).run()
    assert not result.failures, result.failures[:5]
    return result
