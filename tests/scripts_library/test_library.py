from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import pytest

from scripts_library import CONTENT_ROOT, LinkContext, load_library, make_context, render_script
from scripts_library.loader import Part, Script
from scripts_library.render import template_problems
from scripts_library.validate import example_context, main, validate_library

LIBRARY = load_library(CONTENT_ROOT)


def test_shipped_library_is_valid() -> None:
    assert validate_library(CONTENT_ROOT) == []


@pytest.mark.parametrize("script_id", sorted(LIBRARY.scripts))
def test_every_shipped_script_renders_its_example(script_id: str) -> None:
    script = LIBRARY.get(script_id)
    rendered = render_script(script, example_context(script))
    assert len(rendered.parts) == len(script.parts)
    for part, source in zip(rendered.parts, script.parts, strict=True):
        assert part.type == source.type
        if part.type == "text":
            assert part.text and "{{" not in part.text and "None" not in part.text
        if part.media_path:
            assert Path(part.media_path).is_file()
    name = script.example["customer"]["name"]
    texts = " ".join(p.text or "" for p in rendered.parts)
    if any("customer.name" in (p.text or "") for p in script.parts):
        assert name in texts


def test_scripts_keep_file_and_line() -> None:
    script = LIBRARY.get("welcome.webinar")
    lines = Path(script.source).read_text(encoding="utf-8").splitlines()
    assert "id: welcome.webinar" in lines[script.line - 1]
    assert script.category == "欢迎语"
    assert script.parts[1].line > script.line


def test_required_part_kinds_are_shipped() -> None:
    kinds = {p.type for s in LIBRARY.scripts.values() for p in s.parts}
    assert {"text", "image", "link", "file", "miniprogram"} <= kinds


def _script(text: str) -> Script:
    return Script("t.x", "T", "test", (), (Part("text", 1, text=text),), {}, "mem.yaml", 1)


CTX = make_context(
    customer={
        "name": "李雷",
        "remark": "",
        "company": "星海",
        "gender": "male",
        "tags": ["来源:直播"],
        "custom": {"industry": "制造业"},
        "stage": "new",
        "score": 3,
    },
    owner={"name": "王芳", "userid": "wangfang"},
    company={"name": "云帆"},
    now=datetime(2025, 9, 1, 2, tzinfo=UTC),
)


def test_strict_undefined_raises_on_unknown_variables() -> None:
    assert render_script(_script("{{ customer.name }}好"), CTX).parts[0].text == "李雷好"
    with pytest.raises(jinja2.UndefinedError):
        render_script(_script("{{ customer.nickname }}"), CTX)
    with pytest.raises(jinja2.UndefinedError):
        render_script(_script("{{ coupon_code }}"), CTX)
    with pytest.raises(jinja2.UndefinedError):
        render_script(_script("{{ customer.custom.budget }}"), CTX)


def test_sandbox_blocks_internals() -> None:
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_script(_script("{{ customer.__class__.__mro__ }}"), CTX)


def test_static_check_knows_allowed_variables() -> None:
    assert template_problems("{{ customer.name }} {{ owner.userid }} {{ customer.custom.x }} {{ now }}") == []
    problems = template_problems("{{ customer.nick }} {{ foo }} {% for t in customer.tags %}{{ t }}{% endfor %}")
    assert any("'foo'" in p for p in problems)
    assert any("customer.nick" in p for p in problems)
    assert len(problems) == 2
    assert template_problems("{{ customer.name ")[0].startswith("template syntax")


def test_link_rewriter_wraps_link_parts_and_text_urls() -> None:
    seen: list[tuple[str, LinkContext]] = []

    def rewrite(url: str, ctx: LinkContext) -> str:
        seen.append((url, ctx))
        return f"https://t.example/r/{len(seen)}"

    script = LIBRARY.get("nurture.day1_replay")
    rendered = render_script(script, example_context(script), link_rewriter=rewrite)
    links = [p for p in rendered.parts if p.type == "link"]
    assert [p.url for p in links] == ["https://t.example/r/1", "https://t.example/r/2"]
    assert seen[0][0] == "https://www.example.com/webinar/2025-09/replay"
    assert seen[0][1] == LinkContext("nurture.day1_replay", 1, "link", "直播回放｜制造业数字化转型实战")
    assert links[0].cover_path and links[0].cover_path.endswith("webinar_replay_cover.png")

    text = render_script(_script("看这里 https://x.example/a?b=1 。"), CTX, link_rewriter=rewrite).parts[0].text
    assert text == "看这里 https://t.example/r/3 。"


def test_channels_parsed() -> None:
    webinar = LIBRARY.channels["webinar"]
    assert webinar.welcome_script == "welcome.webinar"
    assert "来源:直播" in webinar.tags and webinar.owners == ("wangfang", "liuyang")
    assert set(LIBRARY.channels) == {"webinar", "expo2025_booth12", "website", "poster_qr_0412"}


def test_search() -> None:
    ids = [s.id for s in LIBRARY.search("案例")]
    assert "nurture.day7_case_story" in ids
    assert [s.id for s in LIBRARY.search("预约 一对一")] == ["nurture.day21_consult"]
    assert all(s.category == "欢迎语" for s in LIBRARY.search("", category="欢迎语"))


# ------------------------------------------------------------------------------- broken library


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


BROKEN_SCRIPTS = """\
category: 测试
example:
  customer: {name: 李雷}
  owner: {name: 王芳}
  company: {name: 云帆}
scripts:
  - id: ok.one
    title: 正常
    parts:
      - text: "{{ customer.name }}您好"
  - id: bad.var
    title: 未知变量
    parts:
      - text: "{{ customer.nickname }}，{{ coupon }}"
  - id: bad.media
    title: 缺素材
    parts:
      - image: images/nope.png
      - miniprogram:
          appid: wx1
          title: 小程序
          page: pages/index
          cover: images/nope.png
"""

BROKEN_SOP = """\
id: s1
name: 测试
crowd:
  trigger:
    - event: customer_added
      channel: nowhere
steps:
  - id: a
    day: 0
    content: missing.script
  - id: b
    after: "+3 fortnights"
    content: ok.one
  - id: c
    day: 1
    variants:
      - {id: A, script: ok.one, weight: 0}
      - {id: B, script: ok.one, weight: 1}
"""


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    _write(tmp_path, "scripts/a.yaml", BROKEN_SCRIPTS)
    _write(
        tmp_path,
        "scripts/b.yaml",
        "scripts:\n  - id: ok.one\n    title: 重复\n    parts:\n      - text: hi\n    example: {customer: {name: x}}\n",
    )
    _write(tmp_path, "scripts/c.yaml", "scripts:\n  - id: x\n    title: [unclosed\n")
    _write(tmp_path, "channels.yaml", "webinar:\n  name: 直播\n  welcome: nope.script\n  tags: [bad]\n")
    _write(tmp_path, "sops/s1.yaml", BROKEN_SOP)
    return tmp_path


def test_validator_reports_file_and_line(broken: Path) -> None:
    found = {(Path(p.path).relative_to(broken).as_posix(), p.line, p.message) for p in validate_library(broken)}

    def has(rel: str, line: int, fragment: str) -> bool:
        return any(r == rel and n == line and fragment in m for r, n, m in found)

    assert has("scripts/a.yaml", 14, "customer.nickname"), found
    assert has("scripts/a.yaml", 14, "'coupon'")
    assert has("scripts/a.yaml", 11, "fails to render its example")
    assert has("scripts/a.yaml", 18, "missing material file")
    assert has("scripts/a.yaml", 22, "must end with .html")
    assert has("scripts/b.yaml", 2, "duplicate script id 'ok.one'")
    assert has("scripts/c.yaml", 4, "YAML: while parsing a flow sequence (line 3)")
    assert has("channels.yaml", 1, "welcome script 'nope.script' not found")
    assert has("channels.yaml", 4, "'group:name'")
    assert has("sops/s1.yaml", 12, "after must look like")
    assert has("sops/s1.yaml", 17, "weight must be a number > 0")


def test_validator_reports_broken_references(tmp_path: Path) -> None:
    _write(tmp_path, "scripts/a.yaml", BROKEN_SCRIPTS)
    _write(tmp_path, "sops/s1.yaml", BROKEN_SOP.replace('"+3 fortnights"', '"+3d"').replace("weight: 0", "weight: 2"))
    found = {(Path(p.path).name, p.line, p.message) for p in validate_library(tmp_path)}
    assert ("s1.yaml", 8, "step 'a' uses unknown script 'missing.script'") in found
    assert ("s1.yaml", 1, "unknown channel 'nowhere' (not in channels.yaml)") in found


def test_main_prints_problems_and_exit_code(broken: Path) -> None:
    out = io.StringIO()
    assert main([str(broken)], out=out) == 1
    first = out.getvalue().splitlines()[0]
    path, line, message = first.split(":", 2)
    assert Path(path).is_relative_to(broken) and line.isdigit() and message
    ok = io.StringIO()
    assert main([str(CONTENT_ROOT)], out=ok) == 0


def test_channel_snapshots_for_the_service() -> None:
    from bot.actions import TagRef
    from scripts_library import channel_snapshots

    snapshots = channel_snapshots(CONTENT_ROOT)
    webinar = snapshots["webinar"]
    assert webinar.welcome_script == "welcome.webinar" and webinar.name == "9月直播报名页"
    assert webinar.tags == (TagRef("来源", "直播"), TagRef("活动", "2025-09直播"))


@pytest.mark.parametrize(("text", "reason"), [
    ("a: 2026-13-45\n", "cannot build a value: month must be in 1..12"),
    ("a: !!timestamp x\n", "cannot build a value"),
    ("? {a: 1}\n: b\n", "bad.yaml:1: YAML: a key must be text, not {'a': 1}"),
    ("[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
])
def test_yaml_that_cannot_be_built_is_a_library_error_with_its_file(tmp_path: Path, text: str, reason: str) -> None:
    from scripts_library.loader import LibraryError, load_yaml

    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LibraryError) as caught:
        load_yaml(path)
    assert str(path) in str(caught.value) and reason in str(caught.value)
