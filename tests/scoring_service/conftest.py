"""Reuses the sidebar area's live server and the session's Chromium (tests/conftest.py) for the dashboard."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sidebar.conftest import live_server, sidebar_settings  # noqa: F401


@pytest.fixture
def browser(chromium: Any) -> Any:
    return chromium  # the one Playwright instance of the session, whichever area's tests run first
