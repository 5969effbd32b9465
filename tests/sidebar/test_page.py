"""The main view stays small, self-contained and locked down (WeCom webviews on phones, corp networks)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from bot.services import Services
from tests.conftest import SimHarness
from tests.sidebar.conftest import login

pytestmark = pytest.mark.usefixtures("sidebar_settings")

PAGE_BUDGET = 100 * 1024


def test_main_view_html_css_js_under_100_kb_with_no_external_origin(client: Any, sim: SimHarness) -> None:
    login(client, sim, "WangFang")
    page = client.get("/sidebar/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assets = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)
    assert any(a.startswith("/sidebar/static/jweixin-shim.js") for a in assets)
    assert any(a.startswith("/sidebar/static/sidebar.js") for a in assets)
    assert any(a.startswith("/sidebar/static/sidebar.css") for a in assets)
    total = len(page.data)
    for asset in assets:
        assert urlsplit(asset).netloc == "", f"external asset {asset}"  # no CDN: corp networks cannot reach one
        resp = client.get(asset)
        assert resp.status_code == 200, asset
        total += len(resp.data)
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"  # versioned URL
    print(f"sidebar main view weight: {total} bytes")
    assert total < PAGE_BUDGET, f"main view is {total} bytes, budget {PAGE_BUDGET}"


def test_pages_and_api_send_security_headers(client: Any, sim: SimHarness) -> None:
    login(client, sim, "WangFang")
    for path in ("/sidebar/", "/sidebar/tasks", "/sidebar/api/me"):
        resp = client.get(path)
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self';" in csp
        assert "http" not in csp  # no external origin allowed by default
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "same-origin"
        assert resp.headers["Cache-Control"] == "no-store"


def test_jssdk_url_setting_loads_the_official_file_first_and_allows_only_its_origin(
        client: Any, sim: SimHarness, sidebar_settings: Callable[..., None]) -> None:
    sidebar_settings(extra={"SOPBOT_JSSDK_URL": "https://static.example.com/js/jweixin-1.2.0.js"})
    login(client, sim, "WangFang")
    resp = client.get("/sidebar/")
    html = resp.get_data(as_text=True)
    assert html.index("https://static.example.com/js/jweixin-1.2.0.js") < html.index("jweixin-shim.js")
    assert "script-src 'self' https://static.example.com;" in resp.headers["Content-Security-Policy"]


def test_boot_data_cannot_break_out_of_its_script_block(client: Any, services: Services, sim: SimHarness) -> None:
    login(client, sim, "WangFang")
    html = client.get("/sidebar/?q=</script><script>alert(1)</script>").get_data(as_text=True)
    assert "</script><script>alert(1)" not in html
