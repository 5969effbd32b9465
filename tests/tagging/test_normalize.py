from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bot.tagging.normalize import excerpt, normalize, normalize_with_offsets


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
