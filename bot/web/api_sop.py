"""Admin API routes of the sop area under /api/v1 (documented in OPENAPI_PATHS)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from bot.web.api import install_api_guards

bp = Blueprint("api_sop", __name__, url_prefix="/api/v1")
install_api_guards(bp)

OPENAPI_PATHS: dict[str, Any] = {}
