"""rq jobs and outbox executors of the handover area (registered with `jobs.wecom_calls.executor`)."""

from __future__ import annotations
