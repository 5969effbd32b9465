from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.wecom.client import WeComClient
from bot.wecom.jssdk import TicketStore, agent_config_params, config_params, sign_jsapi
from tests.wecom.conftest import Sim

VECTORS = json.loads((Path(__file__).parent / "fixtures" / "vectors.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "vec", VECTORS["jssdk_signature_vectors"], ids=lambda v: v["url"] if "url" in v else v["url_signed"]
)
def test_sign_jsapi_matches_every_vector(vec: dict[str, str]) -> None:
    url = vec.get("url") or vec["url_as_loaded"]  # the as-loaded URL still carries its #fragment
    assert sign_jsapi(vec["jsapi_ticket"], vec["noncestr"], vec["timestamp"], url) == vec["signature"]


def test_config_and_agent_config_params() -> None:
    vec = VECTORS["jssdk_signature_vectors"][0]
    params = config_params(
        "ww59709431338c5fb3",
        vec["jsapi_ticket"],
        vec["url"],
        ["getContext"],
        noncestr=vec["noncestr"],
        timestamp=int(vec["timestamp"]),
    )
    assert params == {
        "beta": True,
        "debug": False,
        "appId": "ww59709431338c5fb3",
        "timestamp": 1414587457,
        "nonceStr": vec["noncestr"],
        "signature": vec["signature"],
        "jsApiList": ["getContext"],
    }
    agent = agent_config_params(
        "ww59709431338c5fb3",
        1000002,
        vec["jsapi_ticket"],
        vec["url"] + "#/x",
        ["getCurExternalContact"],
        noncestr=vec["noncestr"],
        timestamp=1414587457,
    )
    assert agent["agentid"] == "1000002" and agent["corpid"] == "ww59709431338c5fb3"
    assert agent["signature"] == vec["signature"]


def test_ticket_store_caches_and_refreshes(sim: Sim, make_client: Callable[..., WeComClient]) -> None:
    a, b = TicketStore(make_client()), TicketStore(make_client())
    assert a.corp_ticket() == b.corp_ticket()
    assert a.agent_ticket() == b.agent_ticket() != a.corp_ticket()
    assert len(sim.calls("get_jsapi_ticket")) == 1 and len(sim.calls("ticket/get")) == 1
    old = a.agent_ticket()
    sim.state.advance(7200)
    assert b.agent_ticket() != old
    assert len(sim.calls("ticket/get")) == 2
    params = a.agent_config_params("https://crm.example.com/sidebar?x=1#/c", ["getCurExternalContact"])
    assert params["signature"] == sign_jsapi(
        a.agent_ticket(), params["nonceStr"], params["timestamp"], "https://crm.example.com/sidebar?x=1"
    )
