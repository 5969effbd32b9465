"""Structured logs: JSON lines, a per-task context (inbox id, job id) and redaction of secrets.

- `log_context(inbox_id=…)` binds fields in a contextvar for the duration of a block; every record
  logged inside it (by any logger, in the same thread or asyncio task) carries them. Fields passed
  explicitly with `extra=` win over the context.
- `JsonFormatter` writes one JSON object per line: ts, level, logger, msg, the context and `extra`
  fields, and `exc` (the traceback) when there is one.
- `RedactFilter` masks secret values (admin token, AES key, agent secret, callback token, secret key)
  and `access_token=` / `corpsecret=` style query parameters in the message and the traceback.
- `configure(fmt)` installs one stream handler on the root logger with all three; the CLI entry
  points call it (SOPBOT_LOG_FORMAT, docs/OPERATIONS.md "Logs").
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "RedactFilter",
    "configure",
    "current_context",
    "job_context",
    "log_context",
    "redact",
    "secrets_of",
]

_context: ContextVar[Mapping[str, Any] | None] = ContextVar("sopbot_log_context", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` or the context.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

MASK = "***"
# key=value pairs whose value is a credential wherever they appear (URLs, error messages, dict reprs).
_PARAM = re.compile(
    r"(?i)((?:access_token|corpsecret|secret|jsapi_ticket|ticket|encoding_aes_key|password)"
    r"['\"]?\s*[=:]\s*['\"]?)([^&\s'\",;)}]+)"
)
_BEARER = re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]+)")
MIN_SECRET_LEN = 6  # shorter values would mask ordinary words


def current_context() -> dict[str, Any]:
    return dict(_context.get() or {})


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind `fields` to every log record emitted inside the block (nested blocks add to the outer ones)."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


@contextmanager
def job_context(kind: str) -> Iterator[None]:
    """Inside an rq job: bind `job_id` (rq's id, e.g. `event-12`) and `job_kind`; outside rq only the kind."""
    from rq import get_current_job

    job = get_current_job()
    with log_context(job_id=job.id if job is not None else None, job_kind=kind):
        yield


def secrets_of(settings: Any) -> list[str]:
    """The secret values of a Settings object (and WECOM_*SECRET* / *TOKEN* extras) worth masking."""
    values = [getattr(settings, name, None) for name in
              ("admin_token", "encoding_aes_key", "agent_secret", "callback_token", "secret_key")]
    extra: Mapping[str, str] = getattr(settings, "extra", {}) or {}
    values += [v for k, v in extra.items() if ("SECRET" in k or "TOKEN" in k or "AES_KEY" in k)]
    return [v for v in values if isinstance(v, str)]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    for value in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True):
        text = text.replace(value, MASK)
    text = _PARAM.sub(lambda m: m.group(1) + MASK, text)
    return _BEARER.sub(lambda m: m.group(1) + MASK, text)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (without overwriting explicit `extra=` fields)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class RedactFilter(logging.Filter):
    """Masks secrets in the rendered message, the traceback and string `extra` fields of each record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        for key, value in list(vars(record).items()):
            if key not in _RESERVED and isinstance(value, str):
                setattr(record, key, redact(value, self.secrets))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in out:
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The human format, with the context fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in _RESERVED}
        if not fields:
            return line
        head, sep, rest = line.partition("\n")
        return head + " " + " ".join(f"{k}={v}" for k, v in fields.items()) + sep + rest


def configure(fmt: str = "json", *, level: int = logging.INFO, secrets: Iterable[str] = (),
              stream: IO[str] | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one stream handler: context, redaction, JSON or text."""
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactFilter(secrets))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
