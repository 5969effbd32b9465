"""Baseline for bench/callback_ingest.py: a bare Flask endpoint doing one Redis LPUSH."""

from __future__ import annotations

import os

import redis
from flask import Flask, Response, request

app = Flask(__name__)
conn = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


@app.post("/wecom/callback")
def callback() -> Response:
    conn.lpush("bench:bare", request.get_data())
    return Response("", status=200)
