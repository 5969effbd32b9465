from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from bot.tagging import (
    BehaviourKind,
    KeywordMatcher,
    MatchMode,
    RuleError,
    load_rule_file,
    parse_behaviour_rules,
    parse_keyword_rules,
)

RULES_DIR = Path(__file__).resolve().parents[2] / "scripts_library" / "content" / "rules"


def test_example_rule_files_load_and_compile() -> None:
    keywords = load_rule_file(RULES_DIR / "keywords.yaml")
    behaviour = load_rule_file(RULES_DIR / "behaviour.yaml")
    assert {r.id for r in keywords.keyword_rules} >= {"intent_pricing", "intent_trial", "stage_business"}
    assert {r.kind for r in behaviour.behaviour_rules} >= {
        BehaviourKind.ADDED_VIA_CHANNEL,
        BehaviourKind.OPENED_LINK,
        BehaviourKind.NO_REPLY_DAYS,
    }
    KeywordMatcher.compile(keywords.keyword_rules)


def test_parse_full_keyword_rule() -> None:
    [rule] = parse_keyword_rules(
        [
            {
                "id": "pricing",
                "name": "询价",
                "mode": "word",
                "keywords": ["price", {"text": "价格", "mode": "contains"}],
                "negatives": ["不需要"],
                "scope": {"chat_types": ["single"], "sources": ["kf"], "employees": ["zs"]},
                "threshold": {"count": 3, "window": "7d"},
                "cooldown": "1d12h",
                "add_tags": ["意向:询价"],
            }
        ]
    )
    assert [k.mode for k in rule.keywords] == [MatchMode.WORD, MatchMode.CONTAINS]
    assert rule.negatives[0].mode is MatchMode.CONTAINS  # the rule's default mode is for keywords only
    assert rule.threshold is not None and rule.threshold.window == timedelta(days=7)
    assert rule.cooldown == timedelta(hours=36)
    assert rule.scope.sources == frozenset({"kf"})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"keywords": [], "add_tags": ["a:b"]}, "keywords: at least one keyword is required"),
        ({"keywords": [{"text": "x", "mode": "fuzzy"}], "add_tags": ["a:b"]}, "keywords[0].mode: unknown mode"),
        ({"keywords": [{"text": "(", "mode": "regex"}], "add_tags": ["a:b"]}, "invalid regex"),
        ({"keywords": [{"text": "a" * 301, "mode": "regex"}], "add_tags": ["a:b"]}, "longer than 300"),
        ({"keywords": [{"text": "a*", "mode": "regex"}], "add_tags": ["a:b"]}, "empty string"),
        ({"keywords": [{"text": "價格", "mode": "regex"}], "add_tags": ["a:b"]}, "traditional"),
        ({"keywords": ["x"], "add_tags": ["nocolon"]}, "add_tags[0]: tag 'nocolon'"),
        ({"keywords": ["x"]}, "must add or remove at least one tag"),
        ({"keywords": ["x"], "add_tags": ["a:b"], "negative": ["y"]}, "negative: unknown field"),
        ({"keywords": ["x"], "add_tags": ["a:b"], "scope": {"sources": ["wechat"]}}, "unknown value 'wechat'"),
        ({"keywords": ["x"], "add_tags": ["a:b"], "cooldown": 7}, "cooldown: expected a duration"),
        ({"keywords": ["x"], "add_tags": ["a:b"], "threshold": {"count": 0, "window": "1d"}}, "threshold.count"),
        ({"keywords": ["  "], "add_tags": ["a:b"]}, "empty after normalisation"),
    ],
)
def test_keyword_rule_errors_name_rule_and_field(raw: dict[str, object], message: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_keyword_rules([{"id": "r1", **raw}], source_name="api")
    assert any(e.startswith("api: rule 'r1': ") and message in e for e in info.value.errors), info.value.errors


def test_duplicate_ids_and_all_errors_collected() -> None:
    with pytest.raises(RuleError) as info:
        parse_keyword_rules(
            [
                {"id": "a", "keywords": ["x"], "add_tags": ["a:b"]},
                {"id": "a", "keywords": [], "add_tags": ["a:b"]},
            ]
        )
    assert len(info.value.errors) == 2
    assert "duplicate id" in info.value.errors[0]


def test_behaviour_rule_params_validated() -> None:
    [rule] = parse_behaviour_rules(
        [
            {
                "id": "b",
                "kind": "event_count",
                "params": {"event_kind": "link_opened", "count": 3, "window": "7d"},
                "add_tags": ["状态:活跃"],
            }
        ]
    )
    assert rule.params["window"] == timedelta(days=7)
    with pytest.raises(RuleError, match=r"params.channel: required"):
        parse_behaviour_rules([{"id": "b", "kind": "added_via_channel", "add_tags": ["a:b"]}])
    with pytest.raises(RuleError, match=r"unknown kind 'clicked'"):
        parse_behaviour_rules([{"id": "b", "kind": "clicked", "add_tags": ["a:b"]}])
    with pytest.raises(RuleError, match=r"params.event_kind: unknown event kind"):
        parse_behaviour_rules(
            [
                {
                    "id": "b",
                    "kind": "event_count",
                    "params": {"event_kind": "x", "count": 1, "window": "1d"},
                    "add_tags": ["a:b"],
                }
            ]
        )
    with pytest.raises(RuleError, match=r"params.days: must be an integer"):
        parse_behaviour_rules([{"id": "b", "kind": "no_reply_days", "params": {"days": "14"}, "add_tags": ["a:b"]}])


def test_file_errors_carry_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\n"
        "keyword_rules:\n"
        "  - id: pricing\n"
        "    keywords:\n"
        "      - 价格\n"
        "      - {text: price, mode: fuzzy}\n"
        "    add_tags: [意向:询价]\n"
        "behaviour_rules:\n"
        "  - id: pricing\n"
        "    kind: deleted_employee\n"
        "    cooldown: soon\n"
        "    add_tags: [状态:流失]\n",
        encoding="utf-8",
    )
    with pytest.raises(RuleError) as info:
        load_rule_file(path)
    assert info.value.errors == [
        f"{path}:6: rule 'pricing': keywords[1].mode: unknown mode 'fuzzy' "
        "(expected one of contains, exact, prefix, suffix, regex, word)",
        f"{path}:9: rule 'pricing': id: duplicate id (first defined as rules[0])",
        f"{path}:11: rule 'pricing': cooldown: expected a duration such as '7d', '12h' or '1d12h', got 'soon'",
    ]


def test_yaml_syntax_error_and_duplicate_key_carry_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("keyword_rules:\n  - id: a\n    keywords: [x\n", encoding="utf-8")
    with pytest.raises(RuleError, match=rf"^{broken}:\d+: invalid YAML"):
        load_rule_file(broken)
    dup = tmp_path / "dup.yaml"
    dup.write_text("keyword_rules:\n  - id: a\n    keywords: [x]\n    keywords: [y]\n", encoding="utf-8")
    with pytest.raises(RuleError, match=rf"^{dup}:4: duplicate key 'keywords'"):
        load_rule_file(dup)
