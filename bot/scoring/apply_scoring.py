"""Lead scoring in the apply pipeline: every new timeline entry may score, move the stage and route.

The subscriber only groups the events by customer into one `ScoreDomainEvents` action; its executor runs
in the same transaction as the timeline entry (so Customer.score, Customer.stage, the ledger rows, the
stage log, the assignment and its notification commit with the event that caused them).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.actions import Action
from bot.apply import ApplyContext, DomainEvent, _apply, executes, subscribe
from bot.models import Customer
from bot.scoring import outcomes as _outcomes  # noqa: F401 - registers the SOP step report's rollup subscriber
from bot.scoring import service
from bot.scoring.model import LedgerEntry

__all__ = ["ScoreBatch", "ScoreDomainEvents"]

# Our own timeline kinds never score (and must not loop through the cascade).
_IGNORED_PREFIXES = ("stage_changed", "lead_")


@dataclass(frozen=True)
class ScoreDomainEvents(Action):
    customer_id: int
    events: tuple[DomainEvent, ...]


@dataclass(frozen=True)
class ScoreBatch(Action):
    """One round of events, per customer: the ledgers and lead states are read once for all of them."""

    items: tuple[ScoreDomainEvents, ...]


@subscribe
def _on_events(ctx: ApplyContext, events: list[DomainEvent]) -> list[Action]:
    relevant = [e for e in events if not e.kind.startswith(_IGNORED_PREFIXES)]
    items = tuple(ScoreDomainEvents(cid, tuple(evs)) for cid, evs in service.group_by_customer(relevant).items())
    return [ScoreBatch(items)] if items else []


@executes
def _(action: ScoreBatch, ctx: ApplyContext) -> None:
    # A customer's scoring writes only that customer's ledger and lead state, so reading them all before the
    # first customer is scored gives each the same rows its own query would.
    ids = [item.customer_id for item in action.items]
    ledgers = service.ledgers_of(ctx.session, ids)
    absent = service.load_lead_states(ctx.session, ids)
    for item in action.items:
        _score(item, ctx, ledgers[item.customer_id], item.customer_id in absent)


def _score(action: ScoreDomainEvents, ctx: ApplyContext, ledger: list[LedgerEntry], state_absent: bool) -> None:
    customer = ctx.session.get(Customer, action.customer_id)
    if customer is None:
        return
    for follow_up in service.apply_domain_events(ctx.session, customer, action.events, ctx.now, ledger=ledger,
                                                 state_absent=state_absent):
        _apply(follow_up, ctx)
