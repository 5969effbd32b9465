"""The compiled matcher agrees with the obvious per-rule loop (the SCRM "strpos" way) on random input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.tagging import Keyword, KeywordMatcher, KeywordRule, MatchMode, Scope
from bot.tagging.normalize import normalize

from .factories import msg

# A tiny alphabet makes overlaps, repeats and boundary cases frequent; it mixes Latin (both widths and
# cases), simplified/traditional Chinese, punctuation and spaces.
ALPHABET = "abAＢ1 价格價不要，!"
LITERAL_MODES = [m for m in MatchMode if m is not MatchMode.REGEX]


def is_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def occurs(text: str, kw: Keyword) -> bool:
    key = normalize(kw.text)
    start = text.find(key)
    while start != -1:
        end = start + len(key)
        if kw.mode is MatchMode.CONTAINS:
            return True
        if kw.mode is MatchMode.EXACT and start == 0 and end == len(text):
            return True
        if kw.mode is MatchMode.PREFIX and start == 0:
            return True
        if kw.mode is MatchMode.SUFFIX and end == len(text):
            return True
        if kw.mode is MatchMode.WORD:
            left_ok = start == 0 or not (is_word_char(text[start - 1]) and is_word_char(key[0]))
            right_ok = end == len(text) or not (is_word_char(text[end]) and is_word_char(key[-1]))
            if left_ok and right_ok:
                return True
        start = text.find(key, start + 1)
    return False


def reference(rules: list[KeywordRule], text: str, source: str) -> list[str]:
    norm = normalize(text)
    fired = []
    for r in rules:
        if not r.enabled or (r.scope.sources and source not in r.scope.sources):
            continue
        if any(occurs(norm, n) for n in r.negatives):
            continue
        if any(occurs(norm, k) for k in r.keywords):
            fired.append(r.id)
    return fired


keyword_text = st.text(alphabet=ALPHABET, min_size=1, max_size=3).filter(lambda t: normalize(t) != "")
keywords = st.builds(Keyword, keyword_text, st.sampled_from(LITERAL_MODES))


@st.composite
def rule_lists(draw: st.DrawFn) -> list[KeywordRule]:
    count = draw(st.integers(min_value=1, max_value=8))
    return [
        KeywordRule(
            id=f"r{i}",
            name=f"r{i}",
            keywords=tuple(draw(st.lists(keywords, min_size=1, max_size=3))),
            negatives=tuple(draw(st.lists(keywords, max_size=2))),
            scope=Scope(sources=draw(st.sampled_from([frozenset(), frozenset({"kf"}), frozenset({"app"})]))),
            add_tags=("t:t",),
            enabled=draw(st.booleans()),
        )
        for i in range(count)
    ]


@settings(max_examples=400, deadline=None)
@given(rule_lists(), st.text(alphabet=ALPHABET, max_size=12), st.sampled_from(["kf", "app"]))
def test_matcher_equals_reference(rules: list[KeywordRule], text: str, source: str) -> None:
    hits = KeywordMatcher.compile(rules).match(msg(text, source=source))
    assert [h.rule_id for h in hits] == reference(rules, text, source)
    by_id = {r.id: r for r in rules}
    for hit in hits:
        kw = Keyword(hit.keyword, hit.mode)
        assert kw in by_id[hit.rule_id].keywords and occurs(normalize(text), kw)
