"""WSGI entry point: `gunicorn wsgi:app`."""

from __future__ import annotations

from bot import create_app

app = create_app()
