from __future__ import annotations

import time

import pytest

from bot.tagging import KeywordMatcher, MatchMode, RuleError, Scope

from .factories import msg, rule


def fired(matcher: KeywordMatcher, text: str, **kwargs: object) -> list[str]:
    departments = kwargs.pop("departments", frozenset())
    return [h.rule_id for h in matcher.match(msg(text, **kwargs), departments)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mode", "text", "expected"),
    [
        ("contains", "请问价格多少", True),
        ("contains", "价", False),
        ("exact", "价格", True),
        ("exact", " 价格 ", True),  # whitespace is stripped by normalisation
        ("exact", "价格?", False),
        ("prefix", "价格多少", True),
        ("prefix", "请问价格", False),
        ("suffix", "请问价格", True),
        ("suffix", "价格多少", False),
        ("word", "价格", True),
    ],
)
def test_literal_modes(mode: str, text: str, expected: bool) -> None:
    matcher = KeywordMatcher.compile([rule("r", ("价格", mode))])
    assert (fired(matcher, text) == ["r"]) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the price?", True),
        ("price", True),
        ("PRICE!", True),
        ("价格price多少", True),  # CJK neighbours do not glue to a Latin word
        ("priceless", False),
        ("pricelist", False),
        ("2price", False),
        ("price_list", True),  # "_" is not a letter or digit
    ],
)
def test_whole_word(text: str, expected: bool) -> None:
    matcher = KeywordMatcher.compile([rule("r", ("price", "word"))])
    assert (fired(matcher, text) == ["r"]) is expected


def test_whole_word_later_occurrence_counts() -> None:
    matcher = KeywordMatcher.compile([rule("r", ("price", "word"))])
    hits = matcher.match(msg("priceless, but what is the price"))
    assert [h.rule_id for h in hits] == ["r"]


def test_regex_mode_on_normalised_text() -> None:
    matcher = KeywordMatcher.compile([rule("r", (r"\d+个?账号", "regex"))])
    assert fired(matcher, "我们要５０個賬號") == ["r"]  # full-width digits, traditional characters
    assert fired(matcher, "账号多少") == []


def test_width_traditional_and_case_meet() -> None:
    matcher = KeywordMatcher.compile([rule("en", "price"), rule("zh", "价格"), rule("tw", "報價")])
    assert fired(matcher, "ＰＲＩＣＥ") == ["en"]
    assert fired(matcher, "Price") == ["en"]
    assert fired(matcher, "價格") == ["zh"]
    assert fired(matcher, "报价") == ["tw"]  # keywords are normalised too


def test_negative_blocks_anywhere() -> None:
    matcher = KeywordMatcher.compile([rule("r", "价格", negatives=("不需要",))])
    assert fired(matcher, "不需要价格表") == []
    assert fired(matcher, "价格表就不需要了") == []
    assert fired(matcher, "价格表发我") == ["r"]


def test_negative_containing_the_keyword() -> None:
    # The product's own example: "不需要" must not fire a "需要" rule.
    matcher = KeywordMatcher.compile([rule("need", "需要", negatives=("不需要",))])
    assert fired(matcher, "不需要") == []
    assert fired(matcher, "需要") == ["need"]


def test_negative_only_blocks_its_own_rule() -> None:
    matcher = KeywordMatcher.compile([rule("a", "价格", negatives=("太贵",)), rule("b", "价格")])
    assert fired(matcher, "价格太贵") == ["b"]


def test_at_most_once_per_rule_and_message() -> None:
    matcher = KeywordMatcher.compile([rule("r", "价格", "报价", "多少钱", (r"\d+", "regex"))])
    hits = matcher.match(msg("价格和报价，多少钱，价格 100"))
    assert [(h.rule_id, h.keyword) for h in hits] == [("r", "价格")]


def test_employee_messages_never_match() -> None:
    matcher = KeywordMatcher.compile([rule("r", "价格"), rule("x", (".", "regex"))])
    assert fired(matcher, "价格", direction="employee") == []
    verdicts = matcher.explain(msg("价格", direction="employee"))
    assert {v.rule_id: v.fired for v in verdicts} == {"r": False, "x": False}
    assert all("direction:employee" in v.reason for v in verdicts)


def test_scope_employee_and_department() -> None:
    scope = Scope(employees=frozenset({"lisi"}), departments=frozenset({"sales"}))
    matcher = KeywordMatcher.compile([rule("r", "价格", scope=scope)])
    assert fired(matcher, "价格", employee_id="lisi") == ["r"]
    assert fired(matcher, "价格", employee_id="wangwu", departments=frozenset({"sales", "hq"})) == ["r"]
    assert fired(matcher, "价格", employee_id="wangwu", departments=frozenset({"hq"})) == []
    assert fired(matcher, "价格", employee_id=None) == []


def test_scope_chat_type_and_source() -> None:
    matcher = KeywordMatcher.compile(
        [
            rule("single", "价格", scope=Scope(chat_types=frozenset({"single"}))),
            rule("group", "价格", scope=Scope(chat_types=frozenset({"group"}))),
            rule("archive", "价格", scope=Scope(sources=frozenset({"archive"}))),
        ]
    )
    assert fired(matcher, "价格") == ["single"]
    assert fired(matcher, "价格", group_id="wr_group") == ["group"]
    assert fired(matcher, "价格", source="archive") == ["single", "archive"]


def test_disabled_rules_do_not_match() -> None:
    matcher = KeywordMatcher.compile([rule("r", "价格", enabled=False)])
    assert fired(matcher, "价格") == []


def test_hit_carries_keyword_mode_and_original_excerpt() -> None:
    matcher = KeywordMatcher.compile([rule("r", ("price", "word"))])
    [hit] = matcher.match(msg("Hi! What's the ＰＲＩＣＥ of the pro plan?"))
    assert hit.keyword == "price"
    assert hit.mode is MatchMode.WORD
    assert "ＰＲＩＣＥ" in hit.excerpt


def test_explain_reasons() -> None:
    matcher = KeywordMatcher.compile(
        [
            rule("neg", "价格", negatives=("不需要",)),
            rule("scoped", "价格", scope=Scope(sources=frozenset({"archive"}))),
            rule("exact", ("价格", "exact")),
            rule("ok", "价格表"),
            rule("silent", "合同"),
        ]
    )
    verdicts = {v.rule_id: v for v in matcher.explain(msg("不需要价格表"))}
    assert set(verdicts) == {"neg", "scoped", "exact", "ok"}  # "silent" had no hit: not listed
    assert verdicts["neg"].reason.endswith("negative:不需要")
    assert verdicts["scoped"].reason.endswith("scope:source")
    assert verdicts["exact"].reason.endswith("mode:exact")
    assert verdicts["ok"].fired and verdicts["ok"].keyword == "价格表"


def test_regex_timeout_is_bounded_and_reported() -> None:
    matcher = KeywordMatcher.compile([rule("evil", (r"(a+)+$", "regex")), rule("ok", "b")], regex_timeout=0.05)
    text = "a" * 5000 + "b"
    started = time.perf_counter()
    outcome = matcher.match_outcome(msg(text))
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0
    assert outcome.regex_timeouts == ("evil",)
    assert [h.rule_id for h in outcome.hits] == ["ok"]
    verdicts = {v.rule_id: v.reason for v in matcher.explain(msg(text))}
    assert verdicts["evil"].endswith("regex_timeout")


def test_regex_negative_timeout_blocks_conservatively() -> None:
    matcher = KeywordMatcher.compile([rule("r", "b", negatives=((r"(a+)+$", "regex"),))], regex_timeout=0.02)
    outcome = matcher.match_outcome(msg("a" * 5000 + "b"))
    assert outcome.hits == ()
    assert outcome.regex_timeouts == ("r",)


def test_compile_rejects_duplicates_and_bad_regex() -> None:
    with pytest.raises(RuleError, match="duplicate id"):
        KeywordMatcher.compile([rule("r", "a"), rule("r", "b")])
    with pytest.raises(RuleError, match="invalid regex"):
        KeywordMatcher.compile([rule("r", ("(", "regex"))])


def test_no_rules_matches_nothing() -> None:
    assert KeywordMatcher.compile([]).match(msg("价格")) == []


def test_explain_regex_rule_out_of_scope() -> None:
    matcher = KeywordMatcher.compile([rule("rx", (r"\d+个账号", "regex"), scope=Scope(sources=frozenset({"app"})))])
    assert fired(matcher, "50个账号") == []
    [verdict] = matcher.explain(msg("50个账号"))
    assert not verdict.fired and verdict.reason.endswith("scope:source")


def test_message_requires_aware_time_and_known_values() -> None:
    from datetime import datetime

    from bot.tagging import InboundMessage

    with pytest.raises(ValueError, match="aware"):
        InboundMessage("m", "kf", "c", "e", None, "customer", "hi", datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="source"):
        InboundMessage("m", "sms", "c", "e", None, "customer", "hi", msg("x").at)  # type: ignore[arg-type]
    assert msg("x", group_id="wr1").chat_type == "group" and msg("x").chat_type == "single"
