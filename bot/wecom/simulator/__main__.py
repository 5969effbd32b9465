"""`python -m bot.wecom.simulator --port 8081 --scenario …`"""

from __future__ import annotations

from bot.wecom.simulator.server import run

if __name__ == "__main__":
    run()
