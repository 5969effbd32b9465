"""Serving the simulator: in a background thread (tests, `sopbot dev`) or as its own process."""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

__all__ = ["SimulatorServer", "run"]


class SimulatorServer:
    """A threaded werkzeug server around a simulator app; port 0 picks a free port."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="wecom-sim", daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    @property
    def api_base(self) -> str:
        """What WECOM_API_BASE should be set to."""
        return f"{self.base_url}/cgi-bin/"

    def start(self) -> SimulatorServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run(argv: list[str] | None = None) -> None:
    """`python -m bot.wecom.simulator --port 8081 --scenario demo.yaml --callback-url http://…/wecom/callback`"""
    from bot.wecom.simulator.app import DEFAULT_CALLBACK, create_simulator_app
    from bot.wecom.simulator.scenario import demo_scenario_path, load_scenario_file
    from bot.wecom.simulator.state import SimState

    p = argparse.ArgumentParser(
        prog="python -m bot.wecom.simulator", description="Fake WeCom API + callbacks"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument(
        "--scenario", default=str(demo_scenario_path()), help="YAML scenario ('' for an empty corp)"
    )
    p.add_argument("--callback-url", default=None, help="sopbot's /wecom/callback; omitted = /_sim/outbox")
    p.add_argument("--callback-token", default=DEFAULT_CALLBACK["token"])
    p.add_argument("--encoding-aes-key", default=DEFAULT_CALLBACK["encoding_aes_key"])
    p.add_argument("--agent-id", default="1000002")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    state = SimState()
    if args.scenario:
        load_scenario_file(state, args.scenario)
    app = create_simulator_app(
        state,
        {
            "callback_url": args.callback_url,
            "callback_token": args.callback_token,
            "encoding_aes_key": args.encoding_aes_key,
            "agent_id": args.agent_id,
        },
    )
    server = SimulatorServer(app, args.host, args.port)
    logging.getLogger(__name__).info(
        "WeCom simulator for %s on %s (WECOM_API_BASE)", state.corp_id, server.api_base
    )
    server._server.serve_forever()
