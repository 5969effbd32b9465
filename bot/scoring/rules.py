"""Load the lead-scoring config (point rules, decay, stage thresholds, SLA) from YAML or JSON.

Format (YAML shown; JSON with the same keys works too, and is parsed by the YAML parser so that errors
still carry line numbers)::

    version: 1
    half_life_days: 14          # engagement points halve every 14 days; fit points never decay
    sla_minutes: 30             # accept-by deadline for an MQL→SQL assignment, in business minutes
    hysteresis: 5               # optional, default 0: a threshold re-arms below (threshold - 5)
    fallback_userid: null       # optional: who gets leads when every salesperson is full
    stage_thresholds:           # on the total score (fit + decayed engagement), strictly rising
      engaged: 10
      mql: 40
      sql: 70
    rules:
      - id: kw_price            # unique, stable: it is stored on every ledger row
        name: 询价关键词          # shown in explanations
        on: keyword_rule_fired  # an event kind, see model.KNOWN_EVENT_KINDS
        match: {rule_id: kw-price}   # optional; a list value means "any of"
        points: 15              # non-zero integer, may be negative
        dimension: engagement   # fit | engagement
        cap: 30                 # optional: max total raw points per customer (by magnitude)
        repeat_limit: 3         # optional: max entries per customer …
        repeat_window: 7d       # … within this window (Nd, Nh, Nm, Nw); needs repeat_limit
        decays: true            # optional; default true; must not be true on a fit rule

Errors raise `ScoringConfigError` with `file:line: key.path: what is wrong`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import cast

import yaml

from bot.scoring.model import (
    DIMENSIONS,
    KNOWN_EVENT_KINDS,
    STAGE_THRESHOLD_NAMES,
    Dimension,
    MatchValue,
    PointRule,
    ScoringConfig,
    ScoringConfigError,
)

__all__ = ["ScoringConfigError", "load_config", "parse_config", "parse_config_text", "parse_duration"]

_TOP_KEYS = {"version", "half_life_days", "sla_minutes", "hysteresis", "fallback_userid",
             "stage_thresholds", "rules"}
_RULE_KEYS = {"id", "name", "on", "match", "points", "dimension", "cap", "repeat_limit",
              "repeat_window", "decays"}
_DURATION = re.compile(r"^\s*(\d+)\s*([wdhm])\s*$")
_UNIT = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}

KeyPath = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as
    booleans, which would turn the rule key `on:` into True (and `match: {answer: no}` into False)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class _Invalid(Exception):
    """Internal: an error at a key path; turned into ScoringConfigError with a line number."""

    def __init__(self, path: KeyPath, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def parse_duration(text: str) -> timedelta:
    """'7d' → 7 days; units w, d, h, m. Plain numbers are refused: '7' is ambiguous (days? minutes?)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like 30m, 12h, 7d or 2w")
    return timedelta(**{_UNIT[m.group(2)]: int(m.group(1))})


def load_config(path: str | Path) -> ScoringConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScoringConfigError(f"{p}: cannot read scoring config: {exc}") from exc
    return parse_config_text(text, source=str(p))


def parse_config_text(text: str, source: str = "<string>") -> ScoringConfig:
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ScoringConfigError(f"{source}:{line}: not valid YAML/JSON: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ScoringConfigError(f"{source}: not valid YAML/JSON: {exc}") from exc
    duplicate = _first_duplicate_key(root)
    if duplicate is not None:
        # PyYAML keeps the last of two equal keys silently; two `points:` in a rule is always a mistake.
        line = duplicate.start_mark.line + 1
        raise ScoringConfigError(f"{source}:{line}: duplicate key {duplicate.value!r}")
    try:
        return _parse(data)
    except _Invalid as exc:
        at = _line_of(root, exc.path)
        where = f"{source}:{at}" if at is not None else source
        raise ScoringConfigError(f"{where}: {_fmt_path(exc.path)}: {exc.message}") from None


def parse_config(data: object) -> ScoringConfig:
    """Parse an already-loaded mapping (e.g. from the admin API); errors name the key path."""
    try:
        return _parse(data)
    except _Invalid as exc:
        raise ScoringConfigError(f"{_fmt_path(exc.path)}: {exc.message}") from None


def _parse(data: object) -> ScoringConfig:
    top = _mapping(data, ())
    _no_unknown_keys(top, _TOP_KEYS, ())
    version = top.get("version", 1)
    if version != 1:
        raise _Invalid(("version",), f"unsupported version {version!r} (this code reads version 1)")
    raw_rules = top.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise _Invalid(("rules",), "must be a non-empty list of rules")
    rules: list[PointRule] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_rules):
        rule = _rule(raw, ("rules", i))
        if rule.id in seen:
            raise _Invalid(("rules", i, "id"), f"duplicate rule id {rule.id!r}")
        seen.add(rule.id)
        rules.append(rule)

    thresholds_raw = _mapping(top.get("stage_thresholds"), ("stage_thresholds",))
    _no_unknown_keys(thresholds_raw, set(STAGE_THRESHOLD_NAMES), ("stage_thresholds",))
    thresholds: dict[str, float] = {}
    for name in STAGE_THRESHOLD_NAMES:
        if name not in thresholds_raw:
            raise _Invalid(("stage_thresholds",), f"missing {name!r}")
        thresholds[name] = _number(thresholds_raw[name], ("stage_thresholds", name))

    try:
        return ScoringConfig(
            rules=tuple(rules),
            half_life_days=_number(top.get("half_life_days"), ("half_life_days",)),
            stage_thresholds=thresholds,
            sla_minutes=_int(top.get("sla_minutes", 30), ("sla_minutes",)),
            hysteresis=_number(top.get("hysteresis", 0), ("hysteresis",)),
            fallback_userid=_opt_str(top.get("fallback_userid"), ("fallback_userid",)),
        )
    except ScoringConfigError as exc:
        raise _Invalid((), str(exc)) from None


def _rule(raw: object, path: KeyPath) -> PointRule:
    m = _mapping(raw, path)
    _no_unknown_keys(m, _RULE_KEYS, path)
    for key in ("id", "name", "on", "points", "dimension"):
        if key not in m:
            raise _Invalid(path, f"missing required key {key!r}")
    rule_id = _str(m["id"], (*path, "id"))
    on = _str(m["on"], (*path, "on"))
    if on not in KNOWN_EVENT_KINDS:
        known = ", ".join(sorted(KNOWN_EVENT_KINDS))
        raise _Invalid((*path, "on"), f"unknown event kind {on!r}; known: {known}")
    dimension = m["dimension"]
    if dimension not in DIMENSIONS:
        raise _Invalid((*path, "dimension"), f"must be one of {', '.join(DIMENSIONS)}, got {dimension!r}")
    decays = m.get("decays", dimension == "engagement")
    if not isinstance(decays, bool):
        raise _Invalid((*path, "decays"), "must be true or false")
    if decays and dimension == "fit":
        raise _Invalid((*path, "decays"), "fit points never decay; remove decays or set it to false")
    window_raw = m.get("repeat_window")
    window: timedelta | None = None
    if window_raw is not None:
        try:
            window = parse_duration(str(window_raw))
        except ValueError as exc:
            raise _Invalid((*path, "repeat_window"), str(exc)) from None
    try:
        return PointRule(
            id=rule_id,
            name=_str(m["name"], (*path, "name")),
            on=on,
            match=_match(m.get("match", {}), (*path, "match")),
            points=_int(m["points"], (*path, "points")),
            dimension=cast(Dimension, dimension),
            cap=_opt_int(m.get("cap"), (*path, "cap")),
            repeat_limit=_opt_int(m.get("repeat_limit"), (*path, "repeat_limit")),
            repeat_window=window,
            decays=decays,
        )
    except ScoringConfigError as exc:
        raise _Invalid(path, str(exc)) from None


def _match(raw: object, path: KeyPath) -> dict[str, MatchValue]:
    m = _mapping(raw, path)
    out: dict[str, MatchValue] = {}
    for key, value in m.items():
        if isinstance(value, list):
            if not value or not all(_is_scalar(v) for v in value):
                raise _Invalid((*path, key), "a list must hold one or more strings/numbers")
            out[key] = tuple(value)
        elif _is_scalar(value):
            out[key] = cast(MatchValue, value)
        else:
            raise _Invalid((*path, key), "must be a string, number, boolean or a list of them")
    return out


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)


def _mapping(value: object, path: KeyPath) -> dict[str, object]:
    if not isinstance(value, Mapping):
        raise _Invalid(path, f"must be a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise _Invalid(path, f"keys must be strings, got {key!r}")
    return dict(value)


def _no_unknown_keys(m: Mapping[str, object], allowed: set[str], path: KeyPath) -> None:
    unknown = sorted(set(m) - allowed)
    if unknown:
        raise _Invalid((*path, unknown[0]), f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _str(value: object, path: KeyPath) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(path, "must be a non-empty string")
    return value


def _opt_str(value: object, path: KeyPath) -> str | None:
    return None if value is None else _str(value, path)


def _int(value: object, path: KeyPath) -> int:
    # bool is an int subclass; `points: yes` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(path, f"must be an integer, got {value!r}")
    return value


def _opt_int(value: object, path: KeyPath) -> int | None:
    return None if value is None else _int(value, path)


def _number(value: object, path: KeyPath) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(path, f"must be a number, got {value!r}")
    return float(value)


def _fmt_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "<top>"


def _line_of(root: yaml.Node | None, path: KeyPath) -> int | None:
    """1-based line of the deepest node along `path` that exists (the key itself when it does)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    line, node = key_node.start_mark.line + 1, value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _first_duplicate_key(node: yaml.Node | None) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key_node, value_node in node.value:
            if key_node.value in seen:
                return key_node
            seen.add(key_node.value)
            found = _first_duplicate_key(value_node)
            if found is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _first_duplicate_key(item)
            if found is not None:
                return found
    return None
