"""A clean schema for a benchmark run: every sopbot table dropped, then the migrations applied.

The benches take a database URL (a scratch PostgreSQL database, or a fresh SQLite file under a temp dir) and start
from nothing, so runs do not see each other's rows.
"""

from __future__ import annotations

__all__ = ["fresh_schema"]


def fresh_schema(url: str) -> None:
    from sqlalchemy import text

    from bot.db import make_engine
    from bot.migrate import upgrade
    from bot.models import Base

    engine = make_engine(url)
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()
    upgrade(url)
