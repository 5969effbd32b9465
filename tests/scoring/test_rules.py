from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from bot.scoring import KNOWN_EVENT_KINDS, ScoringConfigError, load_config, parse_config, parse_config_text
from bot.scoring.rules import parse_duration

EXAMPLE = Path(__file__).resolve().parents[2] / "scripts_library" / "content" / "scoring.yaml"

MINIMAL = """\
half_life_days: 14
stage_thresholds: {engaged: 10, mql: 40, sql: 70}
rules:
  - id: kw_price
    name: 询价
    on: keyword_rule_fired
    match: {rule_id: kw-price}
    points: 15
    dimension: engagement
    cap: 30
    repeat_limit: 2
    repeat_window: 7d
  - id: size
    name: 规模
    on: tag_added
    match: {tag: ["规模:200人以上", "规模:500人以上"]}
    points: 10
    dimension: fit
"""


def test_example_config_loads_and_is_realistic() -> None:
    config = load_config(EXAMPLE)
    assert config.sla_minutes == 30
    assert config.stage_thresholds == {"engaged": 15, "mql": 45, "sql": 75}
    assert {r.dimension for r in config.rules} == {"fit", "engagement"}
    assert any(r.points < 0 for r in config.rules)
    assert all(r.on in KNOWN_EVENT_KINDS for r in config.rules)
    assert not any(r.decaying for r in config.rules if r.dimension == "fit")


def test_minimal_parses_with_defaults() -> None:
    config = parse_config_text(MINIMAL)
    price, size = config.rules
    assert price.on == "keyword_rule_fired"  # `on:` must stay a string key, not YAML 1.1 True
    assert price.repeat_window == timedelta(days=7)
    assert price.decaying and not size.decaying
    assert size.match == {"tag": ("规模:200人以上", "规模:500人以上")}
    assert config.sla_minutes == 30 and config.hysteresis == 0 and config.fallback_userid is None


def test_yes_no_are_strings_in_match() -> None:
    config = parse_config_text(MINIMAL.replace("{rule_id: kw-price}", "{answer: no}"))
    assert config.rules[0].match == {"answer": "no"}
    assert yaml.safe_load("on: 1") == {True: 1}  # the stock loader is left untouched


def test_json_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "scoring.json"
    f.write_text(
        '{"half_life_days": 7, "stage_thresholds": {"engaged": 1, "mql": 2, "sql": 3},\n'
        ' "rules": [{"id": "r", "name": "n", "on": "customer_replied", "points": 1,\n'
        '            "dimension": "engagement"}]}',
        encoding="utf-8",
    )
    assert load_config(f).rules[0].id == "r"


@pytest.mark.parametrize(
    ("old", "new", "line", "fragment"),
    [
        ("points: 15", "points: fifteen", 8, "rules[0].points: must be an integer"),
        ("points: 15", "points: 0", 4, "points must not be 0"),
        ("on: keyword_rule_fired", "on: keyword_fired", 6, "unknown event kind 'keyword_fired'"),
        ("dimension: fit", "dimension: fit\n    decays: true", 19, "fit points never decay"),
        ("repeat_window: 7d", "repeat_window: 7", 12, "not a duration"),
        ("cap: 30", "cap: -5", 4, "cap must be a positive"),
        ("id: size", "id: kw_price", 13, "duplicate rule id"),
        ("    cap: 30", "    cpa: 30", 10, "rules[0].cpa: unknown key"),
        ("mql: 40", "mql: 5", 1, "must rise strictly"),
    ],
)
def test_errors_carry_file_and_line(tmp_path: Path, old: str, new: str, line: int, fragment: str) -> None:
    f = tmp_path / "scoring.yaml"
    assert old in MINIMAL
    f.write_text(MINIMAL.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ScoringConfigError) as info:
        load_config(f)
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"{f}:{line}:")


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("half_life_days: 14\nrules: [\n  {id: x\n", encoding="utf-8")
    with pytest.raises(ScoringConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_config(f)


def test_duplicate_key_has_line(tmp_path: Path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text(MINIMAL.replace("    points: 10\n", "    points: 10\n    points: 12\n"), encoding="utf-8")
    with pytest.raises(ScoringConfigError, match=r"dup\.yaml:18: duplicate key 'points'"):
        load_config(f)


def test_missing_file_and_dict_errors(tmp_path: Path) -> None:
    with pytest.raises(ScoringConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ScoringConfigError, match="^rules: must be a non-empty list"):
        parse_config({"half_life_days": 1, "stage_thresholds": {"engaged": 1, "mql": 2, "sql": 3}})
    with pytest.raises(ScoringConfigError, match="stage_thresholds: missing 'sql'"):
        parse_config({"half_life_days": 1, "stage_thresholds": {"engaged": 1, "mql": 2}, "rules": [
            {"id": "r", "name": "n", "on": "customer_replied", "points": 1, "dimension": "engagement"}]})


def test_parse_duration() -> None:
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("2w") == timedelta(days=14)
    with pytest.raises(ValueError):
        parse_duration("1y")
