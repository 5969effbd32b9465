"""The only place that builds the service context for workers.

Jobs call `get_services()`; the services are built once per process from the environment
(the same settings the web app reads) and rebuilt if the process was forked.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from rq import SimpleWorker

from bot.config import load_settings
from bot.services import Services

__all__ = ["get_services", "set_services", "SopbotWorker"]

_lock = threading.Lock()
_services: Services | None = None
_pid: int | None = None


def get_services() -> Services:
    global _services, _pid
    with _lock:
        if _services is None or _pid != os.getpid():
            _services = Services.from_settings(load_settings())
            _pid = os.getpid()
        return _services


def set_services(services: Services | None) -> None:
    """Install prebuilt services (tests, `sopbot dev`) so jobs share the caller's configuration."""
    global _services, _pid
    with _lock:
        _services, _pid = services, (os.getpid() if services else None)


class SopbotWorker(SimpleWorker):
    """rq's SimpleWorker (jobs run in this process) with `job_id`/`job_kind` on every log line of a job,
    rq's own lines included."""

    def execute_job(self, job: Any, queue: Any) -> Any:
        from bot.logs import log_context

        with log_context(job_id=job.id, job_kind=str(job.func_name).rsplit(".", 1)[-1]):
            return super().execute_job(job, queue)
