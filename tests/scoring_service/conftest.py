"""Reuses the sidebar area's live server (and its Chromium settings) for the dashboard browser test.

The browser here is function-scoped and closed at the end of the test: a second session-wide Playwright
instance next to the sidebar's would break its sync API ("inside the asyncio loop").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.sidebar.conftest import CHROMIUM, CHROMIUM_ARGS, _no_browser, live_server, sidebar_settings  # noqa: F401


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("the playwright package is not installed in .venv")
    if not os.access(CHROMIUM, os.X_OK):
        _no_browser(f"{CHROMIUM} not found")
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()
