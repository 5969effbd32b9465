"""Prometheus metrics (/metrics) and structured log context."""

from __future__ import annotations

from flask import Blueprint, Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

__all__ = ["CALLBACKS", "JOBS", "WECOM_CALLS", "init_observability"]

CALLBACKS = Counter("sopbot_callbacks_total", "WeCom callbacks by result", ["result"])
JOBS = Counter("sopbot_jobs_total", "Jobs by kind and outcome", ["kind", "outcome"])
WECOM_CALLS = Histogram("sopbot_wecom_api_seconds", "WeCom API latency by path and errcode", ["path", "errcode"])

metrics_bp = Blueprint("metrics", __name__)


@metrics_bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


def init_observability(app: Flask) -> None:
    app.register_blueprint(metrics_bp)
