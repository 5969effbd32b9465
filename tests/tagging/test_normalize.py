from __future__ import annotations

from typing import Any

import opencc
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.tagging.normalize import (
    excerpt,
    fold_and_normalize,
    normalize,
    normalize_with_offsets,
    reference_normalize,
    simplified_halfwidth,
)


def test_width_case_traditional_and_spaces() -> None:
    assert normalize("ＰＲＩＣＥ") == "price"
    assert normalize("Price") == "price"
    assert normalize("價格") == "价格"
    assert normalize("  請問\u3000價格\n\t多少？ ") == "请问 价格 多少?"
    assert normalize("") == ""


def test_offsets_point_into_the_original() -> None:
    original = "  請問   ＰＲＩＣＥ是多少"
    norm, offsets = normalize_with_offsets(original)
    assert norm == "请问 price是多少"
    assert offsets is not None
    start = norm.index("price")
    assert original[offsets[start] : offsets[start + 4] + 1] == "ＰＲＩＣＥ"


def test_excerpt_uses_original_text_and_marks_cuts() -> None:
    original = "前" * 30 + "價格" + "后" * 30
    norm = normalize(original)
    start = norm.index("价格")
    cut = excerpt(original, start, start + 2, radius=3)
    assert cut == "…前前前價格后后后…"


@given(st.text(max_size=40))
def test_offsets_normalised_text_is_always_normalize(text: str) -> None:
    norm, offsets = normalize_with_offsets(text)
    assert norm == normalize(text)
    if offsets is not None:
        assert len(offsets) == len(norm)
        assert all(0 <= o < len(text) for o in offsets)
        assert list(offsets) == sorted(offsets)


def test_fast_path_characters_fold_one_to_one() -> None:
    # normalize_with_offsets trusts position i -> i for texts made only of these characters.
    import unicodedata

    from bot.tagging.normalize import _ONE_TO_ONE

    second_of_pair = set()
    for cp in range(0x110000):
        decomposition = unicodedata.decomposition(chr(cp)).split()
        if len(decomposition) == 2 and not decomposition[0].startswith("<"):
            second_of_pair.add(chr(int(decomposition[1], 16)))
    safe = [chr(cp) for cp in range(0x110000) if _ONE_TO_ONE.fullmatch(chr(cp))]
    assert len(safe) > 29000
    for ch in safe:
        assert len(unicodedata.normalize("NFKC", ch).casefold()) == 1, hex(ord(ch))
        assert not unicodedata.combining(ch) and ch not in second_of_pair, hex(ord(ch))


# --- the fast normalize equals the plain specification -----------------------------------------------------

# Traditional characters and whole phrases OpenCC converts (including those made only of characters that do
# not convert alone: 回覆, 深沈, 瞭解), full-width forms, combining marks, cases, astral (CJK ext. B, emoji).
_PIECES = [
    "價格", "請問", "試用", "發票", "回覆", "深沈", "瞭解", "不瞭解", "藉口", "乾隆", "乾淨", "著名", "衹得", "英哩",
    "价格", "请问", "回", "覆", "沈", "坏", "毛坏", "ＰＲＩＣＥ", "Ｐ", "，", "？", "！", "\u3000", " ", "\n", "\t",
    "A", "é", "e\u0301", "Ａ\u0301", "ß", "ﬁ", "Ⅻ", "①", "㍿", "\uf900", "\u2f00", "𠮷", "𫐷", "遱", "👍", "ok",
    "Ǆ", "İ", "ﾊﾟ", "ｶﾞ", "丽", "\u0300", "걺", "ᄀ\u1161",
]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=3)), max_size=12))
def test_normalize_equals_reference(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert normalize(text) == reference_normalize(text)
    assert fold_and_normalize(text)[1] == reference_normalize(text)


def test_normalize_equals_reference_on_the_bench_corpus() -> None:
    import random

    from bench.keywords import make_messages, make_rules

    rules = make_rules(300, random.Random(7))
    texts = [m.text for m in make_messages(3000, random.Random(7), rules)]
    assert sum(1 for t in texts if normalize(t) != t) > 100  # the corpus does exercise the conversions
    assert [normalize(t) for t in texts] == [reference_normalize(t) for t in texts]


def test_every_converting_phrase_and_character_is_a_trigger() -> None:
    # Exhaustive: the trigger set recomputed from the installed OpenCC (every code point converted on its
    # own, every phrase of its dictionaries read with the wheel's opencc_dict) is the one shipped.
    from bot.tagging import t2s_gen
    from bot.tagging.t2s_triggers import CHARS, OPENCC_VERSION

    assert OPENCC_VERSION == t2s_gen.opencc_version()
    assert t2s_gen.compute() == CHARS
    converter = opencc.OpenCC("t2s")
    triggers = set(CHARS)
    for name in t2s_gen.DICTS:
        for key, _ in t2s_gen.dictionary(name):
            if converter.convert(key) != key:
                assert not triggers.isdisjoint(key), key  # skipping OpenCC for texts without one is exact


@given(st.lists(st.sampled_from(_PIECES), max_size=8))
def test_simplified_halfwidth_equals_nfkc_then_opencc(pieces: list[str]) -> None:
    import unicodedata

    text = "".join(pieces)
    assert simplified_halfwidth(text) == opencc.OpenCC("t2s").convert(unicodedata.normalize("NFKC", text))


@example("价格请问ＡaB，?！👍ok价格請問ＡaB，?！👍ok", [(0, 2), (5, 9), (0, 2), (30, 33), (-1, 3), (3, 3)])
@given(st.text(alphabet="价格請問 \u3000\t ＡaB，?！👍ok", min_size=21, max_size=70), st.data())
def test_excerpts_identity_fast_path_equals_the_general_cut(text: str, data: Any) -> None:
    # excerpts() short-cuts texts whose offsets are the identity (a range); the general loop, fed the same offsets
    # as a list, must cut the same excerpts for every span, including spans outside the text.
    import importlib

    module = importlib.import_module("bot.tagging.normalize")

    norm, offsets = normalize_with_offsets(text)
    n = len(norm)
    spans = data if isinstance(data, list) else data.draw(
        st.lists(st.tuples(st.integers(-2, n + 2), st.integers(-2, n + 2)), min_size=1, max_size=5))
    if isinstance(data, list):
        assert type(offsets) is range  # the example takes the fast path
    fast = module.excerpts(text, spans, radius=4)
    original = module.normalize_with_offsets
    try:
        module.normalize_with_offsets = lambda t, f=None: (norm, None if offsets is None else list(offsets))
        general = module.excerpts(text, spans, radius=4)
    finally:
        module.normalize_with_offsets = original
    assert fast == general
