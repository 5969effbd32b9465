"""MQL → SQL routing: who gets the lead, by when they must accept it, and whom to escalate to.

choose_salesperson, in order:
1. the customer's owner (the employee who added them in WeCom), when that userid is an active
   salesperson with spare capacity (open_load < capacity): the customer already knows them;
2. otherwise smooth weighted round-robin (nginx's algorithm) over the active salespeople with spare
   capacity. Each pick adds every candidate's weight to its running counter, takes the highest counter
   and subtracts the candidates' total weight from it. Over any run where capacities do not bind, each
   person gets exactly weight/total of the leads, interleaved rather than in bursts. Ties go to the
   lower open_load/capacity ratio, then the smaller userid, so the result is a pure function of the
   inputs. People who are full or inactive are skipped and their counter is left alone: they neither
   bank credit while away nor get a burst on return.
3. if nobody active has room: the configured `fallback_userid` (reason "fallback"), else the
   least-loaded active salesperson by open_load/capacity (reason "over capacity", flagged so the
   dashboard shows the team is overloaded). A team with nobody active and no fallback raises
   NoSalespersonError: the service must surface that, not drop the lead.

The rr_state is a JSON-friendly {userid: counter} map that the service persists per team.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from bot.scoring.model import require_aware

__all__ = [
    "AddBusinessMinutes",
    "Assignment",
    "LeadTask",
    "NoSalespersonError",
    "Salesperson",
    "SlaStatus",
    "accept_deadline",
    "choose_salesperson",
    "escalation_target",
    "open_task",
    "should_escalate",
    "sla_status",
    "time_to_first_touch",
]

AddBusinessMinutes = Callable[[datetime, int], datetime]
SlaStatus = Literal["pending", "accepted", "missed"]
Reason = Literal["owner", "round robin", "over capacity", "fallback"]


class NoSalespersonError(LookupError):
    """No active salesperson and no fallback: the lead cannot be routed."""


@dataclass(frozen=True, slots=True)
class Salesperson:
    userid: str
    capacity: int  # max open (unaccepted or in-progress) leads
    open_load: int
    weight: int = 1  # share of round-robin leads; pause someone with active=False, not weight 0
    active: bool = True
    manager: str | None = None  # userid escalations go to

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError(f"{self.userid}: weight must be >= 1 (set active=False to pause)")
        if self.capacity < 0 or self.open_load < 0:
            raise ValueError(f"{self.userid}: capacity and open_load must be >= 0")

    @property
    def has_room(self) -> bool:
        return self.active and self.open_load < self.capacity

    @property
    def load_ratio(self) -> float:
        return self.open_load / self.capacity if self.capacity else float("inf")


@dataclass(frozen=True, slots=True)
class Assignment:
    userid: str
    reason: Reason
    new_rr_state: Mapping[str, int]
    over_capacity: bool = False


def choose_salesperson(
    customer_owner: str | None,
    sales_team: Sequence[Salesperson],
    rr_state: Mapping[str, int],
    fallback_userid: str | None = None,
) -> Assignment:
    """Pick who gets the lead (see the module docstring for the order and the tie-breaks)."""
    by_id = {sp.userid: sp for sp in sales_team}
    if len(by_id) != len(sales_team):
        raise ValueError("duplicate userid in sales_team")
    # Forget counters of people who left the team so the state does not grow forever.
    state = {u: c for u, c in rr_state.items() if u in by_id}

    owner = by_id.get(customer_owner) if customer_owner else None
    if owner is not None and owner.has_room:
        return Assignment(owner.userid, "owner", state)

    candidates = [sp for sp in sales_team if sp.has_room]
    if candidates:
        total = sum(sp.weight for sp in candidates)
        for sp in candidates:
            state[sp.userid] = state.get(sp.userid, 0) + sp.weight
        chosen = min(candidates, key=lambda sp: (-state[sp.userid], sp.load_ratio, sp.userid))
        state[chosen.userid] -= total
        return Assignment(chosen.userid, "round robin", state)

    if fallback_userid:
        return Assignment(fallback_userid, "fallback", state, over_capacity=True)
    active = [sp for sp in sales_team if sp.active]
    if not active:
        raise NoSalespersonError("no active salesperson and no fallback_userid configured")
    least = min(active, key=lambda sp: (sp.load_ratio, sp.open_load, sp.userid))
    return Assignment(least.userid, "over capacity", state, over_capacity=True)


def accept_deadline(
    assigned_at: datetime, sla_minutes: int, add_business_minutes: AddBusinessMinutes | None = None
) -> datetime:
    """When the assignee must have accepted. Pass the China-calendar `add_business_minutes` (from
    bot.sop.timing) so a lead routed at 17:50 on a Friday is due Monday morning, not at 18:20; without
    it the SLA runs on wall-clock minutes."""
    require_aware(assigned_at, "assigned_at")
    if sla_minutes <= 0:
        raise ValueError("sla_minutes must be positive")
    if add_business_minutes is None:
        return assigned_at + timedelta(minutes=sla_minutes)
    return require_aware(add_business_minutes(assigned_at, sla_minutes), "add_business_minutes result")


@dataclass(frozen=True, slots=True)
class LeadTask:
    """The accept-by task an assignment creates; the service stores it and fills accepted_at."""

    customer_id: str
    userid: str
    reason: str
    assigned_at: datetime
    accept_by: datetime
    accepted_at: datetime | None = None


def open_task(
    customer_id: str,
    assignment: Assignment,
    assigned_at: datetime,
    sla_minutes: int,
    add_business_minutes: AddBusinessMinutes | None = None,
) -> LeadTask:
    deadline = accept_deadline(assigned_at, sla_minutes, add_business_minutes)
    return LeadTask(customer_id, assignment.userid, assignment.reason, assigned_at, deadline)


def sla_status(task: LeadTask, now: datetime) -> SlaStatus:
    """pending until accept_by (inclusive); accepted if accepted by then; missed otherwise.

    A late acceptance stays "missed": the breach already happened (and was escalated), and the
    dashboard must count it. An accepted_at after `now` is ignored so past states can be replayed.
    """
    require_aware(now, "now")
    if task.accepted_at is not None and task.accepted_at <= now:
        return "accepted" if task.accepted_at <= task.accept_by else "missed"
    return "missed" if now > task.accept_by else "pending"


def should_escalate(task: LeadTask, now: datetime) -> bool:
    """Missed and still not accepted: the scheduler tick escalates (once; it records that it did)."""
    return sla_status(task, now) == "missed" and (task.accepted_at is None or task.accepted_at > now)


def escalation_target(assignee: str, sales_team: Sequence[Salesperson]) -> str | None:
    """The assignee's manager. A manager who is on the team but inactive (on leave) is skipped for
    their own manager; a manager not on the team (a sales director) is returned as is. None when
    there is nobody above (or the chain loops back)."""
    by_id = {sp.userid: sp for sp in sales_team}
    seen = {assignee}
    current = by_id.get(assignee)
    while current is not None and current.manager and current.manager not in seen:
        manager = by_id.get(current.manager)
        if manager is None or manager.active:
            return current.manager
        seen.add(manager.userid)
        current = manager
    return None


def time_to_first_touch(assigned_at: datetime, touches: Iterable[datetime]) -> timedelta | None:
    """Wall-clock time from assignment to the first touch (message, call, note) at or after it; None
    while untouched. Touches before the assignment (earlier nurturing) do not count."""
    require_aware(assigned_at, "assigned_at")
    after = [t for t in (require_aware(t, "touch") for t in touches) if t >= assigned_at]
    return min(after) - assigned_at if after else None
