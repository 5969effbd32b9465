"""A fake WeCom (企业微信模拟器) for tests, the demo and users without a corp.

state = SimState(); load_scenario_file(state, demo_scenario_path())
server = SimulatorServer(create_simulator_app(state)).start()   # real HTTP on 127.0.0.1
WeComClient(..., api_base=server.api_base)
"""

from __future__ import annotations

from bot.wecom.simulator.app import create_simulator_app
from bot.wecom.simulator.callbacks import CallbackEmitter
from bot.wecom.simulator.scenario import demo_scenario_path, load_scenario, load_scenario_file
from bot.wecom.simulator.server import SimulatorServer, run
from bot.wecom.simulator.state import SimState

__all__ = [
    "SimState",
    "create_simulator_app",
    "CallbackEmitter",
    "load_scenario",
    "load_scenario_file",
    "demo_scenario_path",
    "SimulatorServer",
    "run",
]
