"""Text normalisation shared by messages and keywords.

``normalize(text)`` = NFKC (full/half width, compatibility forms) → case fold → traditional→simplified
(OpenCC ``t2s``) → whitespace runs collapsed to one space, stripped. Keywords go through the very same
function at compile time, so "ＰＲＩＣＥ", "Price" and "price" all meet, and "價格" meets "价格".

Excerpts: the matcher finds hits in the *normalised* text, but the timeline should show what the customer
actually wrote. ``normalize_with_offsets`` rebuilds the normalised text while tracking, for every output
character, the index of the original character it came from. It is only called for messages that hit a
rule (the hot path never pays for it). When the per-character rebuild does not reproduce ``normalize``
exactly (OpenCC converted a phrase to a different length, or NFKC composed across characters) the map is
``None`` and the excerpt is cut from the normalised text instead: ``excerpt`` documents both cases.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence

import opencc

from bot.tagging.t2s_triggers import CHARS as _T2S_CHARS

# One converter for the process: loading the dictionaries costs milliseconds, converting costs µs. The
# C++ converter is immutable once loaded and the binding holds the GIL during ``convert``, so sharing it
# between threads is safe.
_T2S = opencc.OpenCC("t2s")

# Characters without which OpenCC t2s returns a text unchanged (derived from OpenCC's own dictionaries by
# bot/tagging/t2s_gen.py, checked against the installed ones by tests/tagging/test_normalize.py). A set
# membership pass over the text costs a fraction of the converter call, and most Chinese chat is already
# simplified: the call is skipped for ~99% of messages, and the result is the same.
_T2S_TRIGGERS = frozenset(_T2S_CHARS)
# The check is a regex character class for the BMP part (a bitmap lookup in `re`, ~20x cheaper than iterating
# the text in Python) and a set test for the few astral triggers (CJK extension B …), run only when the text
# has an astral character at all (emoji do); `re` scans astral classes linearly, so they are kept apart.
_BMP_TRIGGER = re.compile("[" + "".join(re.escape(c) for c in sorted(_T2S_TRIGGERS) if ord(c) <= 0xFFFF) + "]")
_ASTRAL_TRIGGERS = frozenset(c for c in _T2S_TRIGGERS if ord(c) > 0xFFFF)
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")

# Full-width ASCII (U+FF01-FF5E) and the ideographic space are the compatibility characters of everyday
# Chinese chat ("，" "？" "！"). Their NFKC form is one ASCII character that does not depend on neighbours, so
# replacing them first is exact (NFKD(s) is unchanged by replacing a character with its own decomposition),
# and often leaves a text that is already NFKC: the full normalisation, ~10x dearer, is then skipped.
_FULLWIDTH = re.compile("[\uff01-\uff5e\u3000]")
_FULLWIDTH_MAP = {chr(cp): chr(cp - 0xFEE0) for cp in range(0xFF01, 0xFF5F)} | {"\u3000": " "}

# Characters that fold (NFKC + casefold) to exactly one character and never compose with a neighbour:
# ASCII, CJK punctuation (minus the combining tone marks U+302A-F), CJK ideographs, full-width ASCII,
# emoji. Checked over every code point by tests/tagging/test_normalize.py.
_ONE_TO_ONE = re.compile(
    r"[\x00-\x7f\u3000-\u3029\u3030-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff01-\uff5e\U0001f300-\U0001faff]*"
)

EXCERPT_RADIUS = 20
"""Characters kept on each side of a hit in an excerpt."""


def _t2s(text: str) -> str:
    """OpenCC t2s, skipped (exactly: same result) when no trigger character is present."""
    if text.isascii():
        return text
    if _BMP_TRIGGER.search(text) is None:
        astral = _ASTRAL.search(text)
        if astral is None or _ASTRAL_TRIGGERS.isdisjoint(text[astral.start():]):
            return text
    return _T2S.convert(text)


def _nfkc(text: str) -> str:
    if unicodedata.is_normalized("NFKC", text):
        return text
    text = _FULLWIDTH.sub(_fullwidth, text)
    return text if unicodedata.is_normalized("NFKC", text) else unicodedata.normalize("NFKC", text)


def _fullwidth(m: re.Match[str]) -> str:
    return _FULLWIDTH_MAP[m[0]]


def _fold(text: str) -> str:
    return _t2s(_nfkc(text).casefold())


def reference_normalize(text: str) -> str:
    """The specification, without shortcuts: NFKC, case fold, OpenCC t2s always, whitespace collapsed.
    ``normalize`` must equal it for every text (tests/tagging/test_normalize.py)."""
    return " ".join(_T2S.convert(unicodedata.normalize("NFKC", text).casefold()).split())


def normalize(text: str) -> str:
    """Normalise ``text`` for matching (see the module docstring)."""
    return " ".join(_fold(text).split())


def fold_and_normalize(text: str) -> tuple[str, str]:
    """``(folded, normalize(text))``: the text before the whitespace collapse, kept by the matcher so an
    excerpt needs no second normalisation."""
    if len(text) <= _SHORT:
        return _fold_and_normalize_short(text)
    folded = _fold(text)
    return folded, " ".join(folded.split())


_SHORT = 12


@functools.lru_cache(maxsize=4096)
def _fold_and_normalize_short(text: str) -> tuple[str, str]:
    # Chat is dominated by a few short lines ("好的", "谢谢", "收到", "在吗？"): remembering them skips
    # OpenCC, the largest share of a message's cost. lru_cache is thread-safe; memory is bounded.
    folded = _fold(text)
    return folded, " ".join(folded.split())


def simplified_halfwidth(text: str) -> str:
    """NFKC + traditional→simplified only: used to check regex patterns, where case folding or space
    collapsing would change the pattern's meaning (``\\D`` is not ``\\d``)."""
    return _t2s(_nfkc(text))


def normalize_with_offsets(
    text: str, folded_and_norm: tuple[str, str] | None = None
) -> tuple[str, Sequence[int] | None]:
    """Return ``(normalize(text), offsets)``: ``offsets[i]`` is the index in ``text`` of the character
    that produced normalised character ``i``, or ``offsets`` is ``None`` when no exact per-character
    alignment exists (then callers excerpt from the normalised text). ``folded_and_norm`` is
    ``fold_and_normalize(text)`` when the caller already has it."""
    folded, expected = folded_and_norm or fold_and_normalize(text)
    origin: list[int] | None = None  # None: folded[i] comes from text[i]
    if not (_ONE_TO_ONE.fullmatch(text) and len(folded) == len(text)):
        pieces: list[str] = []
        origin = []
        i = 0
        n = len(text)
        while i < n:
            # A base character plus its combining marks is the unit NFKC may compose; treat it as one.
            j = i + 1
            while j < n and unicodedata.combining(text[j]):
                j += 1
            piece = unicodedata.normalize("NFKC", text[i:j]).casefold()
            pieces.append(piece)
            origin.extend([i] * len(piece))
            i = j
        folded = "".join(pieces)
        if not folded.isascii():
            converted = _t2s(folded)
            # OpenCC is phrase based: a length change means characters no longer line up one to one.
            if len(converted) != len(folded):
                return expected, None
            folded = converted
    elif folded == expected:
        return expected, range(len(expected))  # the common case: nothing moved
    out: list[str] = []
    offsets: list[int] = []
    space_at = -1  # index in `folded` of the first whitespace of a pending run; -1 = none pending
    for k, ch in enumerate(folded):
        if ch.isspace():
            if out and space_at < 0:
                space_at = k
            continue
        if space_at >= 0:
            out.append(" ")
            offsets.append(space_at)
            space_at = -1
        out.append(ch)
        offsets.append(k)
    if "".join(out) != expected:
        return expected, None
    if origin is not None:
        offsets = [origin[k] for k in offsets]
    return expected, offsets


def excerpts(
    original: str,
    spans: Sequence[tuple[int, int]],
    radius: int = EXCERPT_RADIUS,
    folded_and_norm: tuple[str, str] | None = None,
) -> list[str]:
    """One excerpt per normalised-text span ``[start, end)`` (the alignment is computed once).

    Cut from ``original`` when the offsets can be aligned, else from the normalised text. Either way,
    "…" marks a cut and whitespace is collapsed so the excerpt fits on one timeline line.
    Short messages (at most ``radius`` characters, most chat lines) are their own excerpt.
    """
    if len(original) <= radius:
        return [" ".join(original.split())] * len(spans)
    norm, offsets = normalize_with_offsets(original, folded_and_norm)
    out: list[str] = []
    cuts: dict[tuple[int, int, bool], str] = {}  # several rules often hit the same words
    if type(offsets) is range:
        # The common case (``normalize_with_offsets``: every character of ``original`` is one of ``_ONE_TO_ONE``
        # and nothing moved): normalised index i is original index i, and ``original`` has no combining mark
        # to extend a hit over. The general loop below gives the same cuts, at several times the cost.
        n = len(original)
        for start, end in spans:
            if not 0 <= start < end <= n:  # cut from the normalised text, as below
                a, b = max(0, max(0, start) - radius), min(n, min(n, end) + radius)
                out.append(("…" if a > 0 else "") + " ".join(norm[a:b].split()) + ("…" if b < n else ""))
                continue
            a = start - radius if start > radius else 0
            b = end + radius if end + radius < n else n
            known = cuts.get((a, b, True))
            if known is None:
                body = " ".join(original[a:b].split())
                known = cuts[(a, b, True)] = ("…" if a else "") + body + ("…" if b < n else "")
            out.append(known)
        return out
    for start, end in spans:
        if offsets is not None and 0 <= start < end <= len(offsets):
            source = original
            o_start = offsets[start]
            o_end = offsets[end - 1] + 1
            # Include trailing combining marks of the last hit character.
            while o_end < len(original) and unicodedata.combining(original[o_end]):
                o_end += 1
        else:
            source = norm
            o_start, o_end = max(0, start), min(len(norm), end)
        lo = max(0, o_start - radius)
        hi = min(len(source), o_end + radius)
        key = (lo, hi, source is original)
        cut = cuts.get(key)
        if cut is None:
            body = " ".join(source[lo:hi].split())
            cut = cuts[key] = ("…" if lo > 0 else "") + body + ("…" if hi < len(source) else "")
        out.append(cut)
    return out


def excerpt(original: str, start: int, end: int, radius: int = EXCERPT_RADIUS) -> str:
    """Excerpt around one normalised-text span; see ``excerpts``."""
    return excerpts(original, [(start, end)], radius)[0]
