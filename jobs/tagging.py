"""rq jobs and outbox executors of the tagging area (registered with `jobs.wecom_calls.executor`).

- ``kf_sync`` (enqueued by the kf_msg_or_event handler): pull ``kf/sync_msg`` pages from the saved cursor
  until ``has_more`` is 0. Each page's messages and its next cursor commit in ONE transaction, and the
  cursor is saved with a compare-and-set, so a crash re-reads at most one page (msgid dedupe makes that
  harmless) and two workers never both advance the cursor. A Redis lock per open_kfid keeps one puller
  at a time (WeCom answers 45033 to parallel pulls); callbacks arriving meanwhile set a "dirty" flag the
  holder drains, so a message is never left waiting for the next callback.
- ``process_messages``: the matching half of archive records posted to the API (or ``sopbot ingest``).
- ``tick``: behaviour rules of kind ``no_reply_days`` (once a minute), and kf syncs a crashed holder left.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import func, select

from bot.actions import Action, EnqueueCall
from bot.apply import apply
from bot.db import utcnow
from bot.models import KV, Customer, Outbox, TimelineEntry
from bot.queues import enqueue_outbox
from bot.services import Services
from bot.tagging.apply_tagging import (
    CursorMoved,
    FireRule,
    ProcessMessages,
    SaveKfCursor,
    StoreMessages,
    kf_cursor_key,
)
from bot.tagging.behaviour import evaluate_inactivity
from bot.tagging.models import TaggingMessage
from bot.tagging.service import INACTIVITY_EVERY, MessageError, MessageRecord, archive_record, current_rules, kf_record
from bot.wecom.client import WeComError
from jobs.executors import _policy
from jobs.wecom_calls import Outcome, executor

log = logging.getLogger("sopbot.jobs.tagging")

__all__ = ["kf_sync", "process_messages", "pull_kf", "ingest_archive", "tick", "IngestResult"]

KF_LOCK_MS = 120_000  # longer than any pull of a busy account; a crashed holder frees it by expiry
KF_DIRTY = "tagging:kf_dirty"  # set of open_kfids with callbacks not yet pulled
KF_MAX_PAGES = 1000  # per pull: a stuck has_more must not spin forever
KF_INVALID_TOKEN = 95007
INACTIVITY_KEY = "tagging:inactivity_tick"


def _lock_key(open_kfid: str) -> str:
    return f"tagging:kf_lock:{open_kfid}"


def _enqueue(services: Services, ids: list[int]) -> None:
    if not ids:
        return
    with services.transaction() as session:
        queued = [(i, q) for i, q in session.execute(select(Outbox.id, Outbox.queue).where(Outbox.id.in_(ids))).all()]
    try:
        enqueue_outbox(services.redis, queued)
    except RedisError:
        log.warning("outbox enqueue failed; the sweeper will pick the rows up", extra={"outbox_ids": ids})


def _read_cursor(services: Services, open_kfid: str) -> str:
    with services.transaction() as session:
        row = session.get(KV, kf_cursor_key(open_kfid))
        return str((row.value or {}).get("cursor", "")) if row is not None else ""


def pull_kf(services: Services, open_kfid: str, token: str | None = None, now: datetime | None = None) -> int:
    """Pull every page after the saved cursor; returns the number of new messages stored."""
    stored = 0
    for _page in range(KF_MAX_PAGES):
        cursor = _read_cursor(services, open_kfid)
        try:
            page = services.wecom.kf_sync_msg(cursor, token=token, open_kfid=open_kfid)
        except WeComError as exc:
            if exc.errcode == KF_INVALID_TOKEN and token:
                token = None  # the callback's Token lives 10 minutes; without it the call still works
                continue
            raise _policy(exc) from exc
        records: list[MessageRecord] = []
        for item in page.get("msg_list") or []:
            try:
                records.append(kf_record(item))
            except (MessageError, ValueError, TypeError) as exc:
                log.warning("kf message skipped: %s", exc, extra={"open_kfid": open_kfid})
        next_cursor = str(page.get("next_cursor") or cursor)
        try:
            with services.transaction() as session:
                before = session.scalar(select(func.count()).select_from(TaggingMessage).where(
                    TaggingMessage.source == "kf", TaggingMessage.msgid.in_([r.msgid for r in records])))
                ids = apply([SaveKfCursor(open_kfid, cursor, next_cursor), StoreMessages(tuple(records))], session,
                            now=now or utcnow(), context_key=f"kf:{open_kfid}:{cursor}")
                stored += len(records) - int(before or 0)
        except CursorMoved:
            continue  # another puller saved this page first; read again from where it left the cursor
        _enqueue(services, ids)
        if not int(page.get("has_more") or 0):
            break
    else:
        log.error("kf pull stopped after %d pages with has_more still set", KF_MAX_PAGES,
                  extra={"open_kfid": open_kfid})
    return stored


@executor("kf_sync")
def kf_sync(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    open_kfid = str(payload["open_kfid"])
    token = payload.get("token") or None
    r = services.redis
    r.sadd(KF_DIRTY, open_kfid)
    stored, pulls = 0, 0
    while True:
        me = uuid.uuid4().hex
        if not r.set(_lock_key(open_kfid), me, nx=True, px=KF_LOCK_MS):
            # The holder drains the dirty flag we just set before it lets go (checked again after release).
            return Outcome(result={"skipped": "another worker is pulling this kf account", "stored": stored})
        try:
            while r.srem(KF_DIRTY, open_kfid):
                stored += pull_kf(services, open_kfid, token)
                pulls += 1
        finally:
            if r.get(_lock_key(open_kfid)) == me.encode():
                r.delete(_lock_key(open_kfid))
        if not r.sismember(KF_DIRTY, open_kfid):  # a callback between our last drain and the release
            break
    return Outcome(result={"stored": stored, "pulls": pulls})


@executor("process_messages")
def process_messages(services: Services, payload: dict[str, Any], row: Outbox) -> Outcome:
    ids = tuple(int(i) for i in payload.get("ids") or [])
    return Outcome([ProcessMessages(ids)], {"messages": len(ids)})


class IngestResult:
    def __init__(self, accepted: int, duplicates: int, errors: list[str]) -> None:
        self.accepted, self.duplicates, self.errors = accepted, duplicates, errors

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "errors": self.errors}


def parse_archive(records: Iterable[Any]) -> tuple[list[MessageRecord], list[str]]:
    parsed: list[MessageRecord] = []
    errors: list[str] = []
    for index, raw in enumerate(records):
        try:
            parsed.append(archive_record(raw))
        except MessageError as exc:
            errors.append(f"[{index}] {exc}")
    return parsed, errors


def ingest_archive(services: Services, records: list[MessageRecord], now: datetime | None = None,
                   queue: str = "default") -> IngestResult:
    """Store archive records as pending and enqueue their process_messages job (after commit)."""
    now = now or utcnow()
    unique = list({r.msgid: r for r in records}.values())
    with services.transaction() as session:
        existing = set(session.scalars(select(TaggingMessage.msgid).where(
            TaggingMessage.source == "archive", TaggingMessage.msgid.in_([r.msgid for r in unique]))).all())
        ids = apply([StoreMessages(tuple(unique), process=False, queue=queue)], session, now=now,
                    context_key=f"archive:{now.timestamp():.6f}:{uuid.uuid4().hex[:8]}")
    _enqueue(services, ids)
    return IngestResult(len(unique) - len(existing), len(records) - len(unique) + len(existing), [])


# ---------------------------------------------------------------------------------------------------- tick


def _silent_customers(services: Services, days: Iterable[int], since: datetime,
                      now: datetime) -> list[tuple[str, datetime | None, datetime]]:
    """Customers whose silence of any of ``days`` reached its length in (since, now]: (ext, last msg, added)."""
    out: dict[str, tuple[str, datetime | None, datetime]] = {}
    with services.transaction() as session:
        for n in set(days):
            lo, hi = since - timedelta(days=n), now - timedelta(days=n)
            candidates = session.scalars(select(TimelineEntry.customer_id).where(
                TimelineEntry.kind == "message_received", TimelineEntry.at > lo, TimelineEntry.at <= hi)
                .distinct()).all()
            for cid in candidates:
                last = session.scalar(select(func.max(TimelineEntry.at)).where(
                    TimelineEntry.customer_id == cid, TimelineEntry.kind == "message_received"))
                customer = session.get(Customer, cid)
                if customer is not None and last is not None and lo < last <= hi and customer.lost_at is None:
                    out[customer.external_userid] = (customer.external_userid, last, customer.created_at)
            never = session.scalars(select(Customer).where(
                Customer.created_at > lo, Customer.created_at <= hi, Customer.lost_at.is_(None),
                ~select(TimelineEntry.id).where(TimelineEntry.customer_id == Customer.id,
                                                TimelineEntry.kind == "message_received").exists())).all()
            for customer in never:
                out.setdefault(customer.external_userid, (customer.external_userid, None, customer.created_at))
    return list(out.values())


def inactivity(services: Services, now: datetime, since: datetime) -> int:
    """Fire no_reply_days rules for silences that reached N days in (since, now]; returns hits."""
    with services.transaction() as session:
        rules = [r for r in current_rules(session).behaviour if r.kind.value == "no_reply_days"]
    if not rules:
        return 0
    days = [d for r in rules if isinstance(d := r.params["days"], int)]
    hits = evaluate_inactivity(rules, _silent_customers(services, days, since, now), now, since)
    if not hits:
        return 0
    actions: list[Action] = [FireRule(h.rule_id, h.customer_id, h.at, f"no_reply:{h.at.isoformat()}",
                                      {"event": "no_reply_days", "evidence": h.evidence}) for h in hits]
    with services.transaction() as session:
        ids = apply(actions, session, now=now, context_key=f"tagging_tick:{now.isoformat()}")
    _enqueue(services, ids)
    return len(hits)


def _resume_kf(services: Services, now: datetime) -> None:
    try:
        dirty = [m.decode() if isinstance(m, bytes) else str(m) for m in services.redis.smembers(KF_DIRTY)]
        stale = [k for k in dirty if not services.redis.exists(_lock_key(k))]
    except RedisError:
        return
    if not stale:
        return
    minute = now.strftime("%Y%m%d%H%M")
    calls: list[Action] = [EnqueueCall("kf_sync", {"open_kfid": k}, dedupe_key=f"kf_sync:tick:{k}:{minute}")
                           for k in stale]
    with services.transaction() as session:
        ids = apply(calls, session, now=now, context_key=f"tagging_tick:{minute}")
    _enqueue(services, ids)


def tick(services: Services, now: datetime) -> dict[str, Any]:
    """Scheduler step: kf pulls a crashed holder left behind; no_reply_days once per INACTIVITY_EVERY."""
    _resume_kf(services, now)
    with services.transaction() as session:
        row = session.get(KV, INACTIVITY_KEY)
        last = datetime.fromisoformat(row.value["at"]) if row is not None and row.value.get("at") else None
        if last is not None and now - last < INACTIVITY_EVERY:
            return {"inactivity": "not due"}
        value: Mapping[str, Any] = {"at": now.isoformat()}
        if row is None:
            session.add(KV(key=INACTIVITY_KEY, value=dict(value), updated_at=now))
        else:
            row.value, row.updated_at = dict(value), now
    # First run: only silences that reached N days in the last day (no backfill storm on deploy).
    since = last or now - timedelta(days=1)
    return {"inactivity": inactivity(services, now, since)}
