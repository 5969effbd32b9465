"""Render scripts (话术) for one customer: sandboxed Jinja2 with StrictUndefined, links via a hook.

Customer-facing copy must never go out with a blank where a name should be, so an unknown or missing
variable raises instead of rendering as "". The sandbox keeps templates (editable through the admin API)
from reaching Python internals.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from scripts_library.loader import Part, Script

# The variables a template may use, and the attributes of each (None = any key, e.g. custom fields).
ALLOWED_VARIABLES: dict[str, frozenset[str] | None] = {
    "customer": frozenset({"id", "name", "remark", "company", "gender", "tags", "custom", "stage", "score"}),
    "owner": frozenset({"name", "userid"}),
    "company": frozenset({"name"}),
    "now": None,
}

_URL_IN_TEXT = re.compile(r"https?://[^\s<>\"'，。！？）】]+")


@dataclass(frozen=True)
class LinkContext:
    """Tells the link rewriter where a URL comes from, so the tracked link can name the material."""

    script_id: str
    part_index: int
    part_type: str  # "link" for link cards, "text" for a bare URL inside a text part
    title: str | None


LinkRewriter = Callable[[str, LinkContext], str]


@dataclass(frozen=True)
class RenderedPart:
    type: str
    text: str | None = None
    title: str | None = None
    desc: str | None = None
    url: str | None = None
    media_path: str | None = None
    cover_path: str | None = None
    cover_url: str | None = None
    appid: str | None = None
    page: str | None = None


@dataclass(frozen=True)
class RenderedScript:
    script_id: str
    title: str
    parts: tuple[RenderedPart, ...]


def _finalize(value: Any) -> Any:
    # None would print as "None" in customer copy; StrictUndefined catches missing keys, this catches nulls.
    if value is None:
        raise ValueError("template printed a null value")
    return value


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    # autoescape off: output is WeChat plain text, not HTML.
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_finalize,  # noqa: S701
                                keep_trailing_newline=False)


@lru_cache(maxsize=4096)
def compile_template(source: str) -> Template:
    return environment().from_string(source)


def template_problems(source: str) -> list[str]:
    """Static check: syntax, unknown top-level variables and unknown attributes of known ones."""
    env = environment()
    try:
        ast = env.parse(source)
    except Exception as exc:  # jinja2.TemplateSyntaxError and friends
        return [f"template syntax: {exc}"]
    problems = []
    for name in sorted(meta.find_undeclared_variables(ast)):
        if name not in ALLOWED_VARIABLES:
            problems.append(f"unknown template variable '{name}' (allowed: {', '.join(ALLOWED_VARIABLES)})")
    for node in ast.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name):
            allowed = ALLOWED_VARIABLES.get(node.node.name)
            if allowed is not None and node.attr not in allowed:
                problems.append(f"unknown attribute '{node.node.name}.{node.attr}'")
    return problems


def make_context(
    *,
    customer: Mapping[str, Any],
    owner: Mapping[str, Any],
    company: Mapping[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """The render context. ``customer`` keys: name, remark, company, gender, tags (list), custom (dict),
    stage, score; ``owner``: name, userid; ``company``: name; ``now``: aware datetime (local for display)."""
    return {"customer": dict(customer), "owner": dict(owner), "company": dict(company), "now": now}


def render_template(source: str, context: Mapping[str, Any]) -> str:
    return compile_template(source).render(**context).strip()


def _rewrite_text_urls(text: str, script: Script, index: int, rewriter: LinkRewriter) -> str:
    ctx = LinkContext(script.id, index, "text", None)
    return _URL_IN_TEXT.sub(lambda m: rewriter(m.group(0), ctx), text)


def _opt(source: str | None, context: Mapping[str, Any]) -> str | None:
    return render_template(source, context) if source is not None else None


def render_part(part: Part, index: int, script: Script, context: Mapping[str, Any],
                link_rewriter: LinkRewriter | None = None) -> RenderedPart:
    if part.type == "text":
        text = render_template(part.text or "", context)
        if link_rewriter is not None:
            text = _rewrite_text_urls(text, script, index, link_rewriter)
        return RenderedPart("text", text=text)
    title = _opt(part.title, context)
    if part.type == "link":
        url = _opt(part.url, context) or ""
        if link_rewriter is not None:
            url = link_rewriter(url, LinkContext(script.id, index, "link", title))
        return RenderedPart("link", title=title, desc=_opt(part.desc, context), url=url,
                            cover_path=part.cover_path, cover_url=part.cover_url)
    return RenderedPart(part.type, title=title, url=part.url, media_path=part.media_path,
                        cover_path=part.cover_path, cover_url=part.cover_url, appid=part.appid,
                        page=part.page)


def render_script(script: Script, context: Mapping[str, Any],
                  link_rewriter: LinkRewriter | None = None) -> RenderedScript:
    """Render every part. Raises ``jinja2.UndefinedError`` on unknown/missing variables."""
    parts = tuple(render_part(p, i, script, context, link_rewriter) for i, p in enumerate(script.parts))
    return RenderedScript(script.id, script.title, parts)
