"""SOP definitions: the five elements (crowd, content, touchpoint, timing, executor) made explicit.

Parsed from YAML under ``scripts_library/content/sops/``; see docs in that folder's examples. Every error
is reported as ``path:line: message`` and all errors of a file are reported together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from scripts_library.loader import TAG_RE, LibraryError, Problem, YList, YMap, line_of, load_yaml, yaml_files

DEFAULT_TZ = "Asia/Shanghai"
# Funnel order for "stage ≥ X". `lost` is terminal and deliberately unranked: a lost customer is not
# "at least SQL", so stage_at_least never fires for it (deletion/lost are handled by their own exits).
STAGES = ("new", "engaged", "MQL", "SQL", "won")
ALL_STAGES = (*STAGES, "lost")
TOUCHPOINTS = ("chat", "mass_send", "group", "moments")
# 1:1 touches count against the per-customer frequency budget; group posts and moments do not target
# one customer.
CUSTOMER_TOUCHPOINTS = frozenset({"chat", "mass_send"})
TRIGGER_EVENTS = ("customer_added", "tag_added", "stage_reached")
CAPPED_ACTIONS = ("defer", "skip", "drop")

Touchpoint = Literal["chat", "mass_send", "group", "moments"]


def stage_rank(stage: str | None) -> int:
    return STAGES.index(stage) if stage in STAGES else -1


# ------------------------------------------------------------------------------------------- crowd


@dataclass(frozen=True)
class Condition:
    """A leaf: kind ∈ tag_has, tag_has_not, stage_in, stage_at_least, channel_in, score_gte, score_lte,
    added_within_days."""

    kind: str
    value: Any


@dataclass(frozen=True)
class AllOf:
    items: tuple[CrowdNode, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[CrowdNode, ...]


@dataclass(frozen=True)
class Not:
    item: CrowdNode


CrowdNode = Condition | AllOf | AnyOf | Not


@dataclass(frozen=True)
class Trigger:
    event: str  # customer_added | tag_added | stage_reached
    channel: str | None = None
    tag: str | None = None
    stage: str | None = None


@dataclass(frozen=True)
class Crowd:
    """Either a standing ``filter`` (re-evaluated; leaving it can exit) or event ``triggers`` (any of)."""

    filter: CrowdNode | None = None
    triggers: tuple[Trigger, ...] = ()

    @property
    def is_trigger(self) -> bool:
        return bool(self.triggers)


# ------------------------------------------------------------------------------------ timing & co


@dataclass(frozen=True)
class Calendar:
    business_days: bool = False
    quiet_hours: tuple[time, time] | None = None  # (start, end) local; may wrap midnight
    timezone: str = DEFAULT_TZ


@dataclass(frozen=True)
class Timing:
    """kind: ``day`` (calendar day N [at HH:MM] after enrollment; rolls to a business day if required),
    ``after`` (+amount unit, from ``previous`` step or ``enrollment``), ``cron`` (next fire in the SOP zone
    after the previous step/enrollment), ``at`` (absolute datetime)."""

    kind: Literal["day", "after", "cron", "at"]
    day: int = 0
    at: time | None = None
    amount: int = 0
    unit: str = "days"  # minutes|hours|days|business_days|weeks|months
    relative_to: Literal["previous", "enrollment"] = "previous"
    cron: str | None = None
    when: datetime | None = None


@dataclass(frozen=True)
class Executor:
    kind: Literal["owner", "role", "user"] = "owner"
    value: str | None = None
    fallback: str | None = None


@dataclass(frozen=True)
class Variant:
    id: str
    script: str
    weight: float


@dataclass(frozen=True)
class Step:
    id: str
    touchpoint: str
    timing: Timing
    content: str | None = None
    variants: tuple[Variant, ...] = ()
    executor: Executor | None = None
    line: int = 0

    def script_ids(self) -> list[str]:
        return [self.content] if self.content else [v.script for v in self.variants]


@dataclass(frozen=True)
class ExitCondition:
    kind: str  # replied | tag_added | stage_at_least | deleted | left_crowd
    value: str | None = None


@dataclass(frozen=True)
class Reentry:
    policy: Literal["never", "after_exit", "every"] = "never"
    every_days: int | None = None


@dataclass(frozen=True)
class SopDefinition:
    id: str
    name: str
    crowd: Crowd
    steps: tuple[Step, ...]
    calendar: Calendar = Calendar()
    executor: Executor = Executor()
    exit: tuple[ExitCondition, ...] = ()
    reentry: Reentry = Reentry()
    capped: str = "defer"
    enabled: bool = True
    source: str = "<memory>"
    line: int = 0

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)


class SopDefinitionError(LibraryError):
    pass


# ---------------------------------------------------------------------------------------- parsing

_AFTER_RE = re.compile(
    r"^\+?\s*(\d+)\s*(m|min|mins|minutes?|h|hours?|d|days?|bd|business[ _]days?|w|weeks?|mo|months?)$",
    re.IGNORECASE,
)
_UNITS = {"m": "minutes", "min": "minutes", "mins": "minutes", "minute": "minutes", "minutes": "minutes",
          "h": "hours", "hour": "hours", "hours": "hours", "d": "days", "day": "days", "days": "days",
          "bd": "business_days", "business day": "business_days", "business days": "business_days",
          "business_day": "business_days", "business_days": "business_days",
          "w": "weeks", "week": "weeks", "weeks": "weeks",
          "mo": "months", "month": "months", "months": "months"}
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class _P:
    """Collects problems for one file."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def err(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.source, line, message))


def parse_hhmm(value: Any) -> time | None:
    # Unquoted 10:00 is a YAML 1.1 base-60 integer (600); h*60+m is exactly minutes since midnight.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        return time(value // 60, value % 60)
    m = _HHMM.match(str(value).strip())
    return time(int(m.group(1)), int(m.group(2))) if m else None


def parse_window(value: Any) -> tuple[time, time] | None:
    parts = str(value).replace("–", "-").split("-")
    if len(parts) != 2:
        return None
    start, end = parse_hhmm(parts[0].strip()), parse_hhmm(parts[1].strip())
    return (start, end) if start is not None and end is not None and start != end else None


def _check_tag(tag: Any, line: int, p: _P) -> str:
    if not isinstance(tag, str) or not TAG_RE.match(tag):
        p.err(line, f"tag {tag!r} must look like 'group:name'")
    return str(tag)


def _check_stage(stage: Any, line: int, p: _P) -> str:
    if stage not in ALL_STAGES:
        p.err(line, f"unknown stage {stage!r} (one of {', '.join(ALL_STAGES)})")
    return str(stage)


def _str_list(value: Any, line: int, p: _P, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    p.err(line, f"{what} must be a string or a list of strings")
    return ()


def _number(value: Any, line: int, p: _P, what: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    p.err(line, f"{what} must be a number")
    return 0.0


_CONDITION_KINDS = ("tag_has", "tag_has_not", "stage_in", "stage_at_least", "channel_in", "score_gte",
                    "score_lte", "added_within_days")


def _parse_crowd_node(node: Any, p: _P, line: int) -> CrowdNode | None:
    if not isinstance(node, YMap) or len(node) != 1:
        p.err(line_of(node, default=line),
              f"a crowd condition is a one-key mapping: all/any/not or one of {', '.join(_CONDITION_KINDS)}")
        return None
    key, value = next(iter(node.items()))
    kline = node.line_of(key)
    if key in ("all", "any"):
        if not isinstance(value, list) or not value:
            p.err(kline, f"'{key}' needs a non-empty list")
            return None
        items = tuple(c for c in (_parse_crowd_node(v, p, kline) for v in value) if c is not None)
        return AllOf(items) if key == "all" else AnyOf(items)
    if key == "not":
        inner = _parse_crowd_node(value, p, kline)
        return Not(inner) if inner is not None else None
    if key in ("tag_has", "tag_has_not"):
        return Condition(key, _check_tag(value, kline, p))
    if key == "stage_in":
        return Condition(key, tuple(_check_stage(s, kline, p) for s in _str_list(value, kline, p, key)))
    if key == "stage_at_least":
        return Condition(key, _check_stage(value, kline, p))
    if key == "channel_in":
        return Condition(key, _str_list(value, kline, p, key))
    if key in ("score_gte", "score_lte"):
        return Condition(key, _number(value, kline, p, key))
    if key == "added_within_days":
        days = _number(value, kline, p, key)
        if days <= 0:
            p.err(kline, "added_within_days must be > 0")
        return Condition(key, days)
    p.err(kline, f"unknown crowd condition '{key}'")
    return None


def _parse_crowd(node: Any, p: _P, line: int) -> Crowd:
    if not isinstance(node, YMap) or ("filter" in node) == ("trigger" in node):
        p.err(line_of(node, default=line), "crowd needs exactly one of 'filter' or 'trigger'")
        return Crowd()
    if "filter" in node:
        flt = _parse_crowd_node(node["filter"], p, node.line_of("filter"))
        return Crowd(filter=flt)
    raw = node["trigger"]
    raw_list = raw if isinstance(raw, list) else [raw]
    triggers = []
    for item in raw_list:
        iline = line_of(item, default=node.line_of("trigger"))
        if not isinstance(item, YMap) or item.get("event") not in TRIGGER_EVENTS:
            p.err(iline, f"a trigger needs 'event' in {', '.join(TRIGGER_EVENTS)}")
            continue
        for key in sorted(set(item) - {"event", "channel", "tag", "stage"}, key=str):
            p.err(item.line_of(key), f"unknown trigger key '{key}'")
        event = item["event"]
        tag = _check_tag(item["tag"], item.line_of("tag"), p) if "tag" in item else None
        stage = _check_stage(item["stage"], item.line_of("stage"), p) if "stage" in item else None
        if event == "tag_added" and tag is None:
            p.err(iline, "a tag_added trigger needs 'tag'")
        if event == "stage_reached" and stage is None:
            p.err(iline, "a stage_reached trigger needs 'stage'")
        channel = item.get("channel")
        triggers.append(Trigger(event, channel=str(channel) if channel is not None else None, tag=tag,
                                stage=stage))
    return Crowd(triggers=tuple(triggers))


def _parse_calendar(node: Any, p: _P, line: int) -> Calendar:
    if node is None:
        return Calendar()
    if not isinstance(node, YMap):
        p.err(line, "calendar must be a mapping")
        return Calendar()
    for key in sorted(set(node) - {"business_days", "quiet_hours", "timezone"}, key=str):
        p.err(node.line_of(key), f"unknown calendar key '{key}'")
    tz = str(node.get("timezone", DEFAULT_TZ))
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file path
        p.err(node.line_of("timezone"), f"unknown time zone {tz[:80]!r}")
        tz = DEFAULT_TZ
    quiet = None
    if node.get("quiet_hours") is not None:
        quiet = parse_window(node["quiet_hours"])
        if quiet is None:
            p.err(node.line_of("quiet_hours"), "quiet_hours must look like '21:00-09:00'")
    business = node.get("business_days", False)
    if not isinstance(business, bool):
        p.err(node.line_of("business_days"), "business_days must be true or false")
    return Calendar(business_days=business is True, quiet_hours=quiet, timezone=tz)


def _parse_executor(node: YMap, p: _P) -> Executor | None:
    if "executor" not in node and "fallback" not in node:
        return None
    raw = str(node.get("executor", "owner"))
    fallback = node.get("fallback")
    fallback = str(fallback) if fallback is not None else None
    if raw == "owner":
        return Executor("owner", None, fallback)
    kind, _, value = raw.partition(":")
    if kind in ("role", "user") and value:
        return Executor("role" if kind == "role" else "user", value, fallback)
    p.err(node.line_of("executor"),
          f"executor must be 'owner', 'role:<name>' or 'user:<userid>', not {raw!r}")
    return Executor("owner", None, fallback)


def _parse_timing(node: YMap, p: _P) -> Timing:
    keys = [k for k in ("day", "after", "cron", "datetime") if k in node]
    if len(keys) != 1:
        p.err(node.line, "a step needs exactly one timing: day (+at), after, cron or datetime")
        return Timing("after")
    key = keys[0]
    kline = node.line_of(key)
    at = None
    if "at" in node:
        at = parse_hhmm(node["at"])
        if at is None:
            p.err(node.line_of("at"), "at must look like '10:00'")
        if key != "day":
            p.err(node.line_of("at"), "'at' only goes with 'day'")
    if "from" in node and key != "after":
        p.err(node.line_of("from"), "'from' only goes with 'after'")
    if key == "day":
        day = node["day"]
        if not isinstance(day, int) or isinstance(day, bool) or day < 0:
            p.err(kline, "day must be an integer ≥ 0")
            day = 0
        return Timing("day", day=day, at=at)
    if key == "after":
        m = _AFTER_RE.match(str(node["after"]).strip())
        if m is None:
            p.err(kline, f"after must look like '+7d', '+2h', '+30m', '+3bd', '+1w' or '+1 month', "
                         f"not {node['after']!r}")
            return Timing("after")
        relative_to = node.get("from", "previous")
        if relative_to not in ("previous", "enrollment"):
            p.err(node.line_of("from"), "from must be 'previous' or 'enrollment'")
            relative_to = "previous"
        unit = _UNITS[re.sub(r"\s+", " ", m.group(2).lower())]
        return Timing("after", amount=int(m.group(1)), unit=unit, relative_to=relative_to)
    if key == "cron":
        expr = str(node["cron"])
        if not croniter.is_valid(expr):
            p.err(kline, f"invalid cron expression {expr!r}")
        return Timing("cron", cron=expr)
    raw = node["datetime"]
    when: datetime | None = raw if isinstance(raw, datetime) else None
    if when is None:
        try:
            when = datetime.fromisoformat(str(raw))
        except ValueError:
            p.err(kline, f"datetime must be ISO 8601, e.g. 2025-10-15T10:00:00+08:00, not {raw!r}")
            when = datetime(1970, 1, 1, tzinfo=UTC)
    # A naive datetime is read in the SOP's zone at plan time (timing.due_at does that).
    return Timing("at", when=when)


def _parse_step(node: Any, p: _P, line: int) -> Step | None:
    if not isinstance(node, YMap):
        p.err(line_of(node, default=line), "a step must be a mapping")
        return None
    allowed = {"id", "content", "variants", "touchpoint", "day", "at", "after", "from", "cron", "datetime",
               "executor", "fallback", "note"}
    for key in sorted(set(node) - allowed, key=str):
        p.err(node.line_of(key), f"unknown step key '{key}'")
    step_id = node.get("id")
    if not isinstance(step_id, str) or not step_id:
        p.err(node.line, "a step needs an 'id'")
        step_id = f"<line {node.line}>"
    touchpoint = node.get("touchpoint", "chat")
    if touchpoint not in TOUCHPOINTS:
        p.err(node.line_of("touchpoint"), f"touchpoint must be one of {', '.join(TOUCHPOINTS)}")
    content = node.get("content")
    variants: list[Variant] = []
    if ("content" in node) == ("variants" in node):
        p.err(node.line, f"step '{step_id}' needs exactly one of 'content' or 'variants'")
    elif "variants" in node:
        raw = node["variants"]
        if not isinstance(raw, list) or len(raw) < 2:
            p.err(node.line_of("variants"), "variants needs a list of at least two {id, script, weight}")
            raw = []
        for v in raw:
            vline = line_of(v, default=node.line_of("variants"))
            if not isinstance(v, YMap) or not all(isinstance(v.get(k), str) for k in ("id", "script")):
                p.err(vline, "a variant needs 'id' and 'script'")
                continue
            weight = v.get("weight", 1)
            if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
                p.err(v.line_of("weight"), f"variant '{v['id']}' weight must be a number > 0")
                weight = 0
            variants.append(Variant(v["id"], v["script"], float(weight)))
        if len({v.id for v in variants}) != len(variants):
            p.err(node.line_of("variants"), "variant ids must be unique within a step")
    elif not isinstance(content, str):
        p.err(node.line_of("content"), "content must be a script id")
        content = None
    return Step(
        id=step_id, touchpoint=str(touchpoint), timing=_parse_timing(node, p), content=content,
        variants=tuple(variants), executor=_parse_executor(node, p), line=node.line,
    )


_EXIT_KINDS = ("replied", "tag_added", "stage_at_least", "deleted", "left_crowd")


def _parse_exit(node: Any, p: _P, line: int, crowd: Crowd) -> tuple[ExitCondition, ...]:
    if node is None:
        return ()
    if not isinstance(node, YList):
        p.err(line, "exit must be a list")
        return ()
    out = []
    for item in node:
        iline = line_of(item, default=node.line)
        if isinstance(item, str) and item in ("replied", "deleted", "left_crowd"):
            if item == "left_crowd" and crowd.is_trigger:
                p.err(iline, "left_crowd needs a filter crowd (a trigger crowd has nothing to leave)")
            out.append(ExitCondition(item))
            continue
        if isinstance(item, YMap) and len(item) == 1:
            key, value = next(iter(item.items()))
            if key == "tag_added":
                out.append(ExitCondition(key, _check_tag(value, iline, p)))
                continue
            if key == "stage_at_least":
                out.append(ExitCondition(key, _check_stage(value, iline, p)))
                continue
            if key in ("replied", "deleted", "left_crowd") and value is True:
                out.append(ExitCondition(key))
                continue
        p.err(iline, f"unknown exit condition {plain_repr(item)} (one of {', '.join(_EXIT_KINDS)})")
    return tuple(out)


def plain_repr(value: Any) -> str:
    return repr(dict(value)) if isinstance(value, dict) else repr(value)


def _parse_reentry(value: Any, p: _P, line: int) -> Reentry:
    if value is None or value == "never":
        return Reentry("never")
    if value == "after_exit":
        return Reentry("after_exit")
    if isinstance(value, YMap) and set(value) == {"every"}:
        m = re.match(r"^\s*(\d+)\s*(d|days?)?\s*$", str(value["every"]))
        if m and int(m.group(1)) > 0:
            return Reentry("every", int(m.group(1)))
    p.err(line, "reentry must be 'never', 'after_exit' or {every: N days}")
    return Reentry("never")


def parse_sop(data: Any, source: str = "<memory>") -> SopDefinition:
    """Parse one SOP document (YMap from ``load_yaml`` or a plain dict). Raises ``SopDefinitionError``."""
    p = _P(source)
    if not isinstance(data, Mapping):
        raise SopDefinitionError([Problem(source, line_of(data), "an SOP is a mapping")])
    if not isinstance(data, YMap):
        data = _to_ymap(data)
    allowed = {"id", "name", "enabled", "crowd", "steps", "calendar", "executor", "fallback", "exit",
               "reentry", "capped", "description"}
    for key in sorted(set(data) - allowed, key=str):
        p.err(data.line_of(key), f"unknown key '{key}'")
    sop_id = data.get("id")
    if not isinstance(sop_id, str) or not sop_id:
        p.err(data.line, "an SOP needs an 'id'")
        sop_id = ""
    crowd = _parse_crowd(data.get("crowd"), p, data.line_of("crowd"))
    raw_steps = data.get("steps")
    steps: list[Step] = []
    if not isinstance(raw_steps, list) or not raw_steps:
        p.err(data.line_of("steps"), "steps must be a non-empty list")
    else:
        for item in raw_steps:
            step = _parse_step(item, p, data.line_of("steps"))
            if step is None:
                continue
            if any(s.id == step.id for s in steps):
                p.err(step.line, f"duplicate step id '{step.id}'")
            steps.append(step)
    capped = data.get("capped", "defer")
    if capped not in CAPPED_ACTIONS:
        p.err(data.line_of("capped"), f"capped must be one of {', '.join(CAPPED_ACTIONS)}")
        capped = "defer"
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        p.err(data.line_of("enabled"), "enabled must be true or false")
    sop = SopDefinition(
        id=sop_id, name=str(data.get("name", sop_id)), crowd=crowd, steps=tuple(steps),
        calendar=_parse_calendar(data.get("calendar"), p, data.line_of("calendar")),
        executor=_parse_executor(data, p) or Executor(),
        exit=_parse_exit(data.get("exit"), p, data.line_of("exit"), crowd),
        reentry=_parse_reentry(data.get("reentry"), p, data.line_of("reentry")),
        capped=str(capped), enabled=enabled is not False, source=source, line=data.line,
    )
    if p.problems:
        raise SopDefinitionError(p.problems)
    return sop


def _to_ymap(value: Any) -> Any:
    """Plain dicts (tests, admin API) have no line marks; wrap them so the parser has one code path."""
    if isinstance(value, Mapping):
        out = YMap({k: _to_ymap(v) for k, v in value.items()})
        out.line, out.key_lines = 0, {}
        return out
    if isinstance(value, list):
        lst = YList(_to_ymap(v) for v in value)
        lst.line = 0
        return lst
    return value


def load_sop_file(path: Path) -> SopDefinition:
    try:
        data = load_yaml(path)
    except RecursionError as exc:  # PyYAML composes recursively: thousands of nested [ or { exhaust the stack
        raise SopDefinitionError([Problem(str(path), 1, "YAML: nested too deeply")]) from exc
    except (ValueError, TypeError) as exc:  # an int beyond 4300 digits, a 13th month, `{[a]: b}` (unhashable key)
        raise SopDefinitionError([Problem(str(path), 1, f"YAML: invalid value: {exc}")]) from exc
    return parse_sop(data, str(path))


def load_sops(directory: Path | str) -> dict[str, SopDefinition]:
    """Load every SOP under ``directory``; raises ``SopDefinitionError`` with all problems of all files."""
    sops: dict[str, SopDefinition] = {}
    problems: list[Problem] = []
    for path in yaml_files(Path(directory)):
        try:
            sop = load_sop_file(path)
        except LibraryError as exc:
            problems += exc.problems
            continue
        if sop.id in sops:
            first = sops[sop.id]
            problems.append(Problem(str(path), sop.line,
                                    f"duplicate SOP id '{sop.id}' (first at {first.source})"))
            continue
        sops[sop.id] = sop
    if problems:
        raise SopDefinitionError(problems)
    return sops
