"""Load the content library (scripts 话术, channels 渠道活码) from YAML, keeping ``file:line`` for everything.

Content is data edited by the ops lead, so every problem must point at the line to fix: the YAML loader
below records the line of every mapping, list and key, and all loaders collect ``Problem`` rows instead of
stopping at the first error (``sopbot check`` shows them all at once).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from bot.store import ChannelSnapshot

CONTENT_ROOT = Path(__file__).resolve().parent / "content"

PART_TYPES = ("text", "image", "link", "file", "video", "miniprogram")
# A corp tag is "group:name" (企业标签组:标签); both halves non-empty, no further colon.
TAG_RE = re.compile(r"^[^:\s][^:]*:[^:\s][^:]*$")
# WeCom limits the `state` of a contact way to 30 characters.
STATE_MAX_LEN = 30


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class LibraryError(Exception):
    """Raised by the strict loaders; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# --------------------------------------------------------------------------------------------- YAML


class YMap(dict[str, Any]):
    """A YAML mapping that remembers its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line) if hasattr(self, "key_lines") else self.line


class YList(list[Any]):
    line: int = 0


class _MarkedLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _MarkedLoader, node: yaml.MappingNode) -> YMap:
    loader.flatten_mapping(node)
    result = YMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            # `~:`, `1:` or `? [a]`: every key the library reads is text; a null or a list key would otherwise
            # reach code that sorts and compares keys as strings.
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be text, not {key!r}", key_node.start_mark
            )
        if key in result:
            # PyYAML silently keeps the last duplicate; for hand-edited content that hides mistakes.
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[str(key)] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _MarkedLoader, node: yaml.SequenceNode) -> YList:
    result = YList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    return result


_MarkedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_MarkedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: Path) -> Any:
    """Parse one YAML file into YMap/YList nodes. Raises ``LibraryError`` with the failing line."""
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.load(text, Loader=_MarkedLoader)  # noqa: S506 - _MarkedLoader derives from SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        # "while parsing a flow sequence (line 3)": the problem mark alone often points at the end of file.
        context = ""
        if exc.context and exc.context_mark:
            context = f"{exc.context} (line {exc.context_mark.line + 1}): "
        raise LibraryError([Problem(str(path), line, f"YAML: {context}{exc.problem or exc}")]) from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise LibraryError([Problem(str(path), 1, f"cannot read: {exc}")]) from exc
    except RecursionError as exc:  # thousands of nested [ or {: PyYAML's composer recurses
        raise LibraryError([Problem(str(path), 1, "YAML nested too deeply")]) from exc
    except (ValueError, TypeError, AttributeError) as exc:  # a value SafeLoader cannot build: 2026-13-45, !!timestamp x
        raise LibraryError([Problem(str(path), 1, f"YAML: cannot build a value: {exc}")]) from exc


def line_of(node: Any, key: str | None = None, default: int = 1) -> int:
    if isinstance(node, YMap):
        return node.line_of(key) if key is not None else node.line
    if isinstance(node, YList):
        return node.line
    return default


def plain(node: Any) -> Any:
    """YMap/YList -> plain dict/list (example contexts are handed to Jinja2 and to callers)."""
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node


def yaml_files(directory: Path) -> Iterator[Path]:
    yield from sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


# ------------------------------------------------------------------------------------------ scripts


@dataclass(frozen=True)
class Part:
    """One part of a script. Templated fields: text, title, desc, url (rendered with the context)."""

    type: str
    line: int
    text: str | None = None
    title: str | None = None
    desc: str | None = None
    url: str | None = None
    # Local material (absolute path under content/materials) or None; remote media use `url`.
    media_path: str | None = None
    cover_path: str | None = None
    cover_url: str | None = None
    appid: str | None = None
    page: str | None = None


@dataclass(frozen=True)
class Script:
    id: str
    title: str
    category: str
    tags: tuple[str, ...]
    parts: tuple[Part, ...]
    example: Mapping[str, Any]
    source: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Channel:
    """A channel QR code (渠道活码): WeCom returns `state` with every add event."""

    state: str
    name: str
    welcome_script: str | None
    tags: tuple[str, ...]
    owners: tuple[str, ...]
    source: str
    line: int


@dataclass
class ScriptLibrary:
    root: Path
    scripts: dict[str, Script] = field(default_factory=dict)
    channels: dict[str, Channel] = field(default_factory=dict)

    def get(self, script_id: str) -> Script:
        return self.scripts[script_id]

    def categories(self) -> list[str]:
        return sorted({s.category for s in self.scripts.values()})

    def search(self, query: str = "", category: str | None = None) -> list[Script]:
        """Sidebar quick-reply search: every whitespace-separated term must hit id/title/tags/text."""
        terms = [t.casefold() for t in query.split()]
        hits = []
        for script in sorted(self.scripts.values(), key=lambda s: (s.category, s.id)):
            if category is not None and script.category != category:
                continue
            haystack = " ".join(
                [script.id, script.title, script.category, *script.tags]
                + [p.text or "" for p in script.parts]
                + [p.title or "" for p in script.parts]
            ).casefold()
            if all(t in haystack for t in terms):
                hits.append(script)
        return hits


def materials_root(root: Path) -> Path:
    return root / "materials"


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


class _Collector:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.problems: list[Problem] = []

    def err(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))


def _str(node: YMap, key: str, c: _Collector, required: bool = True) -> str | None:
    value = node.get(key)
    if value is None:
        if required:
            c.err(node.line, f"missing '{key}'")
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        c.err(node.line_of(key), f"'{key}' must be a string")
        return None
    return str(value)


def _str_list(node: YMap, key: str, c: _Collector) -> tuple[str, ...]:
    value = node.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        c.err(node.line_of(key), f"'{key}' must be a list of strings")
        return ()
    return tuple(value)


def _media(ref: str, root: Path) -> tuple[str | None, str | None]:
    """(local absolute path, url) for a media reference: a URL or a path under content/materials."""
    if is_url(ref):
        return None, ref
    return str((materials_root(root) / ref).resolve()), None


_PART_KEYS = {
    "text": {"text"},
    "image": {"image"},
    "file": {"file", "title"},
    "video": {"video", "title"},
    "link": {"link", "title", "desc", "description", "cover", "url"},
    "miniprogram": {"miniprogram", "appid", "title", "page", "cover"},
}


def _parse_part(node: Any, root: Path, c: _Collector, default_line: int) -> Part | None:
    if not isinstance(node, YMap) or not node:
        c.err(line_of(node, default=default_line), f"a part must be a mapping with one of {PART_TYPES}")
        return None
    kinds = [k for k in PART_TYPES if k in node]
    if len(kinds) != 1:
        c.err(node.line, f"a part needs exactly one of {', '.join(PART_TYPES)}")
        return None
    kind = kinds[0]
    unknown = set(node) - _PART_KEYS[kind]
    for key in sorted(unknown):
        c.err(node.line_of(key), f"unknown key '{key}' in {kind} part")
    if kind == "text":
        text = _str(node, "text", c)
        return Part("text", node.line, text=text) if text is not None else None
    if kind in ("image", "file", "video"):
        ref = _str(node, kind, c)
        if ref is None:
            return None
        media_path, url = _media(ref, root)
        return Part(kind, node.line, media_path=media_path, url=url, title=_str(node, "title", c, False))
    # link / miniprogram: the type key holds a nested mapping, or the fields sit next to it.
    body = node[kind] if isinstance(node[kind], YMap) else node
    cover = _str(body, "cover", c, required=kind == "miniprogram")
    cover_path, cover_url = _media(cover, root) if cover else (None, None)
    if kind == "link":
        url = _str(body, "url", c)
        title = _str(body, "title", c)
        desc = _str(body, "desc", c, False) or _str(body, "description", c, False)
        if url is not None and not is_url(url) and "{{" not in url:
            c.err(body.line_of("url"), f"link url must start with http:// or https://: {url!r}")
        return Part("link", body.line, url=url, title=title, desc=desc, cover_path=cover_path,
                    cover_url=cover_url)
    appid = _str(body, "appid", c)
    page = _str(body, "page", c)
    if page is not None and not page.split("?", 1)[0].endswith(".html"):
        # WeCom's miniprogram message requires the page path to end with .html.
        c.err(body.line_of("page"), f"miniprogram page must end with .html: {page!r}")
    return Part("miniprogram", body.line, appid=appid, title=_str(body, "title", c), page=page,
                cover_path=cover_path, cover_url=cover_url)


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_scripts_file(path: Path, root: Path) -> tuple[list[Script], list[Problem]]:
    """One YAML file = one category: ``{category?, example?, scripts: [...]}``.

    The file-level ``example`` is deep-merged under each script's own ``example`` so a category can share a
    realistic customer while a script overrides only what it needs.
    """
    c = _Collector(path)
    try:
        doc = load_yaml(path)
    except LibraryError as exc:
        return [], exc.problems
    if not isinstance(doc, YMap) or not isinstance(doc.get("scripts"), list):
        c.err(line_of(doc), "a scripts file is a mapping with a 'scripts' list")
        return [], c.problems
    for key in sorted(set(doc) - {"category", "example", "scripts"}):
        c.err(doc.line_of(key), f"unknown key '{key}'")
    rel = path.relative_to(root / "scripts") if path.is_relative_to(root / "scripts") else Path(path.name)
    category = _str(doc, "category", c, False) or str(rel.with_suffix("")).replace("\\", "/")
    base_example = plain(doc.get("example") or {})
    scripts: list[Script] = []
    for item in doc["scripts"]:
        if not isinstance(item, YMap):
            c.err(line_of(item, default=doc.line_of("scripts")), "a script must be a mapping")
            continue
        for key in sorted(set(item) - {"id", "title", "tags", "parts", "example"}):
            c.err(item.line_of(key), f"unknown key '{key}'")
        script_id = _str(item, "id", c)
        title = _str(item, "title", c)
        tags = _str_list(item, "tags", c)
        raw_parts = item.get("parts")
        if not isinstance(raw_parts, list) or not raw_parts:
            c.err(item.line_of("parts"), "'parts' must be a non-empty list")
            raw_parts = []
        parts = [_parse_part(p, root, c, item.line_of("parts")) for p in raw_parts]
        example = item.get("example") or {}
        if not isinstance(example, Mapping):
            c.err(item.line_of("example"), "'example' must be a mapping")
            example = {}
        if script_id is None or title is None or any(p is None for p in parts):
            continue
        scripts.append(Script(
            id=script_id, title=title, category=category, tags=tags,
            parts=tuple(p for p in parts if p is not None),
            example=_deep_merge(base_example, plain(example)), source=str(path), line=item.line,
        ))
    return scripts, c.problems


def load_scripts(root: Path) -> tuple[dict[str, Script], list[Problem]]:
    scripts: dict[str, Script] = {}
    problems: list[Problem] = []
    for path in yaml_files(root / "scripts"):
        found, errs = parse_scripts_file(path, root)
        problems += errs
        for script in found:
            if script.id in scripts:
                first = scripts[script.id].where
                problems.append(Problem(script.source, script.line,
                                        f"duplicate script id '{script.id}' (first at {first})"))
                continue
            scripts[script.id] = script
    return scripts, problems


def load_channels(root: Path) -> tuple[dict[str, Channel], list[Problem]]:
    """``channels.yaml``: ``{state: {name, welcome, tags: ["group:name"], owners: [userid]}}``."""
    path = root / "channels.yaml"
    if not path.exists():
        return {}, []
    c = _Collector(path)
    try:
        doc = load_yaml(path)
    except LibraryError as exc:
        return {}, exc.problems
    if doc is None:
        return {}, []
    if not isinstance(doc, YMap):
        c.err(line_of(doc), "channels.yaml is a mapping state -> channel")
        return {}, c.problems
    channels: dict[str, Channel] = {}
    for state, body in doc.items():
        line = doc.line_of(state)
        state = str(state)
        if len(state) > STATE_MAX_LEN:
            c.err(line, f"state '{state}' is longer than {STATE_MAX_LEN} characters (WeCom limit)")
        if not isinstance(body, YMap):
            c.err(line, f"channel '{state}' must be a mapping")
            continue
        for key in sorted(set(body) - {"name", "welcome", "tags", "owners"}):
            c.err(body.line_of(key), f"unknown key '{key}'")
        tags = _str_list(body, "tags", c)
        for tag in tags:
            if not TAG_RE.match(tag):
                c.err(body.line_of("tags"), f"tag '{tag}' must look like 'group:name'")
        name = _str(body, "name", c)
        channels[state] = Channel(
            state=state, name=name or state, welcome_script=_str(body, "welcome", c, False),
            tags=tags, owners=_str_list(body, "owners", c), source=str(path), line=line,
        )
    return channels, c.problems


_LIBRARY_CACHE: dict[tuple[str, bool], tuple[tuple[tuple[str, int], ...], ScriptLibrary]] = {}


def content_signature(root: Path) -> tuple[tuple[str, int], ...]:
    """(path, mtime) of every YAML file under root: changes when any file is edited, added or removed."""
    return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*.y*ml")))


def load_library(root: Path | str = CONTENT_ROOT, strict: bool = True) -> ScriptLibrary:
    """Load scripts and channels. ``strict`` raises ``LibraryError`` on any problem (service start-up);
    run ``scripts_library.validate`` for the full check (templates, media, SOP references).

    Cached per process until a file changes: every welcome and SOP step renders from it, and parsing
    the YAML each time cost ~0.3 s a call; an edit (or an API write) is picked up on the next call."""
    root = Path(root)
    key, signature = (str(root.resolve()), strict), content_signature(root)
    cached = _LIBRARY_CACHE.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    library = _load_library(root, strict)
    _LIBRARY_CACHE[key] = (signature, library)
    return library


def _load_library(root: Path, strict: bool) -> ScriptLibrary:
    scripts, problems = load_scripts(root)
    channels, channel_problems = load_channels(root)
    problems += channel_problems
    if strict and problems:
        raise LibraryError(problems)
    return ScriptLibrary(root=root, scripts=scripts, channels=channels)


def channel_snapshots(root: Path | str = CONTENT_ROOT) -> dict[str, ChannelSnapshot]:
    """Channels as the service's ``bot.store.ChannelSnapshot`` (tags parsed to ``TagRef``).

    Raises ``LibraryError`` (path:line) on a broken channels.yaml: a wrong channel map would tag and welcome
    customers wrongly, so start-up should stop and say where.
    """
    # Imported here: the service's types live in `bot`, which the content library must not need at import.
    from bot.actions import TagRef
    from bot.store import ChannelSnapshot

    channels, problems = load_channels(Path(root))
    if problems:
        raise LibraryError(problems)
    return {
        state: ChannelSnapshot(state=c.state, name=c.name, welcome_script=c.welcome_script,
                               tags=tuple(TagRef.parse(t) for t in c.tags))
        for state, c in channels.items()
    }
