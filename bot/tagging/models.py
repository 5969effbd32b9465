"""Database models of the tagging area (imported by bot/models.py so Alembic and the tests see them)."""

from __future__ import annotations
