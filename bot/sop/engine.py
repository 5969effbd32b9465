"""The SOP engine, pure: who enters, what is planned when and by whom, who leaves, what the budget allows.

The service owns state (enrollments, tasks, touches) and calls these functions with plain views of it;
nothing here reads a clock, a database or the network, so every decision is reproducible in a test and
explainable by its ``reason``.
"""

from __future__ import annotations

import calendar as calendar_module
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from bot.sop.definition import (
    CUSTOMER_TOUCHPOINTS,
    DEFAULT_TZ,
    AllOf,
    AnyOf,
    Calendar,
    Condition,
    Crowd,
    CrowdNode,
    Executor,
    Not,
    SopDefinition,
    Step,
    Trigger,
    Variant,
    stage_rank,
)
from bot.sop.timing import due_at, settle, zone


@dataclass(frozen=True)
class CustomerView:
    """What the engine needs to know about one customer (as seen by one follow relation)."""

    id: str
    tags: frozenset[str] = frozenset()
    stage: str = "new"
    channel: str | None = None  # the `state` of the contact way the customer came through
    score: float = 0.0
    added_at: datetime | None = None
    owner: str | None = None  # follow user (userid)
    deleted: bool = False  # deleted on either side
    timezone: str | None = None  # IANA zone if known; overrides the SOP's


@dataclass(frozen=True)
class TriggerEvent:
    kind: str  # customer_added | tag_added | stage_reached
    channel: str | None = None
    tag: str | None = None
    stage: str | None = None


@dataclass(frozen=True)
class EnrollmentRecord:
    sop_id: str
    customer_id: str
    rotation: int
    started_at: datetime
    exited_at: datetime | None = None
    exit_reason: str | None = None


class EnrollDecision(NamedTuple):
    enroll: bool
    reason: str
    rotation: int  # the rotation to create when enroll is True (1 for a first enrollment)


class ExitDecision(NamedTuple):
    exit: bool
    reason: str


@dataclass(frozen=True)
class PlannedStep:
    step_id: str
    variant_id: str | None
    script_id: str
    due_at: datetime
    touchpoint: str
    executor: str | None  # None: nobody resolvable; the service escalates to an admin
    note: str = ""


# ------------------------------------------------------------------------------------------- crowd


def _condition(cond: Condition, customer: CustomerView, now: datetime | None) -> bool:
    kind, value = cond.kind, cond.value
    if kind == "tag_has":
        return value in customer.tags
    if kind == "tag_has_not":
        return value not in customer.tags
    if kind == "stage_in":
        return customer.stage in value
    if kind == "stage_at_least":
        return stage_rank(customer.stage) >= stage_rank(value) >= 0
    if kind == "channel_in":
        return customer.channel in value
    if kind == "score_gte":
        return customer.score >= value
    if kind == "score_lte":
        return customer.score <= value
    if kind == "added_within_days":
        if now is None:
            raise ValueError("added_within_days needs `now`")
        return customer.added_at is not None and now - customer.added_at <= timedelta(days=value)
    raise ValueError(f"unknown condition {kind!r}")


def crowd_matches(crowd: Crowd | CrowdNode | None, customer: CustomerView,
                  now: datetime | None = None) -> bool:
    """Does the customer stand in the crowd? A trigger crowd has no standing filter: always True."""
    if crowd is None:
        return True
    if isinstance(crowd, Crowd):
        return crowd_matches(crowd.filter, customer, now)
    if isinstance(crowd, AllOf):
        return all(crowd_matches(c, customer, now) for c in crowd.items)
    if isinstance(crowd, AnyOf):
        return any(crowd_matches(c, customer, now) for c in crowd.items)
    if isinstance(crowd, Not):
        return not crowd_matches(crowd.item, customer, now)
    return _condition(crowd, customer, now)


def trigger_matches(trigger: Trigger, event: TriggerEvent) -> bool:
    if event.kind != trigger.event:
        return False
    if trigger.channel is not None and event.channel != trigger.channel:
        return False
    if trigger.tag is not None and event.tag != trigger.tag:
        return False
    # Jumping engaged → SQL also "reaches" MQL; uniqueness stops a second enrollment.
    return trigger.stage is None or stage_rank(event.stage) >= stage_rank(trigger.stage) >= 0


# -------------------------------------------------------------------------------------- enrollment


def enrollment_seed(sop_id: str, customer_id: str, rotation: int) -> str:
    """The recommended A/B seed: stable, so a preview shows the variant the real enrollment will get."""
    return f"{sop_id}:{customer_id}:{rotation}"


def _enroll(sop: SopDefinition, customer: CustomerView, in_crowd: tuple[bool, str],
            existing: Iterable[EnrollmentRecord], now: datetime) -> EnrollDecision:
    mine = sorted((e for e in existing if e.sop_id == sop.id and e.customer_id == customer.id),
                  key=lambda e: e.rotation)
    next_rotation = mine[-1].rotation + 1 if mine else 1
    if not sop.enabled:
        return EnrollDecision(False, "sop disabled", next_rotation)
    if customer.deleted:
        return EnrollDecision(False, "customer deleted", next_rotation)
    ok, why = in_crowd
    if not ok:
        return EnrollDecision(False, why, next_rotation)
    # Someone who already meets an exit condition (e.g. already 意向:询价) would exit at the first check.
    exit_now = check_exit(sop, customer, now, None, now)
    if exit_now.exit:
        return EnrollDecision(False, f"already meets exit condition {exit_now.reason}", next_rotation)
    active = [e for e in mine if e.exited_at is None]
    if active:
        return EnrollDecision(False, f"already enrolled (rotation {active[-1].rotation})", next_rotation)
    if not mine:
        return EnrollDecision(True, why, 1)
    policy = sop.reentry
    if policy.policy == "never":
        return EnrollDecision(False, "re-entry: never (enrolled before)", next_rotation)
    if policy.policy == "after_exit":
        last_reason = mine[-1].exit_reason or "exited"
        return EnrollDecision(True, f"re-entry after exit ({last_reason})", next_rotation)
    assert policy.every_days is not None
    earliest = mine[-1].started_at + timedelta(days=policy.every_days)
    if now < earliest:
        return EnrollDecision(False, f"re-entry every {policy.every_days} days: not before "
                                     f"{earliest.astimezone(UTC).isoformat()}", next_rotation)
    return EnrollDecision(True, f"re-entry every {policy.every_days} days", next_rotation)


def should_enroll(sop: SopDefinition, customer: CustomerView, trigger_event: TriggerEvent | None,
                  existing_enrollments: Iterable[EnrollmentRecord], now: datetime) -> EnrollDecision:
    """Enroll this customer now? Applies crowd/trigger, exit pre-check, uniqueness and re-entry policy.

    ``existing_enrollments`` may hold any SOP's/customer's records; only (sop, customer) ones count.
    """
    if sop.crowd.is_trigger:
        if trigger_event is None:
            in_crowd = (False, "trigger crowd: needs an event")
        else:
            hit = next((t for t in sop.crowd.triggers if trigger_matches(t, trigger_event)), None)
            in_crowd = (hit is not None, f"trigger {hit.event}" if hit else f"event {trigger_event.kind} "
                        "matches no trigger")
    else:
        ok = crowd_matches(sop.crowd, customer, now)
        in_crowd = (ok, "in crowd" if ok else "not in crowd")
    return _enroll(sop, customer, in_crowd, existing_enrollments, now)


# ------------------------------------------------------------------------------------------- plans


def choose_variant(step: Step, seed: str | int) -> Variant | None:
    """Weighted, deterministic pick: the same (seed, step) always gets the same variant."""
    if not step.variants:
        return None
    digest = hashlib.sha256(f"{seed}:{step.id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(v.weight for v in step.variants)
    for variant in step.variants:
        point -= variant.weight
        if point < 0:
            return variant
    return step.variants[-1]


def _stable_index(key: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n


def resolve_executor(executor: Executor, customer_owner: str | None,
                     roles: Mapping[str, Sequence[str]] | None = None, fallback: str | None = None,
                     key: str = "") -> str | None:
    """Who does the step: owner (follow user) by default, a role member or a named user; else fallback.

    A role is spread over its members by a stable hash of ``key`` (the customer id), so one customer keeps
    the same person across steps.
    """
    fallback = executor.fallback or fallback
    if executor.kind == "user":
        return executor.value or fallback
    if executor.kind == "role":
        members = list((roles or {}).get(executor.value or "", ()))
        return members[_stable_index(key, len(members))] if members else fallback
    return customer_owner or fallback


def step_executor(sop: SopDefinition, step: Step, customer: CustomerView,
                  roles: Mapping[str, Sequence[str]] | None = None) -> str | None:
    executor = step.executor or sop.executor
    return resolve_executor(executor, customer.owner, roles, sop.executor.fallback, key=customer.id)


def plan_steps(sop: SopDefinition, enrollment_started_at: datetime, customer: CustomerView,
               rng_seed: str | int, roles: Mapping[str, Sequence[str]] | None = None) -> list[PlannedStep]:
    """Every step of one enrollment with its due time (UTC), variant and executor. Record ``variant_id``."""
    planned: list[PlannedStep] = []
    previous: datetime | None = None
    for step in sop.steps:
        when = due_at(step, enrollment_started_at, previous, sop.calendar, customer.timezone)
        variant = choose_variant(step, rng_seed)
        executor = step_executor(sop, step, customer, roles)
        planned.append(PlannedStep(
            step_id=step.id, variant_id=variant.id if variant else None,
            script_id=variant.script if variant else (step.content or ""), due_at=when,
            touchpoint=step.touchpoint, executor=executor,
            note="" if executor else "no executor resolvable: escalate",
        ))
        previous = when
    return planned


# -------------------------------------------------------------------------------------------- exit


def check_exit(sop: SopDefinition, customer: CustomerView, enrollment_started_at: datetime,
               last_customer_message_at: datetime | None, now: datetime | None = None) -> ExitDecision:
    """Re-checked continuously and right before a step fires. Deletion always exits: nobody to touch."""
    if customer.deleted:
        return ExitDecision(True, "deleted")
    for cond in sop.exit:
        if cond.kind == "replied" and last_customer_message_at is not None \
                and last_customer_message_at > enrollment_started_at:
            return ExitDecision(True, "replied")
        if cond.kind == "tag_added" and cond.value in customer.tags:
            return ExitDecision(True, f"tag_added:{cond.value}")
        if cond.kind == "stage_at_least" and stage_rank(customer.stage) >= stage_rank(cond.value) >= 0:
            return ExitDecision(True, f"stage_at_least:{cond.value}")
        if cond.kind == "left_crowd" and not sop.crowd.is_trigger \
                and not crowd_matches(sop.crowd, customer, now):
            return ExitDecision(True, "left_crowd")
    return ExitDecision(False, "")


# ------------------------------------------------------------------------------------------ budget


@dataclass(frozen=True)
class Touch:
    """A customer-facing touch already sent or scheduled (any SOP, or manual)."""

    customer_id: str
    employee: str | None
    touchpoint: str
    at: datetime
    sop_id: str = ""
    step_id: str = ""


@dataclass(frozen=True)
class BudgetDecision:
    allowed: bool
    action: str | None  # None when allowed; else defer | skip | drop (drop = end the enrollment)
    defer_until: datetime | None
    reason: str


@dataclass(frozen=True)
class FrequencyBudget:
    """Per-customer caps across all SOPs, mirroring WeCom's limits (configurable).

    Mass sends: ``mass_sends_per_month`` per customer per calendar month (None = days in that month);
    any 1:1 touch (chat or mass send): ``touches_per_employee_per_day`` per employee per customer per day.
    Group posts and moments address no single customer and are not counted. Days/months are local to
    ``timezone``.
    """

    mass_sends_per_month: int | None = None
    touches_per_employee_per_day: int = 1
    timezone: str = DEFAULT_TZ

    def exceeded(self, customer_id: str, touchpoint: str, employee: str | None, at: datetime,
                 touches: Iterable[Touch]) -> str | None:
        """The reason the candidate would break a cap, or None."""
        if touchpoint not in CUSTOMER_TOUCHPOINTS:
            return None
        tz = zone(self.timezone)
        local = at.astimezone(tz)
        mine = [t for t in touches if t.customer_id == customer_id and t.touchpoint in CUSTOMER_TOUCHPOINTS]
        if touchpoint == "mass_send":
            cap = self.mass_sends_per_month
            if cap is None:
                cap = calendar_module.monthrange(local.year, local.month)[1]
            month = (local.year, local.month)
            used = sum(1 for t in mine
                       if t.touchpoint == "mass_send" and _month(t.at.astimezone(tz)) == month)
            if used >= cap:
                return f"mass-send cap {cap}/month reached for {local:%Y-%m} ({used} sent or scheduled)"
        cap_day = self.touches_per_employee_per_day
        used_day = sum(1 for t in mine
                       if t.employee == employee and t.at.astimezone(tz).date() == local.date())
        if used_day >= cap_day:
            return f"cap {cap_day}/day per employee reached on {local:%Y-%m-%d} for {employee}"
        return None

    def decide(self, customer_id: str, touchpoint: str, employee: str | None, at: datetime,
               touches: Iterable[Touch], capped: str = "defer", calendar: Calendar | None = None,
               customer_tz: str | None = None) -> BudgetDecision:
        """Allow the candidate touch, or apply the step's ``capped`` action with a recorded reason.

        ``defer`` finds the first later day (same wall-clock time, then the calendar's next open moment)
        where every cap has room, counting touches already scheduled on those days too.
        """
        touches = list(touches)
        reason = self.exceeded(customer_id, touchpoint, employee, at, touches)
        if reason is None:
            return BudgetDecision(True, None, None, "within budget")
        if capped != "defer":
            return BudgetDecision(False, capped, None, reason)
        tz = zone(self.timezone)
        local = at.astimezone(tz)
        for days in range(1, 400):
            candidate = (local + timedelta(days=days)).astimezone(UTC)
            if calendar is not None:
                candidate = settle(candidate, calendar, customer_tz)
            if self.exceeded(customer_id, touchpoint, employee, candidate, touches) is None:
                return BudgetDecision(False, "defer", candidate, f"{reason}; deferred")
        return BudgetDecision(False, "skip", None, f"{reason}; no room within a year")


def _month(dt: datetime) -> tuple[int, int]:
    return dt.year, dt.month


# ----------------------------------------------------------------------------------------- preview


@dataclass(frozen=True)
class PreviewRow:
    customer_id: str
    step_id: str | None  # None: the customer would not be enrolled (see note)
    variant: str | None
    due_at: datetime | None
    executor: str | None
    note: str = ""
    script_id: str | None = None
    touchpoint: str | None = None


def preview(sop: SopDefinition, customers: Iterable[CustomerView], now: datetime, days: int, *,
            existing: Iterable[EnrollmentRecord] = (), roles: Mapping[str, Sequence[str]] | None = None,
            budget: FrequencyBudget | None = None, touches: Iterable[Touch] = ()) -> list[PreviewRow]:
    """Dry run: what the SOP would do to these customers over the next ``days`` days. No side effects.

    A trigger SOP is previewed as if every customer triggered it now (noted on each row). Variants use
    ``enrollment_seed`` so the preview shows what a real enrollment seeded the same way will get.
    """
    horizon = now + timedelta(days=days)
    existing = list(existing)
    known_touches = list(touches)
    rows: list[PreviewRow] = []
    for customer in customers:
        if sop.crowd.is_trigger:
            decision = _enroll(sop, customer, (True, "as if triggered now"), existing, now)
        else:
            decision = should_enroll(sop, customer, None, existing, now)
        if not decision.enroll:
            rows.append(PreviewRow(customer.id, None, None, None, None, f"not enrolled: {decision.reason}"))
            continue
        prefix = "as if triggered now; " if sop.crowd.is_trigger else ""
        simulated = [t for t in known_touches if t.customer_id == customer.id]
        seed = enrollment_seed(sop.id, customer.id, decision.rotation)
        for planned in plan_steps(sop, now, customer, seed, roles):
            if planned.due_at > horizon:
                break
            when, note = planned.due_at, prefix + planned.note
            if budget is not None:
                verdict = budget.decide(customer.id, planned.touchpoint, planned.executor, when, simulated,
                                        sop.capped, sop.calendar, customer.timezone)
                if not verdict.allowed:
                    note += f"{verdict.action}: {verdict.reason}"
                    if verdict.action == "defer" and verdict.defer_until is not None:
                        when = verdict.defer_until
                if verdict.action in ("skip", "drop"):
                    rows.append(PreviewRow(customer.id, planned.step_id, planned.variant_id, None,
                                           planned.executor, note, planned.script_id, planned.touchpoint))
                    if verdict.action == "drop":
                        break
                    continue
                simulated.append(Touch(customer.id, planned.executor, planned.touchpoint, when, sop.id,
                                       planned.step_id))
            if when > horizon:
                continue
            rows.append(PreviewRow(customer.id, planned.step_id, planned.variant_id, when, planned.executor,
                                   note.strip("; "), planned.script_id, planned.touchpoint))
    return rows
