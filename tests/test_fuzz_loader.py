"""Fuzzing the content loaders: rules (files and POST /api/v1/rules) and SOP definitions.

Whatever the YAML or JSON — valid shapes with random values, or garbage — a loader either loads it or raises
its own error (RuleError / LibraryError) naming the file and line or the field path; never another exception
type. Huge keyword lists load, and a pathological regex costs a bounded time and is reported.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.services import Services
from bot.sop.definition import SopDefinition, load_sop_file, parse_sop
from bot.tagging.models import TaggingRule
from bot.tagging.rules import RuleError, RuleSet, load_rule_file, parse_rule_document
from scripts_library.loader import LibraryError
from tests.conftest import ADMIN

CI = bool(os.environ.get("CI"))
EXAMPLES = int(os.environ.get("SOPBOT_FUZZ_EXAMPLES", "250" if CI else "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not CI,
                suppress_health_check=list(HealthCheck))

# -- strategies: plausible shapes with random values, and garbage ----------------------------------

scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
           | st.text(max_size=30) | st.sampled_from(["", " ", "7d", "0d", "-1d", "1d12h", "99999999999w", "10:00",
                                                     "25:61", "+3d", "a:b", ":", "中文:标签", "~", "null"]))
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=15)


def _or_random(values: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(values) | anything


def _some(strategy: st.SearchStrategy[Any], keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({}, optional=keys).flatmap(
        lambda d: st.dictionaries(st.text(max_size=8), anything, max_size=1).map(lambda extra: {**d, **extra})
        if d.get("id") == "x-extra" else st.just(d)) | strategy


MODES = ["contains", "exact", "prefix", "suffix", "word", "regex", "glob"]
REGEXES = [r"\d+\s*个?账号", "(", "a|", "(a+)+$", "x{1,99999}", "(?<=a+)b", "价格", r"\p{Han}+", "[", "a" * 400]
TAGS = ["意向:询价", "来源:直播", "a:b", "无冒号", ":x", "x:", " a : b ", "a:b:c"]
keyword_item = (_or_random(["价格", "报价", "price", " ", "繁體", "ＰＲＩＣＥ", "x" * 101])
                | st.fixed_dictionaries({"text": _or_random(REGEXES + ["价格"]), "mode": _or_random(MODES)}))
keyword_rule = _some(anything, {
    "id": _or_random(["pricing", "trial", "bad id!", "", "x-extra"]), "name": _or_random(["询价"]),
    "mode": _or_random(MODES), "keywords": st.lists(keyword_item, max_size=5) | anything,
    "negatives": st.lists(keyword_item, max_size=3) | anything,
    "scope": st.fixed_dictionaries({}, optional={
        "employees": st.lists(_or_random(["zhangsan"]), max_size=2) | anything,
        "departments": st.lists(_or_random(["2", 2]), max_size=2) | anything,
        "chat_types": st.lists(_or_random(["single", "group", "channel"]), max_size=2) | anything,
        "sources": st.lists(_or_random(["kf", "archive", "app", "sms"]), max_size=2) | anything}) | anything,
    "threshold": st.fixed_dictionaries({}, optional={"count": _or_random([1, 3, 0, -1]),
                                                     "window": _or_random(["7d", "1h"])}) | anything,
    "cooldown": _or_random(["30d", "1d12h", "0s"]), "add_tags": st.lists(_or_random(TAGS), max_size=3) | anything,
    "remove_tags": st.lists(_or_random(TAGS), max_size=2) | anything, "enabled": _or_random([True, False]),
})
KINDS = ["added_via_channel", "opened_link", "joined_group", "left_group", "deleted_employee", "no_reply_days",
         "event_count", "teleported"]
behaviour_rule = _some(anything, {
    "id": _or_random(["from_webinar", "b!"]), "name": _or_random(["直播来源"]), "kind": _or_random(KINDS),
    "params": st.fixed_dictionaries({}, optional={
        "channel": _or_random(["webinar"]), "days": _or_random([3, 0, "3"]), "material": _or_random(["白皮书"]),
        "event_kind": _or_random(["link_opened", "nope"]), "count": _or_random([2, -2]),
        "window": _or_random(["7d", "7x"]), "group_id": _or_random(["wr1"])}) | anything,
    "add_tags": st.lists(_or_random(TAGS), max_size=2) | anything, "cooldown": _or_random(["1d"]),
})
rule_documents = st.fixed_dictionaries({}, optional={
    "version": _or_random([1, 2, "1"]), "keyword_rules": st.lists(keyword_rule, max_size=3) | anything,
    "behaviour_rules": st.lists(behaviour_rule, max_size=3) | anything}) | anything

STEP = _some(anything, {
    "id": _or_random(["intro", "d1", ""]), "after": _or_random(["+10m", "+2d", "3 fortnights", "+1bd"]),
    "from": _or_random(["enrollment", "previous", "nowhere"]), "day": _or_random([1, 0, -3, "1"]),
    "at": _or_random(["10:00", "25:00"]), "content": _or_random(["newcust.intro", "nosuch.script"]),
    "touchpoint": _or_random(["chat", "mass_send", "group", "moments", "fax"]),
    "variants": anything, "window": _or_random(["09:00-18:00", "bad"]), "cron": _or_random(["0 10 * * 1", "x"]),
})
sop_documents = _some(anything, {
    "id": _or_random(["welcome", ""]), "name": _or_random(["欢迎"]), "enabled": _or_random([True, "yes"]),
    "crowd": st.fixed_dictionaries({}, optional={
        "trigger": st.lists(st.fixed_dictionaries({}, optional={
            "event": _or_random(["customer_added", "tag_added", "stage_reached", "exploded"]),
            "channel": _or_random(["webinar"]), "tag": _or_random(TAGS), "stage": _or_random(["MQL", "XL"])}),
            max_size=2) | anything,
        "require": anything, "exclude": anything}) | anything,
    "steps": st.lists(STEP, max_size=3) | anything,
    "calendar": st.fixed_dictionaries({}, optional={"business_days": _or_random([True, "no"]),
                                                    "quiet_hours": _or_random(["21:30-08:30", "x"]),
                                                    "timezone": _or_random(["Asia/Shanghai", "Mars/Olympus"]),
                                                    "holidays": anything}) | anything,
    "executor": _or_random(["owner", "round_robin", "nobody"]), "fallback": _or_random(["liuyang"]),
    "exit": st.lists(_or_random(["replied", "deleted", {"stage_at_least": "MQL"}, {"tag": "a:b"}]), max_size=3)
    | anything,
    "reentry": _or_random(["never", "after_exit", {"every": 30}, {"every": -1}]),
    "capped": _or_random(["defer", "skip", "drop", "explode"]),
})


def _yaml_text(draw: st.DrawFn, document: st.SearchStrategy[Any]) -> bytes:
    """YAML of a generated document, or that YAML damaged, or garbage bytes and YAML oddities."""
    kind = draw(st.integers(0, 4))
    if kind <= 1:
        text = yaml.safe_dump(draw(document), allow_unicode=True, sort_keys=False)
        if kind == 1 and text:  # cut, duplicate or inject at a random place
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from(["", "\n  - : ]", "\t", "{", "&a", "*nope", "!!python/object "
                                                     "x", "\n" + text[:at]])) + text[at + draw(st.integers(0, 3)):]
        return text.encode("utf-8")
    if kind == 2:
        return draw(st.binary(max_size=300))
    if kind == 3:
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    return draw(st.sampled_from([
        b"a: &a [x, x, x]\nb: &b [*a, *a, *a]\nkeyword_rules: [*b, *b, *b]\n",  # aliases
        b"keyword_rules:\n  - id: r\n    name: \xff\xfe\n",  # not UTF-8
        b"!!python/object/apply:os.system ['true']\n",  # unsafe tags are refused
        b"keyword_rules:\n  - id: r\n    keywords: [" + b"1" * 5000 + b"]\n",  # an int beyond str() limits
        b"keyword_rules: [{id: r, name: n, keywords: [a], add_tags: [a:b], enabled: 2026-13-45}]\n",  # bad date
        b"{[1]: 2}\n", b"? [a, b]\n: c\n",  # unhashable keys
        b"id: x\nid: y\n", b"---\na: 1\n---\nb: 2\n", b"\xef\xbb\xbfversion: 1\n", b"", b"a: \x08\n",
    ]))


yaml_rule_files = st.composite(lambda draw: _yaml_text(draw, rule_documents))()
yaml_sop_files = st.composite(lambda draw: _yaml_text(draw, sop_documents))()


def _assert_rule_errors(exc: RuleError, source: str) -> None:
    assert exc.errors, "a RuleError names at least one problem"
    for message in exc.errors:
        assert re.match(rf"{re.escape(source)}(:\d+)?: .", message), message


def _assert_sop_errors(exc: LibraryError, source: str) -> None:
    assert exc.problems
    for problem in exc.problems:
        assert problem.path == source and isinstance(problem.line, int) and problem.line >= 0, problem
        assert problem.message and str(problem).startswith(f"{source}:{problem.line}: ")


# -- rules -----------------------------------------------------------------------------------------

def test_rule_documents_load_or_raise_rule_error_with_a_field_path() -> None:
    outcomes = {"loaded": 0, "refused": 0}

    @FUZZ
    @given(document=rule_documents)
    def run(document: Any) -> None:
        try:
            result = parse_rule_document(document, "<fuzz>")
        except RuleError as exc:
            _assert_rule_errors(exc, "<fuzz>")
            outcomes["refused"] += 1
            return
        assert isinstance(result, RuleSet)
        outcomes["loaded"] += 1

    run()
    assert outcomes["refused"], outcomes


@pytest.mark.parametrize("key", ["\n", "", "a\tb"])
def test_a_rule_document_key_that_is_empty_or_has_control_characters_is_quoted_in_its_error(key: str) -> None:
    """Found by the fuzz test above in CI: a top-level key "\n" broke the error into two lines."""
    with pytest.raises(RuleError) as caught:
        parse_rule_document({key: 1}, "<fuzz>")
    _assert_rule_errors(caught.value, "<fuzz>")
    assert caught.value.errors == [f"<fuzz>: {key!r}: unknown top-level key (expected one of "
                                   "['behaviour_rules', 'keyword_rules', 'version'])"]


def test_rule_files_load_or_raise_rule_error_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    lines = {"with_line": 0}

    @FUZZ
    @given(content=yaml_rule_files)
    def run(content: bytes) -> None:
        path.write_bytes(content)
        try:
            assert isinstance(load_rule_file(path), RuleSet)
        except RuleError as exc:
            _assert_rule_errors(exc, str(path))
            lines["with_line"] += any(re.match(rf"{re.escape(str(path))}:\d+: ", e) for e in exc.errors)

    run()
    assert lines["with_line"], "no refusal carried a line number"


def test_the_shipped_rule_and_sop_files_still_load() -> None:
    # The fuzz refusals above are not blanket: the real content loads.
    root = Path(__file__).resolve().parents[1] / "scripts_library" / "content"
    for path in sorted((root / "rules").glob("*.yaml")):
        assert load_rule_file(path).keyword_rules or load_rule_file(path).behaviour_rules
    for path in sorted((root / "sops").glob("*.yaml")):
        assert isinstance(load_sop_file(path), SopDefinition)


DEEP_YAML = b"keyword_rules: " + b"[" * 1000 + b"]" * 1000  # ~2 s before PyYAML runs out of stack: not fuzzed


def test_deeply_nested_yaml_is_a_loader_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_bytes(DEEP_YAML)
    with pytest.raises(RuleError) as rules:
        load_rule_file(path)
    _assert_rule_errors(rules.value, str(path))
    assert "nested too deeply" in str(rules.value)
    with pytest.raises(LibraryError) as sop:
        load_sop_file(path)
    _assert_sop_errors(sop.value, str(path))
    assert "nested too deeply" in str(sop.value)


# -- SOP definitions -------------------------------------------------------------------------------

def test_sop_documents_load_or_raise_with_line_numbers() -> None:
    refused = []

    @FUZZ
    @given(document=sop_documents)
    def run(document: Any) -> None:
        try:
            assert isinstance(parse_sop(document, "<fuzz>"), SopDefinition)
        except LibraryError as exc:
            _assert_sop_errors(exc, "<fuzz>")
            refused.append(1)

    run()
    assert refused


def test_sop_files_load_or_raise_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "sop.yaml"

    @FUZZ
    @given(content=yaml_sop_files)
    def run(content: bytes) -> None:
        path.write_bytes(content)
        try:
            assert isinstance(load_sop_file(path), SopDefinition)
        except LibraryError as exc:
            _assert_sop_errors(exc, str(path))

    run()


@pytest.mark.parametrize(("content", "line", "shown"), [
    ("id: a\n~: 1\n", 2, "None"),                       # CI's fuzz found this one: a null key beside text keys
    ("id: a\nsteps:\n  - 1: x\n", 3, "1"),
    ("id: a\n? [a, b]\n: 1\n", 2, "['a', 'b']"),
])
def test_a_key_that_is_not_text_is_refused_with_its_line(tmp_path: Path, content: str, line: int,
                                                         shown: str) -> None:
    path = tmp_path / "sop.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LibraryError) as sop:
        load_sop_file(path)
    _assert_sop_errors(sop.value, str(path))
    assert [(p.line, p.message) for p in sop.value.problems] == [(line, f"YAML: a key must be text, not {shown}")]


def test_a_plain_document_with_keys_of_mixed_types_gets_every_unknown_key_reported() -> None:
    # parse_sop also takes plain dicts (not only the loader's YMap): their keys may be anything hashable.
    with pytest.raises(LibraryError) as sop:
        parse_sop({None: 1, 3: 2, "zz": 3}, "<doc>")
    _assert_sop_errors(sop.value, "<doc>")
    unknown = [p.message for p in sop.value.problems if p.message.startswith("unknown key")]
    assert unknown == ["unknown key '3'", "unknown key 'None'", "unknown key 'zz'"]


# -- POST /api/v1/rules ----------------------------------------------------------------------------

def _rules_state(services: Services) -> tuple[int, str]:
    with services.transaction() as s:
        count = int(s.scalar(select(func.count()).select_from(TaggingRule)) or 0)
        ids = ",".join(s.scalars(select(TaggingRule.id).order_by(TaggingRule.id)))
    return count, ids


def test_post_rules_is_created_or_refused_with_a_reason_and_nothing_changes_on_refusal(
        client: Any, services: Services) -> None:
    created = []

    @FUZZ
    @given(body=keyword_rule | behaviour_rule | st.builds(
        lambda r, t: {**r, "rule_type": t}, (keyword_rule | behaviour_rule).filter(lambda r: isinstance(r, dict)),
        _or_random(["keyword", "behaviour"])))
    def run(body: Any) -> None:
        before = _rules_state(services)
        resp = client.post("/api/v1/rules", json=body, headers=ADMIN)
        assert resp.status_code in (200, 201, 400, 409), (resp.status_code, body, resp.data[:300])
        if resp.status_code >= 400:
            assert resp.get_json()["error"], body
            assert _rules_state(services) == before
        else:
            created.append(resp.get_json()["id"])
            assert client.delete(f"/api/v1/rules/{resp.get_json()['id']}", headers=ADMIN).status_code in (200, 204)

    run()
    for raw in (b"[" * 100_000, b"{\"a\":" * 100_000, b"\xff", b"1" * 5000, b"null"):
        resp = client.post("/api/v1/rules", data=raw, content_type="application/json", headers=ADMIN)
        assert resp.status_code == 400 and resp.get_json()["error"], raw[:20]
    assert _rules_state(services) == (0, "")


# -- huge keyword lists and pathological regexes ---------------------------------------------------

def test_fifty_thousand_keywords_in_one_rule(client: Any, services: Services) -> None:
    keywords = [f"model{i:05d}" for i in range(50_000)]
    rule = {"id": "huge", "name": "型号", "keywords": keywords, "add_tags": ["意向:询价"]}
    parsed = parse_rule_document({"keyword_rules": [rule]}, "<huge>")
    assert len(parsed.keyword_rules[0].keywords) == 50_000
    resp = client.post("/api/v1/rules", json=rule, headers=ADMIN)
    assert resp.status_code in (200, 201), resp.get_json()
    tried = client.post("/api/v1/rules/test", json={"text": "请问 model49999 多少钱"}, headers=ADMIN).get_json()
    assert {r["rule_id"]: r["fired"] for r in tried["results"]}["huge"] is True
    # One bad keyword among 50 000 is named by its index.
    bad = dict(rule, id="huge_bad", keywords=[*keywords[:37_123], "   ", *keywords[37_123:]])
    refused = client.post("/api/v1/rules", json=bad, headers=ADMIN)
    assert refused.status_code == 400 and "keywords[37123]" in refused.get_json()["error"]


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|aa)+$", r"(\w+\s?)+$"])
def test_a_pathological_regex_is_bounded_in_time_and_reported(client: Any, services: Services,
                                                              pattern: str) -> None:
    rule = {"id": "evil", "name": "回溯", "keywords": [{"text": pattern, "mode": "regex"}], "add_tags": ["a:b"]}
    assert client.post("/api/v1/rules", json=rule, headers=ADMIN).status_code in (200, 201)
    started = time.perf_counter()
    resp = client.post("/api/v1/rules/test", json={"text": "a" * 20_000 + "!"}, headers=ADMIN)
    elapsed = time.perf_counter() - started
    assert resp.status_code == 200
    verdict = {r["rule_id"]: r for r in resp.get_json()["results"]}["evil"]
    assert verdict["fired"] is False and "regex_timeout" in verdict["reason"]
    assert elapsed < 10, elapsed  # the bound is 0.05 s per search; generous for a loaded CI machine
