"""The benchmark's load generator (bench/loadgen.py): it counts what the server answered, paces an open loop,
and reuses connections the server keeps alive."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bench.loadgen import build_request, parse_response, run


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # (path, body, its number on its connection): one handler object serves all the requests of one connection.
    # (Not the client's port: the server closes first, so the kernel may hand the same port out again at once.)
    seen: list[tuple[str, bytes, int]] = []
    served = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.served += 1
        self.seen.append((self.path, body, self.served))
        status = 503 if self.path.startswith("/busy") else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        if "close" in self.path:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


def _requests(port: int, path: str, n: int = 3) -> list[bytes]:
    return [build_request("127.0.0.1", port, f"{path}?i={i}", f"body-{i}".encode()) for i in range(n)]


def test_closed_loop_sends_each_request_whole_and_counts_the_answers(server: int) -> None:
    result = run("127.0.0.1", server, _requests(server, "/close"), connections=2, duration=0.3)
    assert result.sent == result.ok == len(_Handler.seen) > 0
    assert result.errors == 0 and result.statuses == {200: result.ok}
    assert {(p, b) for p, b, _ in _Handler.seen} <= {(f"/close?i={i}", f"body-{i}".encode()) for i in range(3)}
    assert {nth for *_, nth in _Handler.seen} == {1}  # `Connection: close`: a connection for each


def test_kept_alive_connections_are_reused(server: int) -> None:
    result = run("127.0.0.1", server, _requests(server, "/keep"), connections=2, duration=0.3)
    assert result.ok == len(_Handler.seen) > 10
    assert len([nth for *_, nth in _Handler.seen if nth == 1]) <= 2  # two connections, opened once each


def test_open_loop_sends_what_falls_due_and_no_more(server: int) -> None:
    result = run("127.0.0.1", server, _requests(server, "/close"), connections=8, duration=0.5, rate=200)
    assert result.sent == result.ok == len(_Handler.seen) == 100  # due at 0, 5, 10 … 495 ms
    assert len(result.latencies) == 100 and min(result.latencies) > 0


def test_other_statuses_and_refused_connections_are_errors(server: int) -> None:
    busy = run("127.0.0.1", server, _requests(server, "/busy/close"), connections=1, duration=0.2)
    assert busy.ok == 0 and busy.errors == busy.sent > 0 and busy.statuses == {503: busy.sent}
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    refused = run("127.0.0.1", closed_port, _requests(closed_port, "/"), connections=2, duration=0.2, rate=50)
    assert refused.ok == 0 and refused.errors == refused.sent == 10
    closed_loop = run("127.0.0.1", closed_port, _requests(closed_port, "/"), connections=2, duration=0.2)
    assert closed_loop.ok == 0 and closed_loop.errors == closed_loop.sent > 0  # and it ended


@pytest.mark.parametrize(("raw", "eof", "answer"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, (200, True)),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", False, None),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab", False, (200, False)),
    (b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", True, (503, False)),
    (b"HTTP/1.0 200 OK\r\n\r\nbody to the end", False, None),
    (b"HTTP/1.0 200 OK\r\n\r\nbody to the end", True, (200, False)),
    (b"HTTP/1.1 200 OK\r\nContent-Le", False, None),
])
def test_parse_response(raw: bytes, eof: bool, answer: tuple[int, bool] | None) -> None:
    assert parse_response(raw, eof) == answer


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Le",
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
])
def test_parse_response_refuses_what_it_cannot_read(raw: bytes) -> None:
    with pytest.raises(ValueError, match="closed|chunked"):
        parse_response(raw, eof=True)
