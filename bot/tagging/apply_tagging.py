"""Executors of the tagging area's actions, registered on bot.apply with `@executes`."""

from __future__ import annotations
