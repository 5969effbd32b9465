"""A small HTTP/1.1 load generator on non-blocking sockets and epoll (closed or open loop).

Kept dependency-free so the benchmark runs anywhere the project installs. It shares the machine's cores with the
servers it measures, so it is built to cost little per request: one thread, no event-loop framework (the asyncio
generator it replaced took 0.55-0.65 ms of CPU per request, as much as the bare endpoint it measured), requests
pre-built byte strings, responses parsed no further than the status line and Content-Length.

Latency is measured from the moment a request was due to be sent (open loop), so queueing delay counts: no
coordinated omission. Connections are opened as needed and reused when the server keeps them alive (gunicorn's
sync workers answer `Connection: close`, so there every request opens one). For the same reason as above the
generator must not pause itself: its garbage collector is off while it runs (a full collection over the objects
the bench imported took 70-115 ms here, and every request due meanwhile counted those as the server's latency).
"""

from __future__ import annotations

import errno
import gc
import selectors
import socket
import time
from dataclasses import dataclass, field

__all__ = ["Result", "build_request", "run"]


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


def parse_response(buf: bytes, eof: bool) -> tuple[int, bool] | None:
    """(status, keep_alive) once `buf` holds a whole response, None while more is to come. ValueError for what
    this generator does not read (chunked bodies) or cannot (a malformed head, a body cut short)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if eof:
            raise ValueError("connection closed before the response head")
        return None
    lines = buf[:end].split(b"\r\n")
    status = int(lines[0].split()[1])
    length: int | None = None
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
        elif name == b"transfer-encoding":
            raise ValueError("chunked responses are not read by this generator")
    body = len(buf) - end - 4
    if length is None:  # the body runs to the end of the connection
        return (status, False) if eof else None
    if body >= length:
        return status, keep_alive and not eof
    if eof:
        raise ValueError("connection closed inside the response body")
    return None


class _Exchange:
    """One request on one connection: connect (unless reused), send, read the answer."""

    __slots__ = ("sock", "due", "request", "sent", "buf", "reused", "registered")

    def __init__(self, sock: socket.socket, due: float, request: bytes, *, reused: bool) -> None:
        self.sock, self.due, self.request, self.reused, self.registered = sock, due, request, reused, not reused
        self.sent = 0
        self.buf = b""


def run(host: str, port: int, requests: list[bytes], *, connections: int, duration: float,
        rate: float | None = None) -> Result:
    """Closed loop (rate=None): `connections` requests are in flight at all times, each answer starting the next.
    Open loop (rate=R): requests are due at R per second overall, whatever the answers do; at most `connections`
    are in flight, and a request due while all are busy waits (its wait counted in its latency)."""
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        return _run((host, port), requests, connections=connections, duration=duration, rate=rate)
    finally:
        if collecting:
            gc.enable()


def _run(address: tuple[str, int], requests: list[bytes], *, connections: int, duration: float,
         rate: float | None) -> Result:
    result = Result()
    selector = selectors.DefaultSelector()
    idle: list[socket.socket] = []  # kept-alive connections, free for the next request
    in_flight = 0
    index = 0
    start = time.perf_counter()
    deadline = start + duration
    interval = 1.0 / rate if rate else 0.0
    due_count = 0  # requests begun in open loop; the next is due at start + due_count * interval

    def begin(due: float) -> None:
        nonlocal index, in_flight
        request = requests[index % len(requests)]
        index += 1
        result.sent += 1
        in_flight += 1
        if idle:
            _send(_Exchange(idle.pop(), due, request, reused=True))
        else:
            connect(due, request)

    def connect(due: float, request: bytes) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if sock.connect_ex(address) not in (0, errno.EINPROGRESS):
            sock.close()
            fail()
            return
        selector.register(sock, selectors.EVENT_WRITE, _Exchange(sock, due, request, reused=False))

    def retry(exchange: _Exchange) -> None:
        """A kept-alive connection the server had closed meanwhile: the same request on a new one."""
        if exchange.registered:
            selector.unregister(exchange.sock)
        exchange.sock.close()
        connect(exchange.due, exchange.request)

    def fail() -> None:
        nonlocal in_flight
        in_flight -= 1
        result.errors += 1

    def finish(exchange: _Exchange, status: int, keep_alive: bool) -> None:
        nonlocal in_flight
        in_flight -= 1
        selector.unregister(exchange.sock)
        if keep_alive:
            idle.append(exchange.sock)
        else:
            exchange.sock.close()
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status == 200:
            result.ok += 1
            result.latencies.append(time.perf_counter() - exchange.due)
        else:
            result.errors += 1

    def abort(exchange: _Exchange) -> None:
        if exchange.registered:
            selector.unregister(exchange.sock)
        exchange.sock.close()
        fail()

    def _send(exchange: _Exchange) -> None:
        try:
            exchange.sent += exchange.sock.send(exchange.request[exchange.sent:])
        except BlockingIOError:
            pass
        except OSError:
            if exchange.reused:
                retry(exchange)
            else:
                abort(exchange)
            return
        event = selectors.EVENT_READ if exchange.sent == len(exchange.request) else selectors.EVENT_WRITE
        if exchange.registered:
            selector.modify(exchange.sock, event, exchange)
        else:
            selector.register(exchange.sock, event, exchange)
            exchange.registered = True

    while True:
        now = time.perf_counter()
        if rate:
            while (due := start + due_count * interval) <= now and due < deadline and in_flight < connections:
                begin(due)
                due_count += 1
        elif now < deadline:
            while in_flight < connections and time.perf_counter() < deadline:  # a refused connect ends at once
                begin(time.perf_counter())
        sending = now < deadline
        if not sending and in_flight == 0:
            break
        if rate and sending and in_flight < connections:
            timeout = max(0.0, start + due_count * interval - now)
        else:
            timeout = 0.05 if sending else 10.0
        events = selector.select(timeout)
        if not events and not sending and time.perf_counter() - deadline > 30.0:
            for key in list(selector.get_map().values()):
                abort(key.data)  # no answer 30 s after the end: counted as errors
            break
        for key, mask in events:
            exchange: _Exchange = key.data
            if mask & selectors.EVENT_WRITE:
                if exchange.sent == 0 and exchange.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    abort(exchange)  # the connection was refused
                    continue
                _send(exchange)
                continue
            try:
                chunk = exchange.sock.recv(65536)
            except OSError:
                chunk = None
            if not chunk and exchange.reused and not exchange.buf:
                retry(exchange)  # closed by the server while it sat idle (its keep-alive timeout)
                continue
            if chunk is None:
                abort(exchange)
                continue
            exchange.buf += chunk
            try:
                answer = parse_response(exchange.buf, eof=not chunk)
            except ValueError:
                abort(exchange)
                continue
            if answer is not None:
                finish(exchange, *answer)
            elif not chunk:
                abort(exchange)
    result.seconds = time.perf_counter() - start
    for sock in idle:
        sock.close()
    selector.close()
    return result
