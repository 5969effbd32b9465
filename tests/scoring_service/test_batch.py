"""Scoring a batch of customers (``service.apply_domain_events``): one ledger INSERT per round of events, and a row a
concurrent transaction wrote since the batch's ledger read is neither counted twice nor counted at all."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, insert, select

from bot.apply import DomainEvent
from bot.models import Customer
from bot.scoring import service
from bot.scoring.model import LedgerEntry
from bot.scoring.models import ScoreLedgerEntry
from bot.services import Services
from tests.scoring_service.helpers import add_customer

T0 = datetime(2025, 3, 3, 2, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)


def _replies(customer: Customer) -> list[DomainEvent]:
    """Four customer messages: the ``replied`` rule scores 2 points each, at most 3 within a day."""
    return [DomainEvent("message_received", customer.external_userid, customer.id, T0 + timedelta(minutes=m),
                        {"source": "kf", "msgid": f"{customer.external_userid}-{m}"}, source="kf")
            for m in range(1, 5)]


def test_a_row_written_concurrently_is_not_ours_and_later_events_score_without_it(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    for ext in ("c1", "c2"):
        add_customer(services, ext, "A", T0)
    with services.transaction() as s:
        c1, c2 = (s.scalar(select(Customer).where(Customer.external_userid == ext)) for ext in ("c1", "c2"))
        assert c1 is not None and c2 is not None
        first = service.to_score_events(s, _replies(c1)[0])[0]
        # Another transaction scored c1's first message after this batch read the ledger (READ COMMITTED).
        s.execute(insert(ScoreLedgerEntry), {"customer_id": c1.id, "rule_id": "replied", "event_id": first.id,
                                             "event_kind": first.kind, "points": 2, "dimension": "engagement",
                                             "at": first.at, "created_at": NOW})
        real = service.ledgers_of

        def read_before_it(session: object, ids: Iterable[int]) -> dict[int, list[LedgerEntry]]:
            return {cid: [e for e in rows if e.event_id != first.id] for cid, rows in real(s, ids).items()}

        monkeypatch.setattr(service, "ledgers_of", read_before_it)
        statements: list[str] = []

        def count(_conn: object, _cursor: object, sql: str, *_: object) -> None:
            statements.append(sql)

        event.listen(services.engine, "before_cursor_execute", count)
        try:
            service.apply_domain_events(s, [(c1, _replies(c1)), (c2, _replies(c2))], NOW)
        finally:
            event.remove(services.engine, "before_cursor_execute", count)
        ledger = {cid: [(e.event_id, e.points) for e in s.scalars(select(ScoreLedgerEntry).where(
            ScoreLedgerEntry.customer_id == cid).order_by(ScoreLedgerEntry.at))] for cid in (c1.id, c2.id)}
        scores = (c1.score, c2.score)
    # c1: its first message's row is the other transaction's (not counted here), so messages 2-4 all score under the
    # repeat limit; c2: messages 1-3 score, the 4th is over the limit. Each round served both customers at once.
    assert [points for _, points in ledger[c1.id]] == [2, 2, 2, 2] and ledger[c1.id][0][0] == first.id
    assert [points for _, points in ledger[c2.id]] == [2, 2, 2]
    assert scores == (6.0, 6.0)  # c1 is scored from the rows it inserted, as one row at a time did
    assert sum(sql.startswith("INSERT INTO score_ledger") for sql in statements) == 4  # one per round, not per row
