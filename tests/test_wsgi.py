"""The production entry point (`gunicorn wsgi:app`) freezes what start-up built, so the collector's full
collections stop walking it (a 100 ms pause of the serving process before: docs/PERFORMANCE.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bot.config import DEMO_WECOM
from bot.services import Services

ROOT = Path(__file__).resolve().parents[1]
PROBE = "import gc, wsgi; print(gc.get_freeze_count(), len(gc.get_objects()), wsgi.app.name)"


def test_importing_wsgi_builds_the_app_and_freezes_what_start_up_built(tmp_path: Path, services: Services) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPBOT_", "WECOM_", "PROMETHEUS_"))}
    env.update(DEMO_WECOM, SOPBOT_VAR_DIR=str(tmp_path), SOPBOT_DATABASE_URL=services.settings.database_url,
               SOPBOT_REDIS_URL=services.settings.redis_url or "", SOPBOT_SECRET_KEY="wsgi-test-secret-0123456789",
               SOPBOT_ADMIN_TOKEN="wsgi-test-admin-token")
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    frozen, tracked, name = out.stdout.split()
    assert name == "bot"
    # Flask, SQLAlchemy, the models and routes: tens of thousands of objects, all frozen; what is left for the
    # collector to walk is what came after (a small fraction).
    assert int(frozen) > 50_000 and int(tracked) < int(frozen) // 20, out.stdout
