"""Apply Alembic migrations (`sopbot db upgrade`; `sopbot dev` and the tests call it too)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def current_heads(database_url: str) -> list[str]:
    from alembic.runtime.migration import MigrationContext

    from bot.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()


def regenerate(message: str = "schema") -> Path:
    """Rewrite the single initial revision from the models (pre-release: no deployed schema to migrate)."""
    import tempfile

    versions = MIGRATIONS_DIR / "versions"
    for old in versions.glob("0001_*.py"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        command.revision(alembic_config(f"sqlite:///{tmp}/empty.db"), message=message, autogenerate=True,
                         rev_id="0001")
    (created,) = versions.glob("0001_*.py")
    return created


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["regenerate"]:
        print(f"wrote {regenerate()}")
