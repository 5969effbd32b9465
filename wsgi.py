"""WSGI entry point: `gunicorn wsgi:app`."""

from __future__ import annotations

from bot import create_app, freeze_startup_objects

app = create_app()
freeze_startup_objects()  # the collector no longer walks what start-up built (docs/PERFORMANCE.md)
