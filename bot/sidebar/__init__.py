"""The WeCom sidebar (侧边栏): pages under /sidebar/, their JSON API under /sidebar/api/ (docs/SIDEBAR.md)."""

from __future__ import annotations

from flask import Flask

__all__ = ["register"]


def register(app: Flask) -> None:
    from bot.sidebar.api import sidebar_api_bp
    from bot.sidebar.views import sidebar_bp

    app.register_blueprint(sidebar_bp)
    app.register_blueprint(sidebar_api_bp)
