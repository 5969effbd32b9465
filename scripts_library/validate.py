"""``sopbot check``: validate the whole content library and print ``path:line: message`` per problem.

Checks YAML syntax and schema, templates (statically against the allowed variables AND by rendering each
script's example context under StrictUndefined), media files, references (SOP step -> script, channel ->
welcome script, SOP -> channel), variant weights and duplicate ids. Keyword/behaviour rules under
content/rules/ are validated by their own engine.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

from scripts_library.loader import (
    CONTENT_ROOT,
    Channel,
    LibraryError,
    Problem,
    Script,
    load_channels,
    load_scripts,
    yaml_files,
)
from scripts_library.render import render_script, template_problems

# Examples may omit `now`; a fixed moment keeps `sopbot check` reproducible.
EXAMPLE_NOW = datetime(2025, 9, 1, 10, 0, tzinfo=timezone(timedelta(hours=8)))

# 朋友圈 (moments) can carry text plus images, one video or one link; not files or mini-programs.
_MOMENTS_PARTS = {"text", "image", "video", "link"}


def example_context(script: Script) -> dict[str, Any]:
    context = dict(script.example)
    context.setdefault("now", EXAMPLE_NOW)
    return context


def _check_script(script: Script) -> list[Problem]:
    problems = []
    for part in script.parts:
        for source in (part.text, part.title, part.desc, part.url):
            if source is not None:
                problems += [Problem(script.source, part.line, msg) for msg in template_problems(source)]
        for path in (part.media_path, part.cover_path):
            if path is not None and not Path(path).is_file():
                problems.append(Problem(script.source, part.line, f"missing material file {path}"))
    if not script.example:
        problems.append(Problem(script.source, script.line, f"script '{script.id}' has no example context"))
    try:
        render_script(script, example_context(script))
    except Exception as exc:  # any template failure is a content problem to report, not a crash
        message = f"script '{script.id}' fails to render its example: {type(exc).__name__}: {exc}"
        problems.append(Problem(script.source, script.line, message))
    return problems


def _check_sops(root: Path, scripts: dict[str, Script], channels: dict[str, Channel]) -> list[Problem]:
    # Imported here: bot.sop.definition imports scripts_library.loader, and the package must stay importable
    # without the SOP engine (no import cycle at start-up).
    from bot.sop.definition import AllOf, AnyOf, Condition, CrowdNode, Not, load_sop_file

    def channels_in(node: CrowdNode | None) -> list[str]:
        if isinstance(node, AllOf | AnyOf):
            return [c for item in node.items for c in channels_in(item)]
        if isinstance(node, Not):
            return channels_in(node.item)
        if isinstance(node, Condition) and node.kind == "channel_in":
            return list(node.value)
        return []

    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for path in yaml_files(root / "sops"):
        try:
            sop = load_sop_file(path)
        except LibraryError as exc:
            problems += exc.problems
            continue
        if sop.id in seen:
            problems.append(Problem(str(path), sop.line,
                                    f"duplicate SOP id '{sop.id}' (first at {seen[sop.id]})"))
        seen.setdefault(sop.id, str(path))
        used_channels = [t.channel for t in sop.crowd.triggers if t.channel] + channels_in(sop.crowd.filter)
        for state in used_channels:
            if state not in channels:
                problems.append(Problem(str(path), sop.line,
                                        f"unknown channel '{state}' (not in channels.yaml)"))
        for step in sop.steps:
            for script_id in step.script_ids():
                script = scripts.get(script_id)
                if script is None:
                    problems.append(Problem(str(path), step.line,
                                            f"step '{step.id}' uses unknown script '{script_id}'"))
                elif step.touchpoint == "moments":
                    bad = sorted({p.type for p in script.parts} - _MOMENTS_PARTS)
                    if bad:
                        problems.append(Problem(str(path), step.line,
                                                f"step '{step.id}': moments cannot carry {', '.join(bad)}"))
    return problems


def _check_rules(root: Path) -> list[Problem]:
    from bot.tagging.rules import RuleError, load_rule_file  # the engine's own validator, imported lazily

    problems: list[Problem] = []
    for path in yaml_files(root / "rules"):
        try:
            load_rule_file(path)
        except RuleError as exc:  # messages read "path:line: rule 'id': field: message"
            for error in exc.errors:
                where, _, message = error.partition(": ")
                _, _, line = where.rpartition(":")
                problems.append(Problem(str(path), int(line) if line.isdigit() else 1, message or error))
    return problems


def validate_library(root: Path | str = CONTENT_ROOT) -> list[Problem]:
    """Every problem in the library, sorted by file and line. Empty list = valid."""
    root = Path(root)
    if not root.is_dir():
        return [Problem(str(root), 1, "content directory not found")]
    scripts, problems = load_scripts(root)
    channels, channel_problems = load_channels(root)
    problems += channel_problems
    for script in scripts.values():
        problems += _check_script(script)
    for channel in channels.values():
        if channel.welcome_script is not None and channel.welcome_script not in scripts:
            message = f"channel '{channel.state}' welcome script '{channel.welcome_script}' not found"
            problems.append(Problem(channel.source, channel.line, message))
    problems += _check_sops(root, scripts, channels)
    problems += _check_rules(root)
    return sorted(set(problems), key=lambda p: (p.path, p.line, p.message))


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point for ``sopbot check [ROOT]``: prints one ``path:line: message`` per problem; 0 if clean."""
    parser = argparse.ArgumentParser(prog="sopbot check", description="Validate the scripts/SOP library.")
    parser.add_argument("root", nargs="?", default=str(CONTENT_ROOT), help="content directory")
    args = parser.parse_args(argv)
    out = out or sys.stdout
    problems = validate_library(args.root)
    for problem in problems:
        print(problem, file=out)
    if problems:
        print(f"{len(problems)} problem(s)", file=out)
        return 1
    print(f"ok: {args.root}", file=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
