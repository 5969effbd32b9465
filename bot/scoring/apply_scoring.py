"""Lead scoring in the apply pipeline: every new timeline entry may score, move the stage and route.

The subscriber only groups a round's events by customer into one `ScoreBatch` action; its executor runs
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

__all__ = ["ScoreBatch", "ScoreDomainEvents"]

# Our own timeline kinds never score (and must not loop through the cascade).
_IGNORED_PREFIXES = ("stage_changed", "lead_")


@dataclass(frozen=True)
class ScoreDomainEvents(Action):
    customer_id: int
    events: tuple[DomainEvent, ...]


@dataclass(frozen=True)
class ScoreBatch(Action):
    """One round of events, per customer: scored together (``service.apply_domain_events``), the ledgers and lead
    states read and the ledger rows written once per round for all of them."""

    items: tuple[ScoreDomainEvents, ...]


@subscribe
def _on_events(ctx: ApplyContext, events: list[DomainEvent]) -> list[Action]:
    relevant = [e for e in events if not e.kind.startswith(_IGNORED_PREFIXES)]
    items = tuple(ScoreDomainEvents(cid, tuple(evs)) for cid, evs in service.group_by_customer(relevant).items())
    return [ScoreBatch(items)] if items else []


@executes
def _(action: ScoreBatch, ctx: ApplyContext) -> None:
    batch = [(customer, item.events) for item in action.items
             if (customer := ctx.session.get(Customer, item.customer_id)) is not None]
    # Every customer's follow-ups (timeline entries, notifications) after all are scored: scoring reads neither the
    # timeline nor the outbox, and the ORM then flushes the batch's score and stage updates in one go.
    for follow_up in service.apply_domain_events(ctx.session, batch, ctx.now):
        _apply(follow_up, ctx)
