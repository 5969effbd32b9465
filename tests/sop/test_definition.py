from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from bot.sop.definition import (
    AllOf,
    AnyOf,
    Condition,
    Executor,
    Not,
    Reentry,
    SopDefinitionError,
    load_sop_file,
    load_sops,
    parse_sop,
)
from scripts_library import CONTENT_ROOT


def test_shipped_sops_parse() -> None:
    sops = load_sops(CONTENT_ROOT / "sops")
    assert set(sops) == {"nurture_webinar", "welcome_new_customer", "reactivate_dormant"}
    nurture = sops["nurture_webinar"]
    assert [t.event for t in nurture.crowd.triggers] == ["customer_added", "tag_added"]
    assert nurture.crowd.triggers[0].channel == "webinar" and nurture.crowd.triggers[1].tag == "来源:直播"
    assert nurture.calendar.business_days and nurture.calendar.quiet_hours == (time(21), time(9))
    assert nurture.executor == Executor("owner", None, "wangfang")
    assert [e.kind for e in nurture.exit] == ["tag_added", "stage_at_least", "deleted"]
    case = nurture.step("d7_case_study")
    assert [v.id for v in case.variants] == ["A_story", "B_data"] and case.timing.at == time(10, 30)
    assert nurture.step("d14_trial_invite").touchpoint == "mass_send"
    dormant = sops["reactivate_dormant"]
    assert isinstance(dormant.crowd.filter, AllOf)
    assert isinstance(dormant.crowd.filter.items[3], AnyOf)
    assert dormant.reentry == Reentry("every", 90)
    assert dormant.executor == Executor("role", "csm", "zhaolei")
    assert dormant.step("moments_case").timing.unit == "months"
    welcome = sops["welcome_new_customer"]
    assert welcome.step("intro").timing.relative_to == "enrollment"
    assert welcome.step("checkin").timing.relative_to == "previous"


def _sop(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "t",
        "crowd": {"trigger": [{"event": "customer_added"}]},
        "steps": [{"id": "a", "day": 0, "content": "x"}],
    }
    base.update(over)
    return base


def test_plain_dict_and_unquoted_times() -> None:
    sop = parse_sop(
        _sop(
            steps=[{"id": "a", "day": 1, "at": 600, "content": "x"}],  # YAML reads 10:00 as 600
            calendar={"quiet_hours": "22:00-08:00"},
        )
    )
    assert sop.steps[0].timing.at == time(10, 0)
    assert sop.calendar.quiet_hours == (time(22), time(8))
    assert sop.calendar.timezone == "Asia/Shanghai" and sop.capped == "defer" and sop.reentry.policy == "never"


def test_filter_tree() -> None:
    sop = parse_sop(_sop(crowd={"filter": {"any": [{"tag_has": "行业:制造"}, {"not": {"score_lte": 10}}]}}))
    assert sop.crowd.filter == AnyOf((Condition("tag_has", "行业:制造"), Not(Condition("score_lte", 10.0))))


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"crowd": {"filter": {"tag_has": "x"}, "trigger": []}}, "exactly one of 'filter' or 'trigger'"),
        ({"crowd": {"filter": {"tag_has": "nocolon"}}}, "group:name"),
        ({"crowd": {"filter": {"stage_at_least": "VIP"}}}, "unknown stage"),
        ({"crowd": {"trigger": [{"event": "tag_added"}]}}, "needs 'tag'"),
        ({"steps": [{"id": "a", "touchpoint": "sms", "day": 0, "content": "x"}]}, "touchpoint must be"),
        ({"steps": [{"id": "a", "content": "x"}]}, "exactly one timing"),
        ({"steps": [{"id": "a", "cron": "61 * * * *", "content": "x"}]}, "invalid cron"),
        ({"steps": [{"id": "a", "day": 0, "content": "x"}, {"id": "a", "day": 1, "content": "y"}]}, "duplicate step"),
        ({"steps": [{"id": "a", "day": 0, "variants": [{"id": "A", "script": "x", "weight": 1}]}]}, "at least two"),
        ({"calendar": {"timezone": "Mars/Base"}}, "unknown time zone"),
        ({"calendar": {"quiet_hours": "night"}}, "quiet_hours"),
        ({"executor": "boss"}, "executor must be"),
        ({"exit": ["left_crowd"]}, "left_crowd needs a filter crowd"),
        ({"exit": [{"tag_added": "x"}]}, "group:name"),
        ({"reentry": "sometimes"}, "reentry must be"),
        ({"capped": "explode"}, "capped must be"),
        ({"bogus": 1}, "unknown key 'bogus'"),
    ],
)
def test_schema_errors(override: dict[str, object], fragment: str) -> None:
    with pytest.raises(SopDefinitionError) as info:
        parse_sop(_sop(**override), "mem.yaml")
    assert fragment in str(info.value)
    assert str(info.value).startswith("mem.yaml:")


def test_errors_carry_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "id: bad\n"
        "crowd:\n"
        "  trigger: [{event: customer_added}]\n"
        "steps:\n"
        "  - id: a\n"
        "    after: soon\n"
        "    content: x\n"
        "  - id: b\n"
        "    day: 1\n"
        "    at: '25:00'\n"
        "    content: x\n",
        encoding="utf-8",
    )
    with pytest.raises(SopDefinitionError) as info:
        load_sop_file(path)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{path}:6: after must look like")
    assert lines[1] == f"{path}:10: at must look like '10:00'"
    assert [(p.line) for p in info.value.problems] == [6, 10]


def test_load_sops_reports_duplicates(tmp_path: Path) -> None:
    text = "id: same\ncrowd: {trigger: {event: customer_added}}\nsteps: [{id: a, day: 0, content: x}]\n"
    (tmp_path / "a.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(SopDefinitionError, match="duplicate SOP id 'same'"):
        load_sops(tmp_path)
