"""Load a YAML/JSON scenario (模拟企业数据) into a SimState.

Ids left out of the file are derived from names with a hash, so the same scenario always
yields the same `wm…`/`et…`/`wr…` ids — demo links and fixtures stay valid across restarts.
Tags are referenced as "group/tag" names; relations as `follow:` entries under a customer.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bot.wecom.simulator.state import SimState

__all__ = ["load_scenario", "load_scenario_file", "demo_scenario_path", "stable_id"]

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def stable_id(prefix: str, *parts: str, length: int = 32) -> str:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return prefix + "".join(_ALNUM[b % len(_ALNUM)] for b in digest)[: length - len(prefix)]


def demo_scenario_path() -> Path:
    return Path(str(resources.files("bot.wecom.simulator") / "scenarios" / "demo.yaml"))


def load_scenario_file(state: SimState, path: str | Path) -> dict[str, int]:
    with open(path, encoding="utf-8") as fh:
        return load_scenario(state, yaml.safe_load(fh) or {})


def load_scenario(state: SimState, data: dict[str, Any]) -> dict[str, int]:
    """Merge `data` into `state`; returns counts per section (what the control API answers)."""
    with state.lock:
        now = state.now()
        if data.get("corp_id"):
            state.corp_id = data["corp_id"]
        for name, app in (data.get("apps") or {}).items():
            state.apps[str(name)] = {"ip_trusted": True, "agent_id": None, **app}
        for d in data.get("departments") or []:
            state.departments[int(d["id"])] = {
                "id": int(d["id"]),
                "name": d["name"],
                "parentid": int(d.get("parentid", 1)),
                "order": int(d.get("order", 0)),
            }
        for e in data.get("employees") or []:
            depts = [int(x) for x in e.get("department") or [1]]
            leader = [1 if e.get("is_leader") else 0] * len(depts)
            extra = {k: v for k, v in e.items() if k not in ("userid", "name", "department", "is_leader")}
            state.add_employee(e["userid"], e["name"], depts, is_leader_in_dept=leader, **extra)

        tag_ids: dict[str, str] = {}
        for order, g in enumerate(reversed(data.get("tag_groups") or [])):
            gid = g.get("group_id") or stable_id("et", "group", g["name"])
            tags: list[dict[str, Any]] = []
            for t_order, t in enumerate(reversed(g.get("tags") or [])):
                spec = t if isinstance(t, dict) else {"name": t}
                tid = spec.get("id") or stable_id("et", "tag", g["name"], spec["name"])
                tags.insert(
                    0,
                    {"id": tid, "name": spec["name"], "create_time": now, "order": t_order, "deleted": False},
                )
                tag_ids[f"{g['name']}/{spec['name']}"] = tid
            state.tag_groups[gid] = {
                "group_id": gid,
                "group_name": g["name"],
                "create_time": now,
                "order": order,
                "deleted": False,
                "tag": tags,
            }

        for c in data.get("customers") or []:
            profile = {k: v for k, v in c.items() if k not in ("external_userid", "name", "follow")}
            eid = state.add_customer(
                c["name"], c.get("external_userid") or stable_id("wm", "customer", c["name"]), **profile
            )
            for f in c.get("follow") or []:
                tags = [tag_ids.get(t, t) for t in f.get("tags") or []]
                state.relate(
                    f["userid"],
                    eid,
                    createtime=now - int(float(f.get("added_days_ago", 0)) * 86400),
                    remark=f.get("remark", ""),
                    description=f.get("description", ""),
                    tags=tags,
                    state=f.get("state", ""),
                    add_way=int(f.get("add_way", 1)),
                )

        for state_name, users in (data.get("channel_codes") or {}).items():
            state.contact_ways[str(state_name)] = list(users)
        for g in data.get("groups") or []:
            members = [
                m if m in state.employees or m.startswith(("wm", "wo")) else stable_id("wm", "customer", m)
                for m in g.get("members") or []
            ]
            state.create_group(
                {**g, "members": members, "chat_id": g.get("chat_id") or stable_id("wr", "group", g["name"])}
            )
        for k in data.get("kf_accounts") or []:
            state.kf_accounts[k.get("open_kfid") or stable_id("wk", "kf", k["name"])] = k["name"]
        return {
            "employees": len(state.employees),
            "departments": len(state.departments),
            "tag_groups": len(state.tag_groups),
            "customers": len(state.customers),
            "relations": len(state.relations),
            "groups": len(state.groups),
            "kf_accounts": len(state.kf_accounts),
            "channel_codes": len(state.contact_ways),
        }
