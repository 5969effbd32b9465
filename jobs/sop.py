"""rq jobs and outbox executors of the sop area (registered with `jobs.wecom_calls.executor`)."""

from __future__ import annotations
