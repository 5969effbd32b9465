"""`parse_xml` equals defusedxml's ElementTree parser on generated documents, refusals included.

`bot.events` drives expat itself (defusedxml's four refusing handlers, defusedxml's exceptions) and builds the
dict while it reads. The reference below is the parser it replaced: `defusedxml.ElementTree.fromstring` then a walk
of the tree. The two must agree on every document: the same dict (the inbox's dedupe key is a hash of it, so a
retry delivered after an upgrade must still be recognised), and the same kind of refusal.
"""

from __future__ import annotations

import os
from typing import Any
from xml.etree.ElementTree import Element

import pytest
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.events import MAX_XML_DEPTH, EventParseError, parse_xml
from tests.conftest import FIXTURES

CI = bool(os.environ.get("CI"))
EXAMPLES = int(os.environ.get("SOPBOT_FUZZ_EXAMPLES", "400" if CI else "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not CI,
                suppress_health_check=list(HealthCheck))


def _value(el: Element) -> Any:
    children = list(el)
    if not children:
        return (el.text or "").strip()
    if all(c.tag == "Item" for c in children):
        return [_value(c) for c in children]
    return {c.tag: _value(c) for c in children}


def _depth(el: Element) -> int:
    return 1 + max((_depth(c) for c in el), default=0)


def reference(xml: str | bytes) -> tuple[str, Any]:
    """(outcome, value): ("ok", dict) or the kind of refusal."""
    try:
        root = fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        return "refused", None
    except Exception:
        return "malformed", None
    if _depth(root) > MAX_XML_DEPTH:
        return "deep", None
    if root.tag != "xml":
        return "root", None
    value = _value(root)
    return ("ok", value) if isinstance(value, dict) else ("empty", None)


def ours(xml: str | bytes) -> tuple[str, Any]:
    try:
        return "ok", parse_xml(xml)
    except EventParseError as exc:
        message = str(exc)
    for prefix, kind in (("XML refused", "refused"), ("not well-formed", "malformed"), ("XML nested", "deep"),
                         ("root element", "root"), ("empty <xml>", "empty")):
        if message.startswith(prefix):
            return kind, None
    raise AssertionError(f"unexpected message {message!r}")


def check(xml: str | bytes) -> tuple[str, Any]:
    expected, got = reference(xml), ours(xml)
    assert got == expected, xml
    return got


# ---- documents ------------------------------------------------------------------------------------------------

NAMES = st.sampled_from(["xml", "Item", "Content", "ExternalUserID", "A", "b", "中文", "x:Tag", "list"])
SAFE_TEXTS = st.one_of(
    st.text(alphabet=st.characters(whitelist_categories=["L", "N", "P", "Zs", "Sm", "So"], blacklist_characters="<&]"),
            max_size=12),
    st.sampled_from(["", "  padded  ", "\n", "&amp;", "&lt;b&gt;", "&#x4e2d;&#25991;", "<![CDATA[ cdata <i> ]]>",
                     "<![CDATA[]]>", "<!-- note -->", "<?pi data?>", "a<br/>b", "\u00a0nbsp\u3000", "\t"]),
)
BAD_TEXTS = st.sampled_from(["&foo;", "&", "]]>", "<", "&#0;", "\x01"])


@st.composite
def text(draw: st.DrawFn) -> str:
    return draw(BAD_TEXTS if draw(st.integers(0, 40)) == 0 else SAFE_TEXTS)


@st.composite
def element(draw: st.DrawFn, depth: int = 0) -> str:
    name = draw(NAMES)
    attrs = draw(st.sampled_from(["", ' a="1"', ' xmlns:x="urn:x"', " x:a='2' xmlns:x='urn:y'", ' xmlns="urn:d"']))
    if depth > 3 or draw(st.integers(0, 2)) == 0:
        return f"<{name}{attrs}>{draw(text())}</{name}>" if draw(st.booleans()) else f"<{name}{attrs}/>"
    kids = draw(st.lists(element(depth + 1), max_size=4))
    mixed = [draw(text()) + k for k in kids] if draw(st.booleans()) else kids
    return f"<{name}{attrs}>{''.join(mixed)}{draw(text())}</{name}>"


PROLOGS = st.sampled_from([
    "", "", "", "", "", "", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-8"?>\n', "<!-- c -->",
    "\ufeff", "  ",
    '<!DOCTYPE xml>', '<!DOCTYPE xml [<!ENTITY e "v">]>', '<!DOCTYPE xml SYSTEM "http://127.0.0.1:9/x.dtd">',
    '<!DOCTYPE xml [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>', '<!DOCTYPE xml [<!ELEMENT xml ANY>]>',
])


@st.composite
def document(draw: st.DrawFn) -> str:
    root = draw(element())
    if draw(st.integers(0, 3)):  # mostly WeCom-shaped: an <xml> root
        root = "<xml>" + "".join(draw(st.lists(element(1), min_size=0, max_size=5))) + "</xml>"
    doc = draw(PROLOGS) + root + draw(st.sampled_from(["", "", "", "\n", "<!-- tail -->", "<xml/>", "junk"]))
    if draw(st.integers(0, 9)) == 0:  # a cut or a stray byte
        cut = draw(st.integers(0, len(doc)))
        doc = doc[:cut] + draw(st.sampled_from(["", "<", "&", "\x01", "</xml>"])) + doc[cut:]
    return doc


@FUZZ
@given(document(), st.sampled_from(["str", "utf-8", "utf-16"]))
def test_parse_xml_equals_defusedxml_elementtree_on_generated_documents(doc: str, form: str) -> None:
    data: str | bytes = doc
    if form == "utf-8":
        data = doc.encode("utf-8", "surrogatepass")
    elif form == "utf-16":  # a document in another encoding, announced by its BOM
        data = doc.encode("utf-16", "surrogatepass")
    check(data)


def test_every_fixture_parses_to_the_same_dict_as_before() -> None:
    paths = sorted(FIXTURES.glob("*.xml"))
    assert paths
    for path in paths:
        kind, value = check(path.read_bytes())
        assert kind == "ok" and value.get("MsgType"), path.name


@pytest.mark.parametrize(("doc", "kind"), [
    ('<!DOCTYPE xml [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><xml><A>&b;</A></xml>', "refused"),
    ('<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><A>&x;</A></xml>', "refused"),
    ("<!DOCTYPE xml><xml><A>1</A></xml>", "refused"),
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE xml><xml><A>1</A></xml>'.encode("utf-16"), "refused"),
    ("<xml><A>&undefined;</A></xml>", "malformed"),
    ("<xml><A>1</A>", "malformed"),
    ("", "malformed"),
    ("<xml>" + "<A>" * MAX_XML_DEPTH + "</A>" * MAX_XML_DEPTH + "</xml>", "deep"),
    ("<xml>" + "<A>" * (MAX_XML_DEPTH - 1) + "x" + "</A>" * (MAX_XML_DEPTH - 1) + "</xml>", "ok"),
    ("<root><A>1</A></root>", "root"),
    ("<xml>text only</xml>", "empty"),
    ("<xml><Item>1</Item><Item>2</Item></xml>", "empty"),
    ("<xml><A> 1 </A><A>2</A><B><Item> x </Item><Item/></B><C><![CDATA[ <b>&amp; ]]></C></xml>", "ok"),
])
def test_known_documents(doc: str | bytes, kind: str) -> None:
    assert check(doc)[0] == kind


def test_values_of_a_wecom_shaped_document() -> None:
    doc = ("<xml><ToUserName><![CDATA[ww1]]></ToUserName><A> 1 </A><A>2</A><List><Item><Id>1</Id></Item>"
           "<Item><Id>2</Id></Item></List><C><![CDATA[ <b>&amp; ]]>tail</C><x:N xmlns:x='urn:x'>n</x:N></xml>")
    assert parse_xml(doc) == {"ToUserName": "ww1", "A": "2", "List": [{"Id": "1"}, {"Id": "2"}],
                              "C": "<b>&amp; tail", "{urn:x}N": "n"}
