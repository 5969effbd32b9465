"""Headless Debian Chromium under Playwright for the browser tests (never a downloaded browser).

One Playwright instance per test session (the `chromium` fixture in tests/conftest.py): a second sync
instance beside it fails with "Sync API inside the asyncio loop".
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def no_browser(reason: str) -> None:
    """Fail in CI, skip loudly elsewhere: a browser test that silently does not run is no test."""
    message = (f"BROWSER TESTS NOT RUN: {reason}. Install Debian's Chromium (`apt-get update && apt-get install -y "
               "chromium`) and the pinned playwright package into .venv; never `playwright install`.")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


def launch_chromium() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        no_browser("the playwright package is not installed in .venv")
    if not os.access(CHROMIUM, os.X_OK):
        no_browser(f"{CHROMIUM} not found")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()
