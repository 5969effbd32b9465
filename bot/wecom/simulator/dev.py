"""The simulator inside `sopbot dev` / `make demo`: mounted at /sim, seeded, replaying a demo day.

WECOM_API_BASE points at /sim/cgi-bin/, and the simulator POSTs its encrypted callbacks to the
dev server's /wecom/callback, so a newcomer sees customers arrive through channel codes, get
their channel tags and welcome messages, chat, and delete or be deleted — without a WeCom corp.
"""

from __future__ import annotations

import logging
import random
import threading
from pathlib import Path
from typing import Any

import yaml
from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from bot.config import Settings
from bot.wecom.simulator.app import create_simulator_app
from bot.wecom.simulator.scenario import demo_scenario_path, load_scenario
from bot.wecom.simulator.state import SimState

log = logging.getLogger("sopbot.demo")

__all__ = ["mount_simulator", "demo_simulator", "DemoReplay"]

SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
    "姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
GIVEN = ["伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超",
         "秀兰", "霞", "平", "刚", "桂英", "晨", "子涵", "浩然", "雨桐", "思远", "嘉怡", "宇航"]
COMPANIES = ["苏州精工机械", "杭州优品零售", "宁波海纳电子", "成都天府医疗", "深圳云启科技", "南京博学教育",
             "青岛海岸物流", "武汉光谷软件", "厦门鹭岛食品", "合肥新能制造"]
CHANNELS = {"webinar": ["WangFang", "ZhaoLei"], "expo2025_booth12": ["LiMing", "ZhaoLei"], "website": ["WangFang"],
            "poster_qr_0412": ["WangFang"]}
CUSTOMER_LINES = ["请问价格多少？", "你们有试用版吗", "我们公司30人左右，想了解一下", "报价单发我一下",
                  "不需要了，谢谢", "可以约个演示吗", "合同模板能先看看吗", "好的，我先看看资料"]


def demo_simulator(settings: Settings, callback_url: str | None = None) -> Flask:
    """The simulator app playing the demo corp (scenarios/demo.yaml) for these settings, on a live clock."""
    state = SimState(corp_id=settings.corp_id, live=True)
    data = yaml.safe_load(Path(demo_scenario_path()).read_text(encoding="utf-8"))
    data["corp_id"] = settings.corp_id
    data.setdefault("apps", {}).setdefault(str(settings.agent_id), {})["secret"] = settings.agent_secret
    data["apps"][str(settings.agent_id)]["agent_id"] = settings.agent_id
    load_scenario(state, data)
    return create_simulator_app(state, {"callback_url": callback_url, "callback_token": settings.callback_token,
                                        "encoding_aes_key": settings.encoding_aes_key,
                                        "agent_id": str(settings.agent_id)})


def mount_simulator(app: Flask, *, callback_url: str, demo: bool = True,
                    month_days: int = 0) -> tuple[Any, DemoReplay | None]:
    """Return a WSGI app serving `app` with the simulator under /sim, and the demo replay it started (None without
    `demo`): the caller stops the replay before the web server goes, so no callback is posted to a closed port.

    `month_days`: when the database has no customer yet, first play that many simulated days of the demo through
    the real pipeline (bot/wecom/simulator/month.py), so /dashboard has a month of history from the start.
    """
    from bot import get_services

    services = get_services(app)
    sim = demo_simulator(services.settings, callback_url)
    if month_days > 0:
        from bot.wecom.simulator.month import DemoMonth, database_is_empty

        if database_is_empty(services):
            log.info("demo: first start on an empty database: playing %d simulated days through the pipeline …",
                     month_days)
            result = DemoMonth(services, app, sim, days=month_days).run()
            log.info("demo: month seeded: %d customers, %d messages, %d SOP steps done in %.0f s",
                     result.customers, result.messages, result.tasks_done, result.seconds)
        else:
            log.info("demo: the database already has customers; not seeding the demo month again")
    replay = DemoReplay(sim) if demo else None
    if replay is not None:
        replay.start()
    return DispatcherMiddleware(app, {"/sim": sim}), replay


class DemoReplay(threading.Thread):
    """A bounded stream of realistic events, a few seconds apart, through the simulator's actions."""

    def __init__(self, sim: Flask, *, events: int = 40, interval: float = 3.0, seed: int = 2026) -> None:
        super().__init__(name="sopbot-demo-replay", daemon=True)
        self.client = sim.test_client()
        self.kf_accounts = sorted(sim.config["SIM_STATE"].kf_accounts)
        self.events, self.interval = events, interval
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible demo, not security
        self.added: list[tuple[str, str]] = []
        self.stopping = threading.Event()

    def _act(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.client.post(f"/_sim/actions/{name}", json=body)
        if resp.status_code != 200:
            log.warning("demo action %s answered %s: %s", name, resp.status_code, resp.get_data(as_text=True)[:200])
            return {}
        return dict(resp.get_json() or {})

    def step(self, n: int) -> None:
        roll = self.rng.random()
        if self.added and roll < 0.12:
            userid, ext = self.added.pop(self.rng.randrange(len(self.added)))
            action = "customer_deletes" if self.rng.random() < 0.5 else "delete_customer"
            self._act(action, {"userid": userid, "external_userid": ext})
            log.info("demo: %s (%s, %s)", action, userid, ext)
            return
        if self.added and self.kf_accounts and roll < 0.45:
            _, ext = self.rng.choice(self.added)
            self._act("kf_message", {"open_kfid": self.kf_accounts[0], "external_userid": ext,
                                     "text": self.rng.choice(CUSTOMER_LINES)})
            return
        state = self.rng.choice(list(CHANNELS))
        userid = self.rng.choice(CHANNELS[state])
        name = self.rng.choice(SURNAMES) + self.rng.choice(GIVEN)
        added = self._act("add_customer", {"userid": userid, "name": name, "state": state,
                                           "profile": {"corp_name": self.rng.choice(COMPANIES)}})
        if added.get("external_userid"):
            self.added.append((userid, added["external_userid"]))
            log.info("demo: %s added %s through %s", userid, name, state)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the replay to end and wait for the step in flight (it may be posting a callback)."""
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        if self.stopping.wait(2.0):  # let the web server bind before the first callback arrives
            return
        for n in range(self.events):
            try:
                self.step(n)
            except Exception:  # the demo must never take the dev server down
                log.exception("demo step failed")
            if self.stopping.wait(self.interval):
                return
