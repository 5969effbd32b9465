"""JS-SDK signing for the sidebar (企业微信JS-SDK: wx.config / wx.agentConfig).

Two tickets exist: the corp ticket (get_jsapi_ticket) signs `wx.config`, the app ticket
(ticket/get?type=agent_config) signs `wx.agentConfig`, which customer-contact APIs such as
getCurExternalContact need (PROTOCOL.md §3.11). Tickets are rate-limited (400/h per corp,
100/h per app), so they are cached in Redis for all processes exactly like the access_token.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

from bot.wecom.client import SharedCredential, WeComClient

__all__ = ["sign_jsapi", "config_params", "agent_config_params", "TicketStore"]


def sign_jsapi(ticket: str, noncestr: str, timestamp: str | int, url: str) -> str:
    """SHA-1 over 'jsapi_ticket=…&noncestr=…&timestamp=…&url=…' — fixed order, raw values, no #fragment."""
    page = url.split("#", 1)[0]
    string1 = f"jsapi_ticket={ticket}&noncestr={noncestr}&timestamp={timestamp}&url={page}"
    return hashlib.sha1(string1.encode()).hexdigest()  # noqa: S324 - WeCom's algorithm, not our choice


def _signed(ticket: str, url: str, noncestr: str | None, timestamp: int | None) -> tuple[str, int, str]:
    noncestr = noncestr or secrets.token_hex(8)
    timestamp = int(time.time()) if timestamp is None else timestamp
    return noncestr, timestamp, sign_jsapi(ticket, noncestr, timestamp, url)


def config_params(
    corp_id: str,
    ticket: str,
    url: str,
    js_api_list: list[str],
    *,
    noncestr: str | None = None,
    timestamp: int | None = None,
    debug: bool = False,
) -> dict[str, Any]:
    """Arguments for `wx.config` (signed with the CORP ticket)."""
    nonce, ts, signature = _signed(ticket, url, noncestr, timestamp)
    return {
        "beta": True,
        "debug": debug,
        "appId": corp_id,
        "timestamp": ts,
        "nonceStr": nonce,
        "signature": signature,
        "jsApiList": list(js_api_list),
    }


def agent_config_params(
    corp_id: str,
    agent_id: int | str,
    ticket: str,
    url: str,
    js_api_list: list[str],
    *,
    noncestr: str | None = None,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """Arguments for `wx.agentConfig` (signed with the APP ticket); success/fail callbacks are added in JS."""
    nonce, ts, signature = _signed(ticket, url, noncestr, timestamp)
    return {
        "corpid": corp_id,
        "agentid": str(agent_id),
        "timestamp": ts,
        "nonceStr": nonce,
        "signature": signature,
        "jsApiList": list(js_api_list),
    }


class TicketStore:
    """Corp and app jsapi tickets shared through Redis (single-flight refresh, early expiry margin)."""

    def __init__(
        self, client: WeComClient, *, margin: float = 300, clock: Callable[[], float] | None = None
    ) -> None:
        self.client = client
        base = f"{client.key_prefix}:%s:{client.corp_id}:{client.secret_id}"
        clock = clock or client.clock
        self.corp = SharedCredential(
            client.redis, base % "jsapi_ticket", client.get_jsapi_ticket, clock=clock, margin=margin
        )
        self.agent = SharedCredential(
            client.redis, base % "agent_ticket", client.get_agent_ticket, clock=clock, margin=margin
        )

    def corp_ticket(self) -> str:
        return self.corp.get()

    def agent_ticket(self) -> str:
        return self.agent.get()

    def config_params(self, url: str, js_api_list: list[str], **kw: Any) -> dict[str, Any]:
        return config_params(self.client.corp_id, self.corp_ticket(), url, js_api_list, **kw)

    def agent_config_params(self, url: str, js_api_list: list[str], **kw: Any) -> dict[str, Any]:
        if self.client.agent_id is None:
            raise ValueError("wx.agentConfig needs the app's agent_id")
        return agent_config_params(
            self.client.corp_id, self.client.agent_id, self.agent_ticket(), url, js_api_list, **kw
        )
