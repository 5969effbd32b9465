"""`sopbot sync` against the simulator: complete, idempotent, resumable after an interruption."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from bot.models import KV, Customer, CustomerTag, Employee, FollowRelation, GroupChat
from bot.services import Services
from bot.sync import CHECKPOINT_KEY, run_sync
from tests.conftest import SimHarness


def _counts(services: Services) -> tuple[int, int, int]:
    with services.transaction() as s:
        return tuple(int(s.scalar(select(func.count()).select_from(m)) or 0)  # type: ignore[return-value]
                     for m in (Customer, FollowRelation, CustomerTag))


def _sim_relations(sim: SimHarness) -> tuple[int, int]:
    relations = sim.state.relations
    return len({ext for (_, ext) in relations}), len(relations)


def test_sync_mirrors_employees_customers_tags_and_groups(services: Services, sim: SimHarness) -> None:
    seen: list[tuple[str, int]] = []
    report = run_sync(services, progress=lambda stage, done, total: seen.append((stage, done)))
    customers, follows = _sim_relations(sim)
    assert report.customer_rows == follows
    c, f, t = _counts(services)
    assert (c, f) == (customers, follows)
    assert t > 0  # the scenario's customers carry corp tags
    with services.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Employee)) == len(sim.state.employees)
        assert s.scalar(select(func.count()).select_from(GroupChat)) == len(sim.state.groups)
        zhang = s.scalar(select(Customer).where(Customer.name == "张伟"))
        assert zhang is not None and zhang.corp_name == "苏州精工机械有限公司"
        tags = set(s.scalars(select(CustomerTag.name).where(CustomerTag.customer_id == zhang.id)).all())
        assert {"展会", "高", "制造业"} <= tags
        state = s.scalar(select(FollowRelation.state).where(FollowRelation.customer_id == zhang.id))
        assert state == "expo2025_booth12"
    assert ("customers", follows) in seen
    # a second run writes the same rows again: nothing doubles
    run_sync(services, reset=True)
    assert _counts(services) == (c, f, t)


def test_interrupted_sync_resumes_where_it_stopped(services: Services, sim: SimHarness, monkeypatch: Any) -> None:
    client = services.wecom
    real_call = client.call
    pages = {"n": 0}

    def flaky(method: str, path: str, **kw: Any) -> Any:
        if path == "externalcontact/batch/get_by_user":
            pages["n"] += 1
            if pages["n"] == 4:
                raise KeyboardInterrupt  # the operator pressed Ctrl-C mid-sync
        return real_call(method, path, **kw)

    monkeypatch.setattr(client, "call", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_sync(services, groups=False, page_limit=5)
    with services.transaction() as s:
        checkpoint = s.get(KV, CHECKPOINT_KEY)
        assert checkpoint is not None and checkpoint.value["rows"] == 15 and not checkpoint.value["finished"]
    monkeypatch.setattr(client, "call", real_call)
    before = len(sim.calls("externalcontact/batch/get_by_user"))
    report = run_sync(services, groups=False, page_limit=5)
    assert report.resumed
    customers, follows = _sim_relations(sim)
    resumed_calls = len(sim.calls("externalcontact/batch/get_by_user")) - before
    assert resumed_calls == report.pages and report.customer_rows == follows - 15  # did not start over
    assert _counts(services)[:2] == (customers, follows)
