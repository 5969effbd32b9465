"""A small asyncio HTTP/1.1 load generator (keep-alive connections, closed or open loop).

Kept dependency-free so the benchmark runs anywhere the project installs. Requests are
pre-built byte strings; latency is measured from the moment a request was due to be sent
(open loop), so queueing delay counts — no coordinated omission. For the same reason the generator must not
pause itself: its garbage collector is off while it runs (a full collection over the objects the bench imported
took 70-115 ms here, and every request due meanwhile counted those as the server's latency).
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000


def build_request(host: str, port: int, path_qs: str, body: bytes) -> bytes:
    head = (f"POST {path_qs} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: text/xml\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, keep_alive): gunicorn's sync workers answer `Connection: close` to every request."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed")
    status = int(status_line.split()[1])
    length = 0
    chunked = False
    keep_alive = True
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value.strip())
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name.lower() == "connection" and value.strip().lower() == "close":
            keep_alive = False
    if chunked:
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, keep_alive


async def run(host: str, port: int, requests: list[bytes], *, connections: int, duration: float,
              rate: float | None = None) -> Result:
    """Closed loop (rate=None): each connection sends as fast as answers come back.
    Open loop (rate=R): requests are due at R per second overall, whatever the answers do."""
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        return await _run(host, port, requests, connections=connections, duration=duration, rate=rate)
    finally:
        if collecting:
            gc.enable()


async def _run(host: str, port: int, requests: list[bytes], *, connections: int, duration: float,
               rate: float | None) -> Result:
    result = Result()
    index = 0
    start = time.perf_counter()
    deadline = start + duration
    interval = connections / rate if rate else 0.0

    async def worker(n: int) -> None:
        nonlocal index
        reader, writer = await asyncio.open_connection(host, port)
        due = start + (n * interval / connections if rate else 0.0)
        try:
            while True:
                now = time.perf_counter()
                if rate:
                    if due > now:
                        await asyncio.sleep(due - now)
                    sent_at = due
                    due += interval
                else:
                    sent_at = now
                if sent_at >= deadline:
                    return
                req = requests[index % len(requests)]
                index += 1
                result.sent += 1
                try:
                    writer.write(req)
                    await writer.drain()
                    status, keep_alive = await _read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                    result.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                if not keep_alive:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 200:
                    result.ok += 1
                    result.latencies.append(time.perf_counter() - sent_at)
                else:
                    result.errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(n) for n in range(connections)))
    result.seconds = time.perf_counter() - start
    return result
