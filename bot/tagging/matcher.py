"""Keyword matcher: every literal keyword and negative of every rule in ONE Aho-Corasick automaton.

Per message the cost is one pass over the normalised text plus work proportional to the hits, whatever
the number of rules. Modes other than "contains" are decided from the hit's position: exact/prefix/
suffix against the text bounds, word against the neighbouring characters. Regex keywords are the only
per-rule work; each search runs with a timeout (``regex`` module) so a pathological pattern costs at most
``regex_timeout`` seconds and is reported instead of hanging the worker.

A rule fires at most once per message: when its keywords hit (first hit in text order is reported), no
negative of it occurs anywhere in the message, and the message is in scope. Only customer messages match.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import ahocorasick
import regex

from bot.tagging.model import InboundMessage, KeywordRule, MatchMode, Scope
from bot.tagging.normalize import EXCERPT_RADIUS, excerpts, fold_and_normalize, normalize
from bot.tagging.rules import RuleError, compile_regex

logger = logging.getLogger(__name__)

REGEX_TIMEOUT_S = 0.05
"""Upper bound for one regex search. Customer messages are short: a legitimate pattern needs µs."""

# Position checks, as small ints: the hot loop compares ints, not enum members.
# Word mode is resolved at compile time into which edges of the keyword are Latin (only those edges need a
# boundary); a keyword with no Latin edge is plain "contains".
_CONTAINS, _EXACT, _PREFIX, _SUFFIX, _WORD_LEFT, _WORD_RIGHT, _WORD_BOTH = range(7)
_MODE_CODE = {
    MatchMode.CONTAINS: _CONTAINS,
    MatchMode.EXACT: _EXACT,
    MatchMode.PREFIX: _PREFIX,
    MatchMode.SUFFIX: _SUFFIX,
}
_WORD_CHARS = frozenset(string.ascii_letters + string.digits)

_EMPTY: frozenset[str] = frozenset()
_ANYWHERE = Scope()

# Reason codes of RuleVerdict, with the Chinese text the rule tester shows next to them.
REASONS = {
    "fired": "命中",
    "negative": "命中否定词",
    "scope": "不在适用范围",
    "direction": "员工发送的消息不参与匹配",
    "mode": "关键词出现但位置/整词条件不符",
    "regex_timeout": "正则超时",
}



def _placed(code: int, norm: str, start: int, end: int, last: int) -> bool:
    """Whether a hit of a non-`contains` keyword at norm[start:end + 1] sits where its mode requires."""
    if code == _EXACT:
        return start == 0 and end == last
    if code == _PREFIX:
        return start == 0
    if code == _SUFFIX:
        return end == last
    # word: a Latin edge must not be glued to a Latin neighbour
    return (code == _WORD_RIGHT or start == 0 or norm[start - 1] not in _WORD_CHARS) and (
        code == _WORD_LEFT or end == last or norm[end + 1] not in _WORD_CHARS
    )

class KeywordHit(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: built for every hit on the hot path, and a frozen
    # dataclass's __init__ costs several times a tuple's.
    rule_id: str
    keyword: str  # the keyword as written in the rule
    mode: MatchMode
    excerpt: str  # from the original text when alignable, else the normalised text (see normalize.py)


# KeywordHit(*fields, excerpt) through the NamedTuple's Python-level __new__ costs ~1.7x building the tuple
# directly; the fields are always exactly the four above.
_new_tuple = tuple.__new__


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    rule_id: str
    fired: bool
    reason: str  # "命中 fired", "命中否定词 negative:不需要", "不在适用范围 scope:source", "… mode:exact"
    keyword: str | None


@dataclass(frozen=True, slots=True)
class MatchOutcome:
    hits: tuple[KeywordHit, ...]
    regex_timeouts: tuple[str, ...]  # ids of rules whose regex search timed out on this message


def _mode_code(mode: MatchMode, key: str) -> int:
    if mode is not MatchMode.WORD:
        return _MODE_CODE[mode]
    left, right = key[0] in _WORD_CHARS, key[-1] in _WORD_CHARS
    if left and right:
        return _WORD_BOTH
    return _WORD_LEFT if left else _WORD_RIGHT if right else _CONTAINS


# Automaton payload for one normalised keyword: (length, groups). A group shares one position check:
# (mode code, is_negative, {rule index: keyword index}). Negatives such as "不需要" are shared by
# thousands of rules, so a negative hit only records its group's dict; a positive rule is then blocked
# by a membership test per recorded dict, never by touching every rule that lists the negative.
_Group = tuple[int, bool, dict[int, int]]
_Payload = tuple[int, tuple[_Group, ...]]
_Patterns = tuple[tuple[int, regex.Pattern[str]], ...]


@dataclass(slots=True)
class _Scan:
    """What one message did to the rules (indices into KeywordMatcher.rules)."""

    positive: dict[int, tuple[int, int, int]]  # rule -> (keyword index, start, end) of its first hit
    negatives: list[dict[int, int]]  # groups of negatives present: rule -> negative index
    misplaced: dict[int, int]  # rule -> keyword present but failing its mode (explain only)
    timeouts: list[int]

    def blocking_negative(self, ri: int) -> int | None:
        for group in self.negatives:
            if ri in group:
                return group[ri]
        return None


class KeywordMatcher:
    """Compiled, immutable, shareable between threads. Build with ``KeywordMatcher.compile(rules)``."""

    def __init__(
        self,
        rules: tuple[KeywordRule, ...],
        automaton: ahocorasick.Automaton | None,
        regex_keywords: tuple[tuple[int, _Patterns], ...],
        regex_negatives: tuple[tuple[int, _Patterns], ...],
        regex_timeout: float,
    ) -> None:
        self.rules = rules
        self._automaton = automaton
        self._regex_keywords = regex_keywords
        self._regex_negatives = regex_negatives
        self.regex_timeout = regex_timeout
        # Hot-path tables, by rule index: the hit's fixed fields per keyword index, and the scope to check
        # (None when the rule applies everywhere, so most rules cost no call).
        self._hit_fields = tuple(tuple((r.id, k.text, k.mode) for k in r.keywords) for r in rules)
        self._scopes = tuple(None if r.scope == _ANYWHERE else r.scope for r in rules)
        self._has_regex = bool(regex_keywords or regex_negatives)

    @classmethod
    def compile(cls, rules: Iterable[KeywordRule], regex_timeout: float = REGEX_TIMEOUT_S) -> KeywordMatcher:
        """Compile enabled rules. Raises RuleError on duplicate ids or invalid regexes."""
        active = tuple(r for r in rules if r.enabled)
        errors: list[str] = []
        seen: set[str] = set()
        # normalised keyword -> (mode code, is_negative) -> {rule index: keyword index}
        table: dict[str, dict[tuple[int, bool], dict[int, int]]] = {}
        regex_keywords: list[tuple[int, _Patterns]] = []
        regex_negatives: list[tuple[int, _Patterns]] = []
        for ri, rule in enumerate(active):
            if rule.id in seen:
                errors.append(f"rule {rule.id!r}: duplicate id")
            seen.add(rule.id)
            if not rule.keywords:
                errors.append(f"rule {rule.id!r}: keywords: at least one keyword is required")
            for negative, group in ((False, rule.keywords), (True, rule.negatives)):
                patterns: list[tuple[int, regex.Pattern[str]]] = []
                for ki, kw in enumerate(group):
                    if kw.mode is MatchMode.REGEX:
                        try:
                            patterns.append((ki, compile_regex(kw.text)))
                        except ValueError as exc:
                            errors.append(f"rule {rule.id!r}: regex {kw.text!r}: {exc}")
                        continue
                    key = normalize(kw.text)
                    if not key:
                        errors.append(f"rule {rule.id!r}: keyword {kw.text!r} is empty after normalisation")
                        continue
                    by_mode = table.setdefault(key, {}).setdefault((_mode_code(kw.mode, key), negative), {})
                    by_mode.setdefault(ri, ki)  # the rule's first keyword wins for reporting
                if patterns:
                    (regex_negatives if negative else regex_keywords).append((ri, tuple(patterns)))
        if errors:
            raise RuleError(errors)
        automaton: ahocorasick.Automaton | None = None
        if table:
            automaton = ahocorasick.Automaton()
            for key, groups in table.items():
                payload: _Payload = (len(key), tuple((code, neg, rules) for (code, neg), rules in groups.items()))
                automaton.add_word(key, payload)
            automaton.make_automaton()
        return cls(active, automaton, tuple(regex_keywords), tuple(regex_negatives), regex_timeout)

    # --- scanning -------------------------------------------------------------------------------------

    def _scan(self, norm: str, want_misplaced: bool) -> _Scan:
        positive: dict[int, tuple[int, int, int]] = {}
        negatives: list[dict[int, int]] = []
        misplaced: dict[int, int] = {}
        if self._automaton is None:
            return _Scan(positive, negatives, misplaced, [])
        last = len(norm) - 1
        for end, (length, groups) in self._automaton.iter(norm):
            start = end - length + 1
            for code, is_negative, entries in groups:
                if code and not _placed(code, norm, start, end, last):
                    if want_misplaced and not is_negative:
                        for ri, ki in entries.items():
                            misplaced.setdefault(ri, ki)
                    continue
                if is_negative:
                    negatives.append(entries)
                else:
                    for ri, ki in entries.items():
                        if ri not in positive:
                            positive[ri] = (ki, start, end + 1)
        return _Scan(positive, negatives, misplaced, [])

    def _search(self, pattern: regex.Pattern[str], norm: str) -> tuple[int, int] | None:
        found = pattern.search(norm, timeout=self.regex_timeout)
        return None if found is None else (found.start(), found.end())

    def _run_regexes(
        self, scan: _Scan, norm: str, msg: InboundMessage, departments: frozenset[str], all_scopes: bool
    ) -> None:
        for ri, patterns in self._regex_keywords:
            if ri in scan.positive:
                continue  # already fired by a literal: once per message
            if not all_scopes and self.rules[ri].scope.rejects(msg, departments) is not None:
                continue
            for ki, pattern in patterns:
                try:
                    span = self._search(pattern, norm)
                except TimeoutError:
                    scan.timeouts.append(ri)
                    logger.warning(
                        "regex timed out: rule=%s msg=%s pattern=%r", self.rules[ri].id, msg.msg_id, pattern.pattern
                    )
                    continue
                if span is not None:
                    scan.positive[ri] = (ki, span[0], span[1])
                    break
        for ri, patterns in self._regex_negatives:
            if ri not in scan.positive or scan.blocking_negative(ri) is not None:
                continue  # a regex negative only matters for a rule that would otherwise fire
            for ki, pattern in patterns:
                try:
                    span = self._search(pattern, norm)
                except TimeoutError:
                    # Unknown whether the negative is there: blocking is the conservative answer.
                    scan.timeouts.append(ri)
                    scan.negatives.append({ri: ki})
                    logger.warning("regex negative timed out: rule=%s msg=%s", self.rules[ri].id, msg.msg_id)
                    break
                if span is not None:
                    scan.negatives.append({ri: ki})
                    break

    # --- public API -----------------------------------------------------------------------------------

    def _match(self, msg: InboundMessage, departments: frozenset[str]) -> tuple[list[KeywordHit], list[int]]:
        """(hits, indices of rules whose regex timed out). The hot path: ``_scan`` inlined, no per-message
        objects unless something hits; ``explain`` keeps the general version."""
        if msg.direction != "customer":
            return [], []
        parts = fold_and_normalize(msg.text)
        norm = parts[1]
        if not norm:
            return [], []
        positive: dict[int, tuple[int, int, int]] = {}
        negatives: list[dict[int, int]] = []
        if self._automaton is not None:
            last = len(norm) - 1
            for end, (length, groups) in self._automaton.iter(norm):
                start = end - length + 1
                for code, is_negative, entries in groups:
                    if code and not _placed(code, norm, start, end, last):
                        continue  # an exact/prefix/suffix/word keyword found in the wrong place
                    if is_negative:
                        negatives.append(entries)
                    else:
                        for ri, ki in entries.items():
                            if ri not in positive:
                                positive[ri] = (ki, start, end + 1)
        timeouts: list[int] = []
        if self._has_regex:
            scan = _Scan(positive, negatives, {}, timeouts)
            self._run_regexes(scan, norm, msg, departments, all_scopes=False)
        if not positive:
            return [], timeouts
        scopes = self._scopes
        firing: list[tuple[int, int, int, int]] = []
        for ri in sorted(positive) if len(positive) > 1 else positive:
            if negatives and any(ri in group for group in negatives):
                continue
            scope = scopes[ri]
            if scope is not None and scope.rejects(msg, departments) is not None:
                continue
            firing.append((ri, *positive[ri]))
        if not firing:
            return [], timeouts
        text = msg.text
        fields = self._hit_fields
        if len(text) <= EXCERPT_RADIUS:  # a short message is its own excerpt (as ``excerpts`` would say)
            cut = " ".join(text.split())
            return [_new_tuple(KeywordHit, (*fields[ri][ki], cut)) for ri, ki, _, _ in firing], timeouts
        # Excerpts last and in one go: the original-text alignment is computed once per message.
        cuts = excerpts(text, [(start, end) for _, _, start, end in firing], folded_and_norm=parts)
        return [_new_tuple(KeywordHit, (*fields[ri][ki], cut))
                for (ri, ki, _, _), cut in zip(firing, cuts, strict=True)], timeouts

    def match(self, msg: InboundMessage, employee_departments: frozenset[str] = _EMPTY) -> list[KeywordHit]:
        """Rules that fire on ``msg`` (at most one hit per rule), in rule order.

        ``employee_departments``: every department of ``msg.employee_id``, ancestors included (the
        caller resolves the tree), for rules scoped by department. Regex timeouts are logged; use
        ``match_outcome`` to also get them as data.
        """
        return self._match(msg, employee_departments)[0]

    def match_outcome(self, msg: InboundMessage, employee_departments: frozenset[str] = _EMPTY) -> MatchOutcome:
        """Hits plus the ids of rules whose regex timed out (for metrics and the rule tester)."""
        hits, timeouts = self._match(msg, employee_departments)
        return MatchOutcome(tuple(hits), tuple(self.rules[ri].id for ri in timeouts))

    def explain(self, msg: InboundMessage, employee_departments: frozenset[str] = _EMPTY) -> list[RuleVerdict]:
        """A verdict for every rule a keyword of which appears in the message (fired, blocked, or present
        in the wrong position for its mode) — what ``POST /api/v1/rules/test`` shows."""
        norm = normalize(msg.text)
        if not norm:
            return []
        scan = self._scan(norm, want_misplaced=True)
        self._run_regexes(scan, norm, msg, employee_departments, all_scopes=True)
        verdicts: list[RuleVerdict] = []
        timed_out = set(scan.timeouts)
        for ri in sorted(set(scan.positive) | set(scan.misplaced) | timed_out):
            rule = self.rules[ri]
            if ri not in scan.positive:
                if ri in scan.misplaced:
                    kw = rule.keywords[scan.misplaced[ri]]
                    verdicts.append(RuleVerdict(rule.id, False, _reason("mode", kw.mode.value), kw.text))
                else:
                    verdicts.append(RuleVerdict(rule.id, False, _reason("regex_timeout"), None))
                continue
            kw = rule.keywords[scan.positive[ri][0]]
            out_of_scope = rule.scope.rejects(msg, employee_departments)
            negative = scan.blocking_negative(ri)
            if msg.direction != "customer":
                verdict = RuleVerdict(rule.id, False, _reason("direction", msg.direction), kw.text)
            elif out_of_scope is not None:
                verdict = RuleVerdict(rule.id, False, _reason("scope", out_of_scope), kw.text)
            elif negative is not None:
                verdict = RuleVerdict(rule.id, False, _reason("negative", rule.negatives[negative].text), kw.text)
            else:
                verdict = RuleVerdict(rule.id, True, _reason("fired"), kw.text)
            verdicts.append(verdict)
        return verdicts


def _reason(code: str, detail: str | None = None) -> str:
    return f"{REASONS[code]} {code}" + (f":{detail}" if detail else "")
