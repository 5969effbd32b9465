"""Small builders shared by the tagging tests."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.tagging import InboundMessage, Keyword, KeywordRule, MatchMode, Scope

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def msg(
    text: str,
    *,
    direction: str = "customer",
    source: str = "kf",
    employee_id: str | None = "zhangsan",
    group_id: str | None = None,
    msg_id: str = "m1",
) -> InboundMessage:
    return InboundMessage(
        msg_id=msg_id,
        source=source,  # type: ignore[arg-type]
        customer_id="wm_customer",
        employee_id=employee_id,
        group_id=group_id,
        direction=direction,  # type: ignore[arg-type]
        text=text,
        at=T0,
    )


def rule(
    rule_id: str,
    *keywords: str | tuple[str, str],
    negatives: tuple[str | tuple[str, str], ...] = (),
    scope: Scope | None = None,
    tags: tuple[str, ...] = ("意向:询价",),
    **kwargs: object,
) -> KeywordRule:
    def kw(item: str | tuple[str, str]) -> Keyword:
        if isinstance(item, tuple):
            return Keyword(item[0], MatchMode(item[1]))
        return Keyword(item)

    return KeywordRule(
        id=rule_id,
        name=rule_id,
        keywords=tuple(kw(k) for k in keywords),
        negatives=tuple(kw(n) for n in negatives),
        scope=scope or Scope(),
        add_tags=tags,
        **kwargs,  # type: ignore[arg-type]
    )
