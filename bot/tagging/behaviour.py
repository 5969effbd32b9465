"""Behaviour rules: tags from what customers do rather than say.

``evaluate_event`` runs on each event (incremental); ``evaluate_inactivity`` runs on the scheduler tick for
the time-based ``no_reply_days`` rules. Both only say which rules hit; the service passes each hit
through ``decide`` (cooldown, manual removal) and applies the tags.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol

from bot.tagging.model import BehaviourEvent, BehaviourKind, BehaviourRule, EventKind

# Event kind each event-driven rule kind listens to, and the event attribute its optional param filters.
_EVENT_RULES: dict[BehaviourKind, tuple[EventKind, str | None]] = {
    BehaviourKind.ADDED_VIA_CHANNEL: (EventKind.ADDED, "channel"),
    BehaviourKind.OPENED_LINK: (EventKind.LINK_OPENED, "material"),
    BehaviourKind.JOINED_GROUP: (EventKind.JOINED_GROUP, "group_id"),
    BehaviourKind.LEFT_GROUP: (EventKind.LEFT_GROUP, "group_id"),
    BehaviourKind.DELETED_EMPLOYEE: (EventKind.DELETED_EMPLOYEE, None),
}


class CountsProvider(Protocol):
    def count_events(self, customer_id: str, event_kind: str, since: datetime, until: datetime) -> int:
        """Recorded events of ``event_kind`` for the customer with ``since <= at < until``.

        ``until`` is the current event's time, so the current event is not counted even when the service
        stored it before evaluating (events at the exact same instant are treated as earlier ones' peers
        and also excluded).
        """
        ...


class CustomerActivity(NamedTuple):
    customer_id: str
    last_customer_message_at: datetime | None
    added_at: datetime


@dataclass(frozen=True, slots=True)
class BehaviourHit:
    rule_id: str
    customer_id: str
    employee_id: str | None
    at: datetime  # the event's time, or for inactivity the moment the silence reached N days
    evidence: str  # for the timeline, e.g. "channel=webinar", "event_count:link_opened=3/7 days"


def evaluate_event(
    rules: Iterable[BehaviourRule], event: BehaviourEvent, counts_provider: CountsProvider
) -> list[BehaviourHit]:
    """Rules that ``event`` triggers. ``event_count`` rules fire when the event makes the count in the
    window reach ``count`` exactly (an upward crossing), not on every later event."""
    hits: list[BehaviourHit] = []
    for rule in rules:
        if not rule.enabled:
            continue
        if rule.kind is BehaviourKind.EVENT_COUNT:
            if event.kind != rule.params["event_kind"]:
                continue
            window = rule.params["window"]
            count = rule.params["count"]
            assert isinstance(window, timedelta) and isinstance(count, int)  # guaranteed by the parser
            earlier = counts_provider.count_events(event.customer_id, event.kind, event.at - window, event.at)
            if earlier + 1 != count:
                continue
            evidence = f"event_count:{event.kind}={count}/{_human(window)}"
        elif rule.kind in _EVENT_RULES:
            event_kind, attr = _EVENT_RULES[rule.kind]
            if event.kind != event_kind:
                continue
            wanted = rule.params.get(attr) if attr else None
            actual = event.attrs.get(attr) if attr else None
            if wanted is not None and actual != wanted:
                continue
            evidence = f"{event.kind}:{attr}={actual}" if attr else event.kind
        else:
            continue  # time-based kinds are the scheduler's
        hits.append(BehaviourHit(rule.id, event.customer_id, event.employee_id, event.at, evidence))
    return hits


def evaluate_inactivity(
    rules: Iterable[BehaviourRule],
    customers_last_reply: Iterable[tuple[str, datetime | None, datetime]],
    now: datetime,
    since: datetime | None = None,
) -> list[BehaviourHit]:
    """``no_reply_days`` hits at the scheduler tick ``now``.

    Silence is measured from the customer's last message, or from when they were added if they never
    wrote. With ``since`` (the previous tick), only silences that reached N days in ``(since, now]``
    are reported, so each silent spell fires once however often the tick runs; without it (first run,
    backfill) every customer silent for N days or more is reported.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    inactivity = [r for r in rules if r.enabled and r.kind is BehaviourKind.NO_REPLY_DAYS]
    if not inactivity:
        return []
    hits: list[BehaviourHit] = []
    for customer_id, last_message_at, added_at in customers_last_reply:
        silent_since = last_message_at or added_at
        for rule in inactivity:
            days = rule.params["days"]
            assert isinstance(days, int)  # guaranteed by the parser
            reached = silent_since + timedelta(days=days)
            if reached > now or (since is not None and reached <= since):
                continue
            hits.append(
                BehaviourHit(
                    rule.id,
                    customer_id,
                    None,
                    reached,
                    f"no_reply_days:{days} since {silent_since.isoformat()}",
                )
            )
    return hits


def _human(window: timedelta) -> str:
    if window % timedelta(days=1) == timedelta(0):
        return f"{window.days} days"
    return f"{int(window.total_seconds())} s"
