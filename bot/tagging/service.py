"""The tagging service: the glue between the pure engines (matcher, decide, behaviour) and the database.

- Message sources become ``MessageRecord``s (``kf_record``, ``archive_record``; the app text handler
  builds its own) and are stored through the ``StoreMessages`` action (unique per source and msgid).
- Rules: file rules (scripts_library/content/rules/*.yaml, read-only, loaded once per process) plus
  API rules (``tagging_rules`` table). ``current_rules(session)`` returns the compiled set, rebuilt
  when the rules version in the KV table changes (every API write bumps it), so a change takes effect
  in every worker at its next message without a restart.
- Decisions: ``rule_history`` loads what ``decide`` needs (earlier hits, last application, last manual
  removal of one of the rule's tags); the ``FireRule`` action (apply_tagging.py) records the hit and
  applies the tags.
- Explain: ``explain_tag`` (CLI) and ``try_text`` (``POST /api/v1/rules/test``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from bot.models import KV, Customer, CustomerTag, Employee, TimelineEntry
from bot.tagging.decide import RuleHistory, decide
from bot.tagging.matcher import KeywordMatcher
from bot.tagging.model import BehaviourRule, InboundMessage, KeywordRule
from bot.tagging.models import RuleHit, TaggingRule
from bot.tagging.normalize import normalize
from bot.tagging.rules import RuleError, RuleSet, load_rule_file, parse_rule_document

log = logging.getLogger("sopbot.tagging")

DEFAULT_RULES_DIR = Path(__file__).resolve().parents[2] / "scripts_library" / "content" / "rules"
RULES_VERSION_KEY = "tagging:rules_version"
EXCERPT_CHARS = 60
HISTORY_LIMIT = 500  # earlier hits read per decision: thresholds never need more

# External contact ids: customers are wm…/wo…; robots wb… are neither customers nor employees.
CUSTOMER_PREFIXES = ("wm", "wo")


def rules_dir() -> Path:
    """``SOPBOT_TAGGING_RULES_DIR`` (the environment, as Settings reads it), else the content library."""
    raw = os.environ.get("SOPBOT_TAGGING_RULES_DIR")
    return Path(raw) if raw else DEFAULT_RULES_DIR


# ------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class MessageRecord:
    """One normalised message of any source, as stored in ``tagging_messages``."""

    source: str  # kf | archive | app
    msgid: str
    direction: str  # customer | employee | event
    sent_at: datetime
    msgtype: str = "text"
    external_userid: str | None = None
    userid: str | None = None
    chat_id: str | None = None
    open_kfid: str | None = None
    text: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_customer_text(self) -> bool:
        return self.direction == "customer" and self.msgtype == "text" and bool(self.text)

    def inbound(self) -> InboundMessage:
        return InboundMessage(msg_id=self.msgid, source=self.source,  # type: ignore[arg-type]
                              customer_id=self.external_userid, employee_id=self.userid, group_id=self.chat_id,
                              direction="customer" if self.direction == "customer" else "employee",
                              text=self.text or "", at=self.sent_at)


class MessageError(ValueError):
    """A message record that cannot be stored (missing msgid, bad time …)."""


def kf_record(m: Mapping[str, Any]) -> MessageRecord:
    """One entry of kf/sync_msg ``msg_list`` (PROTOCOL.md §3.9): origin 3 customer, 5 servicer, 4 event."""
    msgid = str(m.get("msgid") or "")
    if not msgid:
        raise MessageError("kf message without msgid")
    origin = int(m.get("origin") or 0)
    msgtype = str(m.get("msgtype") or "")
    sent_at = datetime.fromtimestamp(int(m.get("send_time") or 0), UTC)
    text = (m.get("text") or {}).get("content") if msgtype == "text" else None
    ext = str(m.get("external_userid") or "") or None
    servicer = str(m.get("servicer_userid") or "") or None
    if origin == 3:
        direction = "customer"
    elif origin == 5:
        direction = "employee"
    else:  # 4 = system event (enter_session …); anything unknown is kept, never matched
        direction = "event"
        ext = ext or str((m.get("event") or {}).get("external_userid") or "") or None
    return MessageRecord("kf", msgid, direction, sent_at, msgtype or "event", ext, servicer, None,
                         str(m.get("open_kfid") or "") or None, text, dict(m))


def _is_customer_id(value: str) -> bool:
    return value.startswith(CUSTOMER_PREFIXES)


def archive_record(rec: Mapping[str, Any]) -> MessageRecord:
    """One decrypted chat-archive record (PROTOCOL.md §5): msgid, action, from, tolist, roomid, msgtime (ms)."""
    if not isinstance(rec, Mapping):
        raise MessageError("record must be a JSON object")
    msgid = str(rec.get("msgid") or "")
    if not msgid:
        raise MessageError("record without msgid")
    action = str(rec.get("action") or "send")
    raw_time = rec.get("msgtime", rec.get("time"))
    try:
        sent_at = datetime.fromtimestamp(int(raw_time) / 1000, UTC)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MessageError(f"record {msgid}: msgtime must be epoch milliseconds") from exc
    if action == "switch":  # a corp-switch log line: kept for the record, no chat, no customer
        return MessageRecord("archive", msgid, "event", sent_at, "switch", userid=str(rec.get("user") or "") or None,
                             raw=dict(rec))
    sender = str(rec.get("from") or "")
    tolist = [str(t) for t in rec.get("tolist") or [] if t]
    room = str(rec.get("roomid") or "") or None
    msgtype = str(rec.get("msgtype") or "")
    if action == "recall":
        msgtype = "revoke"
    text = None
    if msgtype == "text":
        content = (rec.get("text") or {}).get("content") if isinstance(rec.get("text"), Mapping) else None
        text = str(content) if content is not None else None
    if _is_customer_id(sender):
        employees = [t for t in tolist if not _is_customer_id(t) and not t.startswith("wb")]
        return MessageRecord("archive", msgid, "customer", sent_at, msgtype, sender,
                             None if room else (employees[0] if employees else None), room, None, text, dict(rec))
    customers = [t for t in tolist if _is_customer_id(t)]
    # An employee's 1:1 message belongs on that customer's timeline; a group message has no single customer.
    ext = customers[0] if customers and not room else None
    return MessageRecord("archive", msgid, "employee", sent_at, msgtype, ext, sender or None, room, None, text,
                         dict(rec))


def excerpt_of(record: MessageRecord) -> str:
    if record.text:
        text = " ".join(record.text.split())
        return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
    return f"[{record.msgtype}]"


# ---------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class CompiledRules:
    token: str
    keyword: Mapping[str, KeywordRule]
    behaviour: tuple[BehaviourRule, ...]
    behaviour_by_id: Mapping[str, BehaviourRule]
    matcher: KeywordMatcher
    origins: Mapping[str, str]  # rule id -> "api" or the file path it came from
    uses_departments: bool

    def rule(self, rule_id: str) -> KeywordRule | BehaviourRule | None:
        return self.keyword.get(rule_id) or self.behaviour_by_id.get(rule_id)


_lock = threading.Lock()
_file_cache: dict[Path, tuple[RuleSet, dict[str, str]]] = {}
_compiled: dict[tuple[str, Path], CompiledRules] = {}


def file_rules(directory: Path | None = None) -> tuple[RuleSet, dict[str, str]]:
    """Rules of the YAML files (read once per process: they change with a deploy). Invalid files are logged and
    skipped so that a bad deploy cannot stop message storage; ``sopbot check`` refuses them before that."""
    directory = directory or rules_dir()
    with _lock:
        if directory in _file_cache:
            return _file_cache[directory]
    keyword: list[KeywordRule] = []
    behaviour: list[BehaviourRule] = []
    origins: dict[str, str] = {}
    files = sorted(p for p in directory.glob("*.y*ml") if p.is_file()) if directory.is_dir() else []
    for path in files:
        try:
            ruleset = load_rule_file(path)
        except RuleError as exc:
            log.error("tagging rule file %s is invalid and is ignored: %s", path, exc)
            continue
        found: list[KeywordRule | BehaviourRule] = [*ruleset.keyword_rules, *ruleset.behaviour_rules]
        for rule in found:
            if rule.id in origins:
                log.error("rule id %r in %s already defined in %s; ignored", rule.id, path, origins[rule.id])
                continue
            origins[rule.id] = str(path)
            if isinstance(rule, KeywordRule):
                keyword.append(rule)
            else:
                behaviour.append(rule)
    result = (RuleSet(tuple(keyword), tuple(behaviour)), origins)
    with _lock:
        _file_cache[directory] = result
    return result


def rules_version(session: Session) -> dict[str, Any]:
    row = session.get(KV, RULES_VERSION_KEY)
    return dict(row.value) if row is not None else {"n": 0, "token": "0"}


def bump_rules_version(session: Session, now: datetime) -> dict[str, Any]:
    """Called in the transaction of every rule write. The token is random, not n+1: two concurrent writers that
    both read n must still leave a value no process has cached."""
    row = session.get(KV, RULES_VERSION_KEY)
    n = int(row.value.get("n", 0)) + 1 if row is not None else 1
    value = {"n": n, "token": uuid.uuid4().hex, "at": now.isoformat()}
    if row is None:
        session.add(KV(key=RULES_VERSION_KEY, value=value, updated_at=now))
    else:
        row.value, row.updated_at = value, now
    return value


def parse_api_rule(definition: Mapping[str, Any], kind: str | None = None) -> KeywordRule | BehaviourRule:
    """Validate one API rule (the file format's rule object); kind inferred from ``keywords``/``kind``."""
    body = dict(definition)
    body.pop("rule_type", None)
    kind = kind or ("keyword" if "keywords" in body else "behaviour")
    key = "keyword_rules" if kind == "keyword" else "behaviour_rules"
    ruleset = parse_rule_document({key: [body]}, "<api>")
    rules: list[KeywordRule | BehaviourRule] = [*ruleset.keyword_rules, *ruleset.behaviour_rules]
    return rules[0]


def _api_rules(session: Session, taken: Mapping[str, str]) -> tuple[list[KeywordRule], list[BehaviourRule]]:
    keyword: list[KeywordRule] = []
    behaviour: list[BehaviourRule] = []
    for row in session.scalars(select(TaggingRule).order_by(TaggingRule.id)).all():
        if row.id in taken:
            log.warning("API rule %r shadowed by the file rule of the same id in %s", row.id, taken[row.id])
            continue
        try:
            rule = parse_api_rule(row.definition, row.kind)
        except RuleError as exc:  # validated on write; only a format change could get here
            log.error("stored rule %r no longer parses and is skipped: %s", row.id, exc)
            continue
        (keyword if isinstance(rule, KeywordRule) else behaviour).append(rule)  # type: ignore[arg-type]
    return keyword, behaviour


def current_rules(session: Session) -> CompiledRules:
    """The compiled rule set of this process, rebuilt when the rules version in the database changed.

    The version is read once per session (= one transaction here): a batch of messages is matched against one
    rule set, and the KV row is not re-read for every message and every hit."""
    directory = rules_dir()
    in_session = session.info.get(_SESSION_RULES)
    if in_session is not None and in_session[0] == directory and _compiled.get((in_session[1].token, directory)):
        return in_session[1]
    token = str(rules_version(session).get("token", "0"))
    cached = _compiled.get((token, directory))
    if cached is not None:
        session.info[_SESSION_RULES] = (directory, cached)
        return cached
    files, origins = file_rules(directory)
    api_keyword, api_behaviour = _api_rules(session, origins)
    api_ids = [r.id for r in api_keyword] + [r.id for r in api_behaviour]
    all_origins = dict(origins) | dict.fromkeys(api_ids, "api")
    keyword = [*files.keyword_rules, *api_keyword]
    behaviour = tuple(r for r in (*files.behaviour_rules, *api_behaviour) if r.enabled)
    matcher = KeywordMatcher.compile(keyword)
    compiled = CompiledRules(
        token=token, keyword={r.id: r for r in keyword}, behaviour=behaviour,
        behaviour_by_id={r.id: r for r in behaviour}, matcher=matcher, origins=all_origins,
        uses_departments=any(r.scope.departments for r in keyword))
    with _lock:
        _compiled.clear()  # one live version per process; older ones are garbage
        _compiled[(token, directory)] = compiled
    log.info("tagging rules compiled", extra={"rules_token": token, "keyword_rules": len(keyword),
                                              "behaviour_rules": len(behaviour)})
    session.info[_SESSION_RULES] = (directory, compiled)
    return compiled


_SESSION_RULES = "sopbot.tagging.rules"


def reset_caches() -> None:
    """Forget compiled and file rules (tests that point SOPBOT_TAGGING_RULES_DIR elsewhere)."""
    with _lock:
        _compiled.clear()
        _file_cache.clear()


def employee_departments(session: Session, userid: str | None) -> frozenset[str]:
    if not userid:
        return frozenset()
    ids = session.scalar(select(Employee.department_ids).where(Employee.userid == userid))
    return frozenset(str(d) for d in ids or [])


# ---------------------------------------------------------------------------------------------- history


def _is_manual_removal(entry: TimelineEntry | Row[Any]) -> bool:
    reason = (entry.detail or {}).get("reason") or {}
    return entry.source == "manual" or bool(isinstance(reason, Mapping) and reason.get("manual"))


def rule_history(session: Session, rule: KeywordRule | BehaviourRule, customer_id: int) -> RuleHistory:
    hits = session.execute(
        select(RuleHit.at, RuleHit.applied).where(RuleHit.rule_id == rule.id, RuleHit.customer_id == customer_id)
        .order_by(RuleHit.at.desc()).limit(HISTORY_LIMIT)).all()
    # Columns, not entities: a decision needs three fields, and loading ORM objects cost more than the query.
    removals = session.execute(select(TimelineEntry.at, TimelineEntry.source, TimelineEntry.detail).where(
        TimelineEntry.customer_id == customer_id, TimelineEntry.kind == "tag_removed")).all()
    return history_of(rule, [(at, applied) for at, applied in hits], removals)


def history_of(rule: KeywordRule | BehaviourRule, hits: Sequence[tuple[datetime, bool]],
               removals: Sequence[Row[Any]]) -> RuleHistory:
    """The RuleHistory of ``rule`` from its hits on the customer (any order; the latest HISTORY_LIMIT count) and
    the customer's tag_removed entries (at, source, detail): what ``rule_history`` reads, and what a batch reads
    once for all its customers (``history_reads``)."""
    latest = sorted(hits, key=lambda h: h[0], reverse=True)[:HISTORY_LIMIT]
    applied = [at for at, was_applied in latest if was_applied]
    tags = set(rule.add_tags)
    removed = [e.at for e in removals if (e.detail or {}).get("tag") in tags and _is_manual_removal(e)]
    return RuleHistory(hits=tuple(at for at, _ in latest), last_applied_at=max(applied) if applied else None,
                       manually_removed_at=max(removed) if removed else None)


class BatchHistory:
    """Rule hits and tag removals of a batch's customers, read in two queries when the first rule fires (a batch in
    which none fires reads nothing; until then the batch writes neither hits nor tag removals, so that read finds
    what one at the start would); ``FireRule`` keeps it current with the hits it records, and drops a customer from
    it whenever it removes tags (then reads again)."""

    def __init__(self, session: Session, customer_ids: Iterable[int]) -> None:
        self.session = session
        self.customers = set(customer_ids)
        self.hits: dict[tuple[str, int], list[tuple[datetime, bool]]] | None = None
        self.removals: dict[int, list[Row[Any]]] = {}

    def _read(self) -> dict[tuple[str, int], list[tuple[datetime, bool]]]:
        if self.hits is None:
            self.hits = {}
            ids = sorted(self.customers)
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                for rule_id, cid, at, applied in self.session.execute(select(
                        RuleHit.rule_id, RuleHit.customer_id, RuleHit.at, RuleHit.applied).where(
                        RuleHit.customer_id.in_(chunk))):
                    self.hits.setdefault((rule_id, cid), []).append((at, applied))
                for row in self.session.execute(select(
                        TimelineEntry.customer_id, TimelineEntry.at, TimelineEntry.source, TimelineEntry.detail)
                        .where(TimelineEntry.customer_id.in_(chunk), TimelineEntry.kind == "tag_removed")):
                    self.removals.setdefault(row.customer_id, []).append(row)
        return self.hits

    def history(self, rule: KeywordRule | BehaviourRule, customer_id: int) -> RuleHistory | None:
        """None when the customer is not (or no longer) covered: read with ``rule_history``."""
        if customer_id not in self.customers:
            return None
        return history_of(rule, self._read().get((rule.id, customer_id), []), self.removals.get(customer_id, []))

    def recorded(self, rule_id: str, customer_id: int, at: datetime, applied: bool) -> None:
        if customer_id in self.customers:
            self._read().setdefault((rule_id, customer_id), []).append((at, applied))

    def forget(self, customer_id: int) -> None:
        self.customers.discard(customer_id)


def hit_key(rule_id: str, what: str) -> str:
    """Unique per (rule, message or event); long event descriptions are hashed to fit the column."""
    key = f"{rule_id}:{what}"
    return key if len(key) <= 200 else f"{rule_id}:{hashlib.sha256(what.encode()).hexdigest()}"


# ---------------------------------------------------------------------------------------------- explain


def _local(at: datetime | str | None, tz: Any) -> str:
    if at is None:
        return "-"
    value = datetime.fromisoformat(at) if isinstance(at, str) else at
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def _describe_reason(source: str, reason: Mapping[str, Any]) -> str:
    parts = [f"来源 {source}"]
    if reason.get("rule_id"):
        parts.append(f"规则 {reason['rule_id']}" + (f"（{reason['rule_name']}）" if reason.get("rule_name") else ""))
    if reason.get("keyword"):
        parts.append(f"关键词「{reason['keyword']}」({reason.get('mode', 'contains')})")
    if reason.get("excerpt"):
        parts.append(f"消息「{reason['excerpt']}」")
    if reason.get("message_source"):
        parts.append(f"渠道 {reason['message_source']} msgid={reason.get('msgid')}")
    if reason.get("evidence"):
        parts.append(f"事件 {reason['evidence']}")
    if reason.get("decision") and reason.get("decision") != "apply":
        parts.append(f"判定 {reason['decision']}")
    others = {k: v for k, v in reason.items() if k not in {"rule_id", "rule_name", "keyword", "mode", "excerpt",
                                                            "message_source", "msgid", "evidence", "decision",
                                                            "rule_kind", "at"}}
    if others:
        parts.append(", ".join(f"{k}={v}" for k, v in sorted(others.items())))
    return "；".join(parts)


def explain_tag(session: Session, external_userid: str, tag: str, tz: Any = UTC) -> list[str]:
    """Why ``tag`` ("group:name") is on the customer, or when and why it was removed; then its history and the
    recent hits of the rules that set it. Lines in Chinese for ops leads."""
    customer = session.scalar(select(Customer).where(Customer.external_userid == external_userid))
    if customer is None:
        return [f"没有客户 {external_userid}"]
    group, _, name = tag.partition(":")
    row = session.scalar(select(CustomerTag).where(CustomerTag.customer_id == customer.id,
                                                   CustomerTag.group_name == group, CustomerTag.name == name))
    lines: list[str] = []
    if row is None:
        lines.append(f"客户 {external_userid} 从未有过标签 {tag}")
    elif row.removed_at is None:
        lines.append(f"标签 {tag} 当前在客户 {external_userid} 上，于 {_local(row.applied_at, tz)} 添加")
        lines.append("  原因: " + _describe_reason(row.source, row.reason or {}))
    else:
        removed = dict(row.removed_reason or {})
        lines.append(f"标签 {tag} 已于 {_local(row.removed_at, tz)} 移除")
        lines.append("  移除原因: " + _describe_reason(str(removed.pop("source", "?")), removed))
        before = _describe_reason(row.source, row.reason or {})
        lines.append(f"  此前于 {_local(row.applied_at, tz)} 添加，原因: " + before)
    entries = session.scalars(select(TimelineEntry).where(
        TimelineEntry.customer_id == customer.id, TimelineEntry.kind.in_(("tag_added", "tag_removed")))
        .order_by(TimelineEntry.at, TimelineEntry.id)).all()
    history = [e for e in entries if (e.detail or {}).get("tag") == tag]
    if history:
        lines.append("历史:")
        for e in history:
            verb = "添加" if e.kind == "tag_added" else "移除"
            lines.append(f"  {_local(e.at, tz)} {verb} — " + _describe_reason(e.source, (e.detail or {}).get("reason")
                                                                                  or {}))
    hits = session.scalars(select(RuleHit).where(RuleHit.customer_id == customer.id)
                           .order_by(RuleHit.at.desc(), RuleHit.id.desc()).limit(200)).all()
    rules = current_rules(session)
    relevant = [h for h in hits if (r := rules.rule(h.rule_id)) is not None and (tag in r.add_tags
                                                                                  or tag in r.remove_tags)]
    if relevant:
        lines.append("相关规则命中 (最近在前):")
        for h in relevant[:20]:
            state = "已打标签" if h.applied else "未打标签"
            ev = h.evidence or {}
            what = f"「{ev['excerpt']}」" if ev.get("excerpt") else str(ev.get("evidence", ""))
            lines.append(f"  {_local(h.at, tz)} 规则 {h.rule_id} {state} ({h.decision}) {what}")
    return lines


def try_text(session: Session, text: str, *, source: str = "kf", employee: str | None = None,
              chat_type: str = "single", external_userid: str | None = None,
              now: datetime | None = None) -> dict[str, Any]:
    """What ``text`` would do, rule by rule: fired or why not (negative, scope, mode), then for fired rules
    whether the tags would apply (threshold, cooldown, manual removal) — against the customer's real history
    when ``external_userid`` is given, else against an empty history."""
    now = now or datetime.now(UTC)
    rules = current_rules(session)
    msg = InboundMessage(msg_id="test", source=source, customer_id=external_userid,  # type: ignore[arg-type]
                         employee_id=employee, group_id="test-group" if chat_type == "group" else None,
                         direction="customer", text=text, at=now)
    departments = employee_departments(session, employee) if rules.uses_departments else frozenset()
    customer = (session.scalar(select(Customer).where(Customer.external_userid == external_userid))
                if external_userid else None)
    results = []
    for verdict in rules.matcher.explain(msg, departments):
        rule = rules.keyword[verdict.rule_id]
        item: dict[str, Any] = {"rule_id": rule.id, "name": rule.name, "fired": verdict.fired,
                                "reason": verdict.reason, "keyword": verdict.keyword,
                                "add_tags": list(rule.add_tags), "remove_tags": list(rule.remove_tags),
                                "origin": rules.origins.get(rule.id)}
        if verdict.fired:
            history = rule_history(session, rule, customer.id) if customer is not None else RuleHistory()
            decision = decide(rule, now, history)
            item["would_apply"], item["decision"] = decision.apply, decision.reason
        else:
            item["would_apply"], item["decision"] = False, None
        results.append(item)
    return {"normalized": normalize(text), "results": results}


def rule_listing(session: Session) -> list[dict[str, Any]]:
    """Every rule with where it comes from: file rules are read-only."""
    files, origins = file_rules()
    items: list[dict[str, Any]] = []
    listed: list[KeywordRule | BehaviourRule] = [*files.keyword_rules, *files.behaviour_rules]
    for rule in listed:
        items.append({"id": rule.id, "name": rule.name,
                      "kind": "keyword" if isinstance(rule, KeywordRule) else "behaviour",
                      "origin": "file", "file": origins[rule.id], "read_only": True, "enabled": rule.enabled,
                      "add_tags": list(rule.add_tags), "remove_tags": list(rule.remove_tags)})
    for row in session.scalars(select(TaggingRule).order_by(TaggingRule.id)).all():
        items.append({"id": row.id, "name": row.definition.get("name"), "kind": row.kind, "origin": "api",
                      "read_only": False, "enabled": row.definition.get("enabled", True),
                      "add_tags": row.definition.get("add_tags", []),
                      "remove_tags": row.definition.get("remove_tags", []),
                      "definition": row.definition, "updated_at": row.updated_at.isoformat()})
    return items


def batch_key(records: Sequence[MessageRecord]) -> str:
    return hashlib.sha256("\n".join(f"{r.source}:{r.msgid}" for r in records).encode()).hexdigest()[:24]


def customer_ids(session: Session, externals: Iterable[str]) -> dict[str, int]:
    wanted = sorted(set(externals))
    if not wanted:
        return {}
    return dict(session.execute(select(Customer.external_userid, Customer.id)
                                .where(Customer.external_userid.in_(wanted))).all())


INACTIVITY_EVERY = timedelta(minutes=1)
