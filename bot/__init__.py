"""sopbot: the service core and its web faces.

`create_app(config=None)` is the app factory: it reads settings (or takes them), builds the
shared services and registers the blueprints. Nothing here does I/O at import time.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from bot.config import Settings, load_settings
from bot.services import Services
from bot.web.session import LazySessionInterface

__all__ = ["create_app", "freeze_startup_objects", "get_services"]


def create_app(config: Settings | Mapping[str, str] | None = None) -> Flask:
    """Build the Flask app. `config`: Settings, or an env-like mapping, or None (environment + .env)."""
    settings = config if isinstance(config, Settings) else load_settings(config)
    app = Flask(__name__)
    app.config["SECRET_KEY"] = settings.secret_key
    # Larger bodies are refused by werkzeug with 413 before the view reads them.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_callback_bytes
    app.config["JSON_AS_ASCII"] = False
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    init_app(app, Services.from_settings(settings))
    return app


def freeze_startup_objects() -> None:
    """Move everything built at start-up (modules, the app, its routes, SQLAlchemy's mappers …, about 150,000
    objects) out of the garbage collector's reach: they live as long as the process anyway.

    Left in, each full collection walks them all, and a full collection comes every few ten thousand requests:
    a 100 ms pause of the serving process (measured in docs/PERFORMANCE.md), which alone put p99 of a run over
    50 ms. After `gc.freeze()` it takes ~2 ms. Called by the process entry points (wsgi.py, `sopbot worker`),
    never by `create_app`: tests build many apps in one process and frozen objects are never freed.
    """
    gc.collect()  # what start-up left as garbage goes now, not into the frozen set
    gc.freeze()


def init_app(app: Flask, services: Services) -> None:
    from bot.observability import init_observability
    from bot.web.api import api_bp
    from bot.web.health import health_bp
    from bot.wecom.callback import callback_bp

    app.extensions["sopbot"] = services
    # A path with an empty segment ("…/scripts/a%2F/messages" decodes to "…/scripts/a//messages") is not found:
    # werkzeug's default 308 to the merged path would echo the path and have clients re-POST to another URL.
    # Set before any route is added: each rule takes the map's setting when it is bound.
    app.url_map.merge_slashes = False
    app.session_interface = LazySessionInterface()
    app.register_blueprint(callback_bp)
    app.register_blueprint(api_bp)
    from bot.web import api_handover, api_scoring, api_sop, api_tagging, links

    for area in (api_tagging, api_sop, api_handover, api_scoring):
        app.register_blueprint(area.bp)
    app.register_blueprint(health_bp)
    from bot.handover.views import bp as handover_views_bp

    app.register_blueprint(handover_views_bp)
    from bot.sidebar import register as register_sidebar

    register_sidebar(app)  # the sidebar pages and /sidebar/api
    app.register_blueprint(links.links_bp)
    from bot.dashboard.views import bp as dashboard_bp

    app.register_blueprint(dashboard_bp)  # /dashboard
    init_observability(app)
    __import__("bot.web.security", fromlist=["init_security"]).init_security(app)  # docs/SECURITY.md
    logging.getLogger("sopbot").setLevel(logging.INFO)


def get_services(app: Any = None) -> Services:
    from flask import current_app

    target = app or current_app
    services: Services = target.extensions["sopbot"]
    return services
