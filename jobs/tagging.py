"""rq jobs and outbox executors of the tagging area (registered with `jobs.wecom_calls.executor`).

- ``kf_sync`` (enqueued by the kf_msg_or_event handler): pull ``kf/sync_msg`` pages from the saved cursor
  until ``has_more`` is 0. Each page's messages and its next cursor commit in ONE transaction, and the
  cursor is saved with a compare-and-set, so a crash re-reads at most one page (msgid dedupe makes that
  harmless) and two workers never both advance the cursor. A Redis lock per open_kfid keeps one puller
  at a time (WeCom answers 45033 to parallel pulls); callbacks arriving meanwhile set a "dirty" flag the
  holder drains, so a message is never left waiting for the next callback.
- ``process_messages``: the matching half of archive records posted to the API (or ``sopbot ingest``): ONE job
  per stored batch; it matches every message and applies all their decisions in one transaction, then makes
  the batch's mark_tag calls itself (``run_inline``: one claim and one completion transaction for all of them)
  instead of one rq job and two transactions per customer. A kf page does the same after its transaction.
- ``tick``: behaviour rules of kind ``no_reply_days`` (once a minute), and kf syncs a crashed holder left.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from bot.actions import Action, EnqueueCall
from bot.apply import apply
from bot.db import utcnow
from bot.models import KV, Customer, Outbox, TimelineEntry
from bot.observability import JOBS
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
from bot.wecom.client import WeComError, WeComNotFound
from jobs.executors import _policy, _resolve_tag_ids
from jobs.wecom_calls import MAX_ATTEMPTS, RETRY_BASE_SECONDS, GiveUp, Outcome, executor, lease

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
                created = _kinds(session, ids)
        except CursorMoved:
            continue  # another puller saved this page first; read again from where it left the cursor
        _dispatch(services, created)  # the page's mark_tag calls now, the rest as jobs
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
    """One job per stored batch: match every message of the batch and apply all their tag decisions in ONE
    transaction, then make the batch's mark_tag calls right here (claimed together, called one by one,
    completed together) instead of one rq job and two transactions per customer.

    Idempotent by ids: only ``pending`` messages are processed (a re-run after the commit finds none and
    creates nothing). The mark_tag rows are committed with the decisions, so a crash before they are called
    leaves them ``pending`` (or ``running`` with a lease) for the sweeper and the ordinary ``run_outbox``."""
    ids = tuple(int(i) for i in payload.get("ids") or [])
    now = utcnow()
    with services.transaction() as session:
        created = _kinds(session, apply([ProcessMessages(ids)], session, now=now, context_key=f"outbox:{row.id}"))
    calls = _dispatch(services, created)
    return Outcome(result={"messages": len(ids), "outbox": len(created), **calls})


INLINE_KINDS = frozenset({"mark_tag"})
"""Outbox kinds a message batch's job runs itself (quick, idempotent WeCom calls); others get their own job."""


def _kinds(session: Session, ids: list[int]) -> list[tuple[int, str, str]]:
    """(id, queue, kind) of outbox rows just created, read in the transaction that created them."""
    if not ids:
        return []
    return [(i, q, k) for i, q, k in session.execute(
        select(Outbox.id, Outbox.queue, Outbox.kind).where(Outbox.id.in_(ids))).all()]


def _dispatch(services: Services, rows: list[tuple[int, str, str]]) -> dict[str, int]:
    """After the commit: enqueue the rows' jobs, except mark_tag rows, which are called here (``run_inline``)."""
    others = [(i, q) for i, q, kind in rows if kind not in INLINE_KINDS]
    if others:
        try:
            enqueue_outbox(services.redis, others)
        except RedisError:
            log.warning("outbox enqueue failed; the sweeper will pick the rows up", extra={"outbox_ids": others})
    return run_inline(services, [i for i, _, kind in rows if kind in INLINE_KINDS])


def run_inline(services: Services, ids: list[int]) -> dict[str, int]:
    """Run mark_tag outbox rows in the calling job: claim them in one transaction (compare-and-set with a
    lease, as ``run_outbox_row`` does: a row already claimed elsewhere is skipped), call WeCom for each, and
    record every outcome in one transaction. A failed call gets the same retry/backoff as in
    ``run_outbox_row``; the sweeper re-enqueues it when due."""
    if not ids:
        return {}
    now = utcnow()
    table: Any = Outbox.__table__
    with services.transaction() as session:
        # One compare-and-set for the whole batch (UPDATE … RETURNING: PostgreSQL, SQLite >= 3.35): a row
        # already claimed elsewhere does not match and is skipped, as with one UPDATE per row.
        rows = sorted(session.execute(
            update(table).where(table.c.id.in_(ids), table.c.status.in_(("pending", "retry")))
            .where((table.c.not_before.is_(None)) | (table.c.not_before <= now))
            .values(status="running", attempts=table.c.attempts + 1, next_attempt_at=now + lease(services))
            .returning(table.c.id, table.c.kind, table.c.payload, table.c.attempts)).all())
    if not rows:
        return {"inline_skipped": len(ids)}
    names = sorted({str(n) for _, _, p, _ in rows for n in [*p.get("add", []), *p.get("remove", [])]})
    done: list[tuple[int, dict[str, Any]]] = []
    failed: list[tuple[int, str, str, int]] = []  # id, status, error, attempts
    try:
        tag_ids = _resolve_tag_ids(services, names)  # once for the whole batch (the executor does it per row)
    except Exception as exc:  # noqa: BLE001 - every row gets the error and its retry
        failed = [(i, "failed" if isinstance(exc, GiveUp) or a >= MAX_ATTEMPTS else "retry",
                   f"{type(exc).__name__}: {exc}", a) for i, _, _, a in rows]
        rows = []
    for outbox_id, _kind, payload, attempts in rows:
        try:
            done.append((outbox_id, _mark_tag(services, payload, tag_ids)))
        except GiveUp as exc:
            failed.append((outbox_id, "failed", str(exc), attempts))
        except Exception as exc:  # noqa: BLE001 - transient or unexpected: retried with backoff, bounded
            failed.append((outbox_id, "failed" if attempts >= MAX_ATTEMPTS else "retry",
                           f"{type(exc).__name__}: {exc}", attempts))
    finished = utcnow()
    with services.transaction() as session:
        if done:  # one executemany for the batch's successes
            session.execute(update(table).where(table.c.id == bindparam("done_id")).values(
                status="done", done_at=finished, result=bindparam("done_result"), last_error=None,
                next_attempt_at=None), [{"done_id": i, "done_result": result} for i, result in done])
        for outbox_id, status, error, attempts in failed:
            delay = timedelta(seconds=RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1))
            session.execute(update(Outbox).where(Outbox.id == outbox_id).values(
                status=status, last_error=error[:2000],
                next_attempt_at=finished + delay if status == "retry" else None))
    for _, status, error, _ in failed:
        JOBS.labels(kind="mark_tag", outcome=status).inc()
        log.warning("mark_tag -> %s: %s", status, error)
    if done:
        JOBS.labels(kind="mark_tag", outcome="done").inc(len(done))
    return {"mark_tag_done": len(done), "mark_tag_failed": len(failed)}


def _mark_tag(services: Services, payload: Mapping[str, Any], tag_ids: Mapping[str, str]) -> dict[str, Any]:
    """jobs.executors.mark_tag with the tag ids resolved once per batch; same answers and error policy."""
    add = [tag_ids[n] for n in payload.get("add", []) if n in tag_ids]
    remove = [tag_ids[n] for n in payload.get("remove", []) if n in tag_ids]
    if not add and not remove:
        return {"skipped": "no tag ids"}
    try:
        services.wecom.mark_tag(payload["userid"], payload["external_userid"], add_tag=add, remove_tag=remove)
    except WeComNotFound as exc:
        return {"skipped": f"{exc.errcode}: relationship gone"}
    except WeComError as exc:
        raise _policy(exc) from exc
    return {"add": add, "remove": remove}


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
    try:  # the only row StoreMessages(process=False) creates is the batch's process_messages job, on `queue`
        enqueue_outbox(services.redis, [(i, queue) for i in ids])
    except RedisError:
        log.warning("outbox enqueue failed; the sweeper will pick the rows up", extra={"outbox_ids": ids})
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
