"""Rule definitions: parsing and validation (YAML files in scripts_library/content/rules/, or JSON from the
admin API).

File shape (YAML; the API accepts the same as JSON, or just the list)::

    version: 1                      # optional; only 1 is known
    keyword_rules:
      - id: pricing                 # [A-Za-z0-9_.-]+, unique across the file (both lists)
        name: 询价                  # shown to people
        mode: contains              # default mode of bare-string keywords (default: contains)
        keywords:                   # any of; at least one
          - 价格                    # bare string: the rule's default mode
          - {text: price, mode: word}
          - {text: '^\\d+\\s*个?账号', mode: regex}
        negatives: [不需要, 太贵]   # any of them anywhere in the message blocks the rule; bare = contains
        scope:                      # every list optional; empty/absent = any
          employees: [zhangsan]     # employee userids ...
          departments: ["2"]        # ... or their department ids (either qualifies)
          chat_types: [single]      # single | group
          sources: [kf, archive]    # kf | archive | app
        threshold: {count: 3, window: 7d}   # optional: 3 hits within 7 days (current hit included)
        cooldown: 30d               # optional: no re-application within 30 days
        add_tags: ["意向:询价"]     # "group:name"; at least one add or remove tag
        remove_tags: []
        enabled: true
    behaviour_rules:
      - id: from_webinar
        name: 直播来源
        kind: added_via_channel     # see BEHAVIOUR_PARAMS for each kind's params
        params: {channel: webinar}
        add_tags: ["来源:直播"]
        cooldown: 1d                # optional

Modes: contains, exact (whole message), prefix, suffix, word (no ASCII letter/digit glued to a Latin
edge of the keyword), regex (``regex`` module syntax, case-insensitive, matched against the normalised
text, so write it in simplified Chinese and lower case). Durations: ``90s``, ``30m``, ``12h``, ``7d``,
``2w`` or combinations such as ``1d12h``.

Errors are collected, not raised one by one: ``RuleError.errors`` lists every problem as
``source[:line]: rule 'id': field: message``; ``load_rule_file`` supplies the YAML line numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import regex
import yaml
from yaml.nodes import MappingNode, SequenceNode

from bot.tagging.model import (
    CHAT_TYPES,
    SOURCES,
    BehaviourKind,
    BehaviourRule,
    EventKind,
    Keyword,
    KeywordRule,
    MatchMode,
    ParamValue,
    Scope,
    Threshold,
)
from bot.tagging.normalize import normalize, simplified_halfwidth

MAX_REGEX_LENGTH = 300
"""Long patterns are where catastrophic backtracking hides; the runtime timeout is the real guard."""
MAX_KEYWORD_LENGTH = 100
REGEX_FLAGS = regex.IGNORECASE | regex.VERSION0

_ID_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_TAG_RE = re.compile(r"[^:\s][^:]*:[^:]*[^:\s]")
_DURATION_RE = re.compile(r"(?:\d+[smhdw])+")
_DURATION_PART_RE = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

_KEYWORD_RULE_KEYS = frozenset(
    {
        "id",
        "name",
        "description",
        "mode",
        "keywords",
        "negatives",
        "scope",
        "threshold",
        "cooldown",
        "add_tags",
        "remove_tags",
        "enabled",
    }
)
_BEHAVIOUR_RULE_KEYS = frozenset(
    {"id", "name", "description", "kind", "params", "add_tags", "remove_tags", "cooldown", "enabled"}
)
_FILE_KEYS = frozenset({"version", "keyword_rules", "behaviour_rules"})

# kind -> {param: (required, type)}; "duration" params are converted to timedelta.
BEHAVIOUR_PARAMS: dict[BehaviourKind, dict[str, tuple[bool, str]]] = {
    BehaviourKind.ADDED_VIA_CHANNEL: {"channel": (True, "str")},
    BehaviourKind.OPENED_LINK: {"material": (False, "str")},
    BehaviourKind.JOINED_GROUP: {"group_id": (False, "str")},
    BehaviourKind.LEFT_GROUP: {"group_id": (False, "str")},
    BehaviourKind.DELETED_EMPLOYEE: {},
    BehaviourKind.NO_REPLY_DAYS: {"days": (True, "int")},
    BehaviourKind.EVENT_COUNT: {
        "event_kind": (True, "event_kind"),
        "count": (True, "int"),
        "window": (True, "duration"),
    },
}


class RuleError(ValueError):
    """One or more rule definition problems; ``errors`` holds one precise message per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True, slots=True)
class RuleSet:
    keyword_rules: tuple[KeywordRule, ...] = ()
    behaviour_rules: tuple[BehaviourRule, ...] = ()


# --- YAML with line numbers ---------------------------------------------------------------------------


class _LineDict(dict[Any, Any]):
    """A mapping that remembers the YAML line of itself and of each key's value."""

    line: int | None = None
    key_lines: dict[Any, int]


class _LineList(list[Any]):
    line: int | None = None
    item_lines: list[int]


class _LineLoader(yaml.SafeLoader):
    duplicate_keys: list[str]


def _construct_mapping(loader: _LineLoader, node: MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    result = _LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:  # `? [a, b]: x` or `{[a]: x}`: SafeLoader's own mapping refuses these the same way
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                    "found an unhashable key", key_node.start_mark) from None
        if key in result.key_lines:
            # PyYAML keeps the last value silently; a duplicated "keywords:" would lose half a rule.
            loader.duplicate_keys.append(f"{key_node.start_mark.line + 1}: duplicate key {key!r}")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = value_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _LineLoader, node: SequenceNode) -> _LineList:
    result = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _line_of(container: object, key: object) -> int | None:
    if isinstance(container, _LineDict):
        return container.key_lines.get(key, container.line)
    if isinstance(container, _LineList):
        if isinstance(key, int) and 0 <= key < len(container.item_lines):
            return container.item_lines[key]
        return container.line
    return None


# --- parsing ------------------------------------------------------------------------------------------


class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []

    def error(self, container: object, key: object, rule_id: str | None, path: str, message: str) -> None:
        line = _line_of(container, key)
        where = f"{self.source}:{line}" if line is not None else self.source
        who = f"rule {rule_id!r}: " if rule_id else ""
        # A path built from a document's own key (an empty one, one with a newline) is quoted: one error, one line.
        shown = path if path and path.isprintable() else repr(path)
        self.errors.append(f"{where}: {who}{shown}: {message}")


def parse_duration(value: object) -> timedelta:
    """``"7d"`` → 7 days; accepts s/m/h/d/w parts ("1d12h") or a timedelta. Raises ValueError."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, str) and _DURATION_RE.fullmatch(value.strip()):
        seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART_RE.findall(value))
        result = timedelta(seconds=seconds)
    else:
        raise ValueError(f"expected a duration such as '7d', '12h' or '1d12h', got {value!r}")
    if result <= timedelta(0):
        raise ValueError(f"duration must be positive, got {value!r}")
    return result


def compile_regex(pattern: str) -> regex.Pattern[str]:
    """Compile a regex keyword the way the matcher uses it. Raises ValueError with the reason."""
    if len(pattern) > MAX_REGEX_LENGTH:
        raise ValueError(f"regex longer than {MAX_REGEX_LENGTH} characters")
    try:
        compiled = regex.compile(pattern, REGEX_FLAGS)
    except regex.error as exc:
        raise ValueError(f"invalid regex: {exc}") from exc
    if compiled.search("", timeout=0.01) is not None:
        # A pattern that matches the empty string would fire on every message.
        raise ValueError("regex matches the empty string (it would fire on every message)")
    return compiled


def _rules_list(data: object, key: str, ctx: _Ctx) -> list[Any] | None:
    if isinstance(data, Mapping):
        if key not in data:
            ctx.error(data, None, None, key, "missing list of rules")
            return None
        items = data[key]
        if items is None:
            return []
        if not isinstance(items, list):
            ctx.error(data, key, None, key, "must be a list of rules")
            return None
        return items
    if isinstance(data, list):
        return data
    ctx.error(data, None, None, key, f"expected a list of rules or a mapping with {key!r}")
    return None


def _str_list(value: object, ctx: _Ctx, container: object, key: str, rule_id: str, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        ctx.error(container, key, rule_id, path, "must be a list of strings")
        return []
    return [str(v) for v in value]


def _tags(value: object, ctx: _Ctx, container: object, key: str, rule_id: str) -> tuple[str, ...]:
    tags = _str_list(value, ctx, container, key, rule_id, key)
    for i, tag in enumerate(tags):
        if not _TAG_RE.fullmatch(tag):
            ctx.error(value, i, rule_id, f"{key}[{i}]", f"tag {tag!r} must look like 'group:name'")
    return tuple(tags)


def _keyword(
    item: object, default_mode: MatchMode, ctx: _Ctx, container: object, index: int, rule_id: str, path: str
) -> Keyword | None:
    where = f"{path}[{index}]"
    mode_value: object = default_mode.value
    if isinstance(item, str | int) and not isinstance(item, bool):
        text = str(item)
    elif isinstance(item, Mapping):
        unknown = set(item) - {"text", "mode"}
        if unknown:
            ctx.error(
                item, sorted(unknown, key=str)[0], rule_id, where, f"unknown field(s) {sorted(unknown)}"
            )
            return None
        raw_text, mode_value = item.get("text"), item.get("mode", default_mode.value)
        if not isinstance(raw_text, str):
            ctx.error(item, "text", rule_id, f"{where}.text", "must be a string")
            return None
        text = raw_text
    else:
        ctx.error(container, index, rule_id, where, "must be a string or {text, mode}")
        return None
    try:
        mode = MatchMode(str(mode_value))
    except ValueError:
        ctx.error(
            item if isinstance(item, Mapping) else container,
            "mode" if isinstance(item, Mapping) else index,
            rule_id,
            f"{where}.mode",
            f"unknown mode {mode_value!r} (expected one of {', '.join(m.value for m in MatchMode)})",
        )
        return None
    line_box, line_key = (item, "text") if isinstance(item, Mapping) else (container, index)
    if mode is MatchMode.REGEX:
        try:
            compile_regex(text)
        except ValueError as exc:
            ctx.error(line_box, line_key, rule_id, where, f"{exc} in {text!r}")
            return None
        if simplified_halfwidth(text) != text:
            ctx.error(
                line_box,
                line_key,
                rule_id,
                where,
                "regex contains traditional or full-width characters; messages are normalised to "
                f"simplified half-width text, so write {simplified_halfwidth(text)!r}",
            )
            return None
    else:
        if not normalize(text):
            ctx.error(line_box, line_key, rule_id, where, "keyword is empty after normalisation")
            return None
        if len(text) > MAX_KEYWORD_LENGTH:
            ctx.error(
                line_box, line_key, rule_id, where, f"keyword longer than {MAX_KEYWORD_LENGTH} characters"
            )
            return None
    return Keyword(text=text, mode=mode)


def _keywords(
    raw: Mapping[str, Any], key: str, default_mode: MatchMode, ctx: _Ctx, rule_id: str, required: bool
) -> tuple[Keyword, ...]:
    value = raw.get(key)
    if value is None or value == []:
        if required:
            ctx.error(raw, key, rule_id, key, "at least one keyword is required")
        return ()
    if not isinstance(value, list):
        ctx.error(raw, key, rule_id, key, "must be a list")
        return ()
    out = [_keyword(item, default_mode, ctx, value, i, rule_id, key) for i, item in enumerate(value)]
    return tuple(k for k in out if k is not None)


def _scope(raw: Mapping[str, Any], ctx: _Ctx, rule_id: str) -> Scope:
    value = raw.get("scope")
    if value is None:
        return Scope()
    if not isinstance(value, Mapping):
        ctx.error(raw, "scope", rule_id, "scope", "must be a mapping")
        return Scope()
    fields: dict[str, frozenset[str]] = {}
    allowed = {"employees": None, "departments": None, "chat_types": CHAT_TYPES, "sources": SOURCES}
    for key in value:
        if key not in allowed:
            ctx.error(
                value, key, rule_id, f"scope.{key}", f"unknown field (expected one of {sorted(allowed)})"
            )
    for key, choices in allowed.items():
        items = _str_list(value.get(key), ctx, value, key, rule_id, f"scope.{key}")
        for item in items:
            if choices is not None and item not in choices:
                ctx.error(
                    value,
                    key,
                    rule_id,
                    f"scope.{key}",
                    f"unknown value {item!r} (expected one of {', '.join(sorted(choices))})",
                )
        fields[key] = frozenset(items)
    return Scope(**fields)


def _threshold(raw: Mapping[str, Any], ctx: _Ctx, rule_id: str) -> Threshold | None:
    value = raw.get("threshold")
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"count", "window"}:
        ctx.error(raw, "threshold", rule_id, "threshold", "must be {count: N, window: duration}")
        return None
    count = value["count"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        ctx.error(value, "count", rule_id, "threshold.count", f"must be an integer >= 1, got {count!r}")
        return None
    try:
        window = parse_duration(value["window"])
    except ValueError as exc:
        ctx.error(value, "window", rule_id, "threshold.window", str(exc))
        return None
    return Threshold(count=count, window=window)


def _duration_field(raw: Mapping[str, Any], key: str, ctx: _Ctx, rule_id: str) -> timedelta | None:
    if raw.get(key) is None:
        return None
    try:
        return parse_duration(raw[key])
    except ValueError as exc:
        ctx.error(raw, key, rule_id, key, str(exc))
        return None


def _common(
    raw: object, index: int, items: list[Any], allowed: frozenset[str], seen: dict[str, int], ctx: _Ctx
) -> tuple[str, str, bool] | None:
    """Checks shared by both rule kinds; returns (id, name, enabled) or None when unusable."""
    if not isinstance(raw, Mapping):
        ctx.error(items, index, None, f"rules[{index}]", "must be a mapping")
        return None
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _ID_RE.fullmatch(rule_id):
        ctx.error(raw, "id", None, f"rules[{index}].id", f"must match [A-Za-z0-9_.-]+, got {rule_id!r}")
        return None
    if rule_id in seen:
        ctx.error(raw, "id", rule_id, "id", f"duplicate id (first defined as rules[{seen[rule_id]}])")
    seen.setdefault(rule_id, index)
    for key in raw:
        if key not in allowed:
            ctx.error(
                raw, key, rule_id, str(key), f"unknown field (expected one of {', '.join(sorted(allowed))})"
            )
    name = raw.get("name", rule_id)
    if not isinstance(name, str) or not name.strip():
        ctx.error(raw, "name", rule_id, "name", "must be a non-empty string")
        name = rule_id
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        ctx.error(raw, "enabled", rule_id, "enabled", "must be true or false")
        enabled = True
    return rule_id, name, enabled


def _tag_fields(raw: Mapping[str, Any], ctx: _Ctx, rule_id: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    add = _tags(raw.get("add_tags"), ctx, raw, "add_tags", rule_id)
    remove = _tags(raw.get("remove_tags"), ctx, raw, "remove_tags", rule_id)
    if not add and not remove:
        ctx.error(raw, "id", rule_id, "add_tags", "a rule must add or remove at least one tag")
    if set(add) & set(remove):
        ctx.error(
            raw,
            "remove_tags",
            rule_id,
            "remove_tags",
            f"tags both added and removed: {sorted(set(add) & set(remove))}",
        )
    return add, remove


def parse_keyword_rules(data: object, source_name: str = "<api>") -> list[KeywordRule]:
    """Parse and validate keyword rules (a list, or a mapping with ``keyword_rules``). Raises RuleError."""
    ctx = _Ctx(source_name)
    rules = _parse_keyword_rules(data, ctx, {})
    if ctx.errors:
        raise RuleError(ctx.errors)
    return rules


def _parse_keyword_rules(data: object, ctx: _Ctx, seen: dict[str, int]) -> list[KeywordRule]:
    items = _rules_list(data, "keyword_rules", ctx)
    rules: list[KeywordRule] = []
    for index, raw in enumerate(items or []):
        common = _common(raw, index, items or [], _KEYWORD_RULE_KEYS, seen, ctx)
        if common is None:
            continue
        rule_id, name, enabled = common
        mode_value = raw.get("mode", MatchMode.CONTAINS.value)
        try:
            default_mode = MatchMode(mode_value)
        except ValueError:
            ctx.error(
                raw,
                "mode",
                rule_id,
                "mode",
                f"unknown mode {mode_value!r} (expected one of {', '.join(m.value for m in MatchMode)})",
            )
            default_mode = MatchMode.CONTAINS
        errors_before = len(ctx.errors)
        keywords = _keywords(raw, "keywords", default_mode, ctx, rule_id, required=True)
        negatives = _keywords(raw, "negatives", MatchMode.CONTAINS, ctx, rule_id, required=False)
        scope = _scope(raw, ctx, rule_id)
        threshold = _threshold(raw, ctx, rule_id)
        cooldown = _duration_field(raw, "cooldown", ctx, rule_id)
        add, remove = _tag_fields(raw, ctx, rule_id)
        if len(ctx.errors) == errors_before:
            rules.append(
                KeywordRule(
                    id=rule_id,
                    name=name,
                    keywords=keywords,
                    negatives=negatives,
                    scope=scope,
                    threshold=threshold,
                    cooldown=cooldown,
                    add_tags=add,
                    remove_tags=remove,
                    enabled=enabled,
                )
            )
    return rules


def parse_behaviour_rules(data: object, source_name: str = "<api>") -> list[BehaviourRule]:
    """Parse and validate behaviour rules (a list, or a mapping with ``behaviour_rules``).

    Raises RuleError."""
    ctx = _Ctx(source_name)
    rules = _parse_behaviour_rules(data, ctx, {})
    if ctx.errors:
        raise RuleError(ctx.errors)
    return rules


def _param(value: object, kind: str) -> ParamValue:
    converters: dict[str, Callable[[object], ParamValue]] = {
        "str": _as_str,
        "int": _as_positive_int,
        "duration": parse_duration,
        "event_kind": _as_event_kind,
    }
    return converters[kind](value)


def _as_str(value: object) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return str(value)


def _as_positive_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"must be an integer >= 1, got {value!r}")
    return value


def _as_event_kind(value: object) -> str:
    try:
        return EventKind(str(value)).value
    except ValueError:
        raise ValueError(
            f"unknown event kind {value!r} (expected one of {', '.join(k.value for k in EventKind)})"
        ) from None


def _parse_behaviour_rules(data: object, ctx: _Ctx, seen: dict[str, int]) -> list[BehaviourRule]:
    items = _rules_list(data, "behaviour_rules", ctx)
    rules: list[BehaviourRule] = []
    for index, raw in enumerate(items or []):
        common = _common(raw, index, items or [], _BEHAVIOUR_RULE_KEYS, seen, ctx)
        if common is None:
            continue
        rule_id, name, enabled = common
        errors_before = len(ctx.errors)
        try:
            kind = BehaviourKind(raw.get("kind"))
        except ValueError:
            ctx.error(
                raw,
                "kind",
                rule_id,
                "kind",
                f"unknown kind {raw.get('kind')!r} "
                f"(expected one of {', '.join(k.value for k in BehaviourKind)})",
            )
            continue
        raw_params = raw.get("params") or {}
        params: dict[str, ParamValue] = {}
        if not isinstance(raw_params, Mapping):
            ctx.error(raw, "params", rule_id, "params", "must be a mapping")
        else:
            spec = BEHAVIOUR_PARAMS[kind]
            for key in raw_params:
                if key not in spec:
                    ctx.error(
                        raw_params,
                        key,
                        rule_id,
                        f"params.{key}",
                        f"unknown param for {kind.value} (expected: {', '.join(spec) or 'none'})",
                    )
            for key, (required, type_name) in spec.items():
                if raw_params.get(key) is None:
                    if required:
                        ctx.error(raw, "params", rule_id, f"params.{key}", f"required for {kind.value}")
                    continue
                try:
                    params[key] = _param(raw_params[key], type_name)
                except ValueError as exc:
                    ctx.error(raw_params, key, rule_id, f"params.{key}", str(exc))
        cooldown = _duration_field(raw, "cooldown", ctx, rule_id)
        add, remove = _tag_fields(raw, ctx, rule_id)
        if len(ctx.errors) == errors_before:
            rules.append(
                BehaviourRule(
                    id=rule_id,
                    name=name,
                    kind=kind,
                    params=MappingProxyType(params),
                    add_tags=add,
                    remove_tags=remove,
                    cooldown=cooldown,
                    enabled=enabled,
                )
            )
    return rules


def parse_rule_document(data: object, source_name: str = "<api>") -> RuleSet:
    """Parse a whole document (``version``, ``keyword_rules``, ``behaviour_rules``). Raises RuleError."""
    ctx = _Ctx(source_name)
    if not isinstance(data, Mapping):
        ctx.error(
            data, None, None, "document", "expected a mapping with keyword_rules and/or behaviour_rules"
        )
        raise RuleError(ctx.errors)
    for key in data:
        if key not in _FILE_KEYS:
            ctx.error(
                data, key, None, str(key), f"unknown top-level key (expected one of {sorted(_FILE_KEYS)})"
            )
    if data.get("version", 1) != 1:
        ctx.error(
            data, "version", None, "version", f"unsupported version {data.get('version')!r} (expected 1)"
        )
    seen: dict[str, int] = {}  # ids are unique across both lists: rule history is keyed by rule id
    keyword_rules = _parse_keyword_rules(data, ctx, seen) if "keyword_rules" in data else []
    behaviour_rules = _parse_behaviour_rules(data, ctx, seen) if "behaviour_rules" in data else []
    if ctx.errors:
        raise RuleError(ctx.errors)
    return RuleSet(keyword_rules=tuple(keyword_rules), behaviour_rules=tuple(behaviour_rules))


def load_rule_file(path: str | Path) -> RuleSet:
    """Load a YAML rule file; every error reads ``path:line: rule 'id': field: message``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError([f"{path}: cannot read: {exc}"]) from exc
    loader: _LineLoader | None = None
    try:
        loader = _LineLoader(text)  # the reader refuses control characters here already
        loader.duplicate_keys = []
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise RuleError([f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}"]) from exc
    except RecursionError as exc:  # PyYAML composes recursively: thousands of nested [ or { exhaust the stack
        raise RuleError([f"{path}:1: invalid YAML: nested too deeply"]) from exc
    except ValueError as exc:  # a scalar PyYAML cannot convert: an int beyond 4300 digits, a 13th month …
        raise RuleError([f"{path}:1: invalid YAML value: {exc}"]) from exc
    finally:
        if loader is not None:
            loader.dispose()
    if loader.duplicate_keys:
        raise RuleError([f"{path}:{msg}" for msg in loader.duplicate_keys])
    return parse_rule_document(data, str(path))


__all__ = [
    "BEHAVIOUR_PARAMS",
    "MAX_KEYWORD_LENGTH",
    "MAX_REGEX_LENGTH",
    "RuleError",
    "RuleSet",
    "compile_regex",
    "load_rule_file",
    "parse_behaviour_rules",
    "parse_duration",
    "parse_keyword_rules",
    "parse_rule_document",
]
