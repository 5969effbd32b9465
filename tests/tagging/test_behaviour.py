from __future__ import annotations

from datetime import datetime, timedelta

from bot.tagging import BehaviourEvent, BehaviourRule, evaluate_event, evaluate_inactivity, parse_behaviour_rules

from .factories import T0

DAY = timedelta(days=1)

RULES = parse_behaviour_rules(
    [
        {"id": "webinar", "kind": "added_via_channel", "params": {"channel": "webinar"}, "add_tags": ["来源:直播"]},
        {"id": "pdf", "kind": "opened_link", "params": {"material": "pricing_pdf"}, "add_tags": ["意向:询价"]},
        {"id": "any_link", "kind": "opened_link", "add_tags": ["状态:看过资料"]},
        {"id": "joined", "kind": "joined_group", "add_tags": ["状态:进群"]},
        {"id": "left_vip", "kind": "left_group", "params": {"group_id": "wr_vip"}, "add_tags": ["状态:退群"]},
        {"id": "lost", "kind": "deleted_employee", "add_tags": ["状态:流失"]},
        {
            "id": "busy",
            "kind": "event_count",
            "params": {"event_kind": "link_opened", "count": 3, "window": "7d"},
            "add_tags": ["状态:活跃"],
        },
        {"id": "silent", "kind": "no_reply_days", "params": {"days": 14}, "add_tags": ["状态:沉默"]},
    ]
)


class FakeCounts:
    def __init__(self, times: list[datetime]) -> None:
        self.times = times

    def count_events(self, customer_id: str, event_kind: str, since: datetime, until: datetime) -> int:
        return sum(1 for t in self.times if since <= t < until)


def event(kind: str, **attrs: str) -> BehaviourEvent:
    return BehaviourEvent(kind=kind, customer_id="c1", employee_id="e1", at=T0, attrs=attrs)


def ids(rules: list[BehaviourRule], ev: BehaviourEvent, earlier: list[datetime] | None = None) -> list[str]:
    return [h.rule_id for h in evaluate_event(rules, ev, FakeCounts(earlier or []))]


def test_event_rules() -> None:
    assert ids(RULES, event("added", channel="webinar")) == ["webinar"]
    assert ids(RULES, event("added", channel="expo")) == []
    assert ids(RULES, event("link_opened", material="pricing_pdf")) == ["pdf", "any_link"]
    assert ids(RULES, event("link_opened", material="case_study")) == ["any_link"]
    assert ids(RULES, event("joined_group", group_id="wr_any")) == ["joined"]
    assert ids(RULES, event("left_group", group_id="wr_other")) == []
    assert ids(RULES, event("left_group", group_id="wr_vip")) == ["left_vip"]
    assert ids(RULES, event("deleted_employee")) == ["lost"]


def test_event_count_fires_on_the_crossing_only() -> None:
    ev = event("link_opened", material="case_study")
    assert "busy" not in ids(RULES, ev, [T0 - DAY])
    assert "busy" in ids(RULES, ev, [T0 - 2 * DAY, T0 - DAY])
    assert "busy" not in ids(RULES, ev, [T0 - 3 * DAY, T0 - 2 * DAY, T0 - DAY])  # already crossed
    assert "busy" not in ids(RULES, ev, [T0 - 9 * DAY, T0 - DAY])  # outside the window


def test_hit_evidence() -> None:
    [hit] = evaluate_event(RULES, event("added", channel="webinar"), FakeCounts([]))
    assert (hit.customer_id, hit.employee_id, hit.at, hit.evidence) == ("c1", "e1", T0, "added:channel=webinar")


def test_inactivity_from_last_message_or_add_time() -> None:
    customers = [
        ("quiet", T0 - 15 * DAY, T0 - 30 * DAY),
        ("chatty", T0 - DAY, T0 - 30 * DAY),
        ("never_wrote", None, T0 - 14 * DAY),
        ("new", None, T0 - 2 * DAY),
    ]
    hits = evaluate_inactivity(RULES, customers, now=T0)
    assert [(h.rule_id, h.customer_id) for h in hits] == [("silent", "quiet"), ("silent", "never_wrote")]
    assert hits[0].at == T0 - DAY  # the moment the silence reached 14 days


def test_inactivity_with_previous_tick_fires_each_spell_once() -> None:
    customers = [("quiet", T0 - 15 * DAY, T0 - 30 * DAY), ("crossing", T0 - 14 * DAY + timedelta(minutes=2), T0)]
    later = T0 + timedelta(minutes=5)
    hits = evaluate_inactivity(RULES, customers, now=later, since=T0)
    assert [h.customer_id for h in hits] == ["crossing"]


def test_disabled_rules_are_skipped() -> None:
    off = [BehaviourRule(id="x", name="x", kind=RULES[0].kind, params=RULES[0].params, enabled=False)]
    assert ids(off, event("added", channel="webinar")) == []
