"""rq jobs and outbox executors of the tagging area (registered with `jobs.wecom_calls.executor`)."""

from __future__ import annotations
