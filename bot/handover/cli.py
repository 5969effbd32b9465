"""`sopbot handover …`: start a handover and follow it from the command line (same rules as the API)."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy import select

__all__ = ["commands"]


def _services() -> Any:
    from bot.cli import _settings_or_exit
    from bot.services import Services

    return Services.from_settings(_settings_or_exit())


@click.group("handover")
def handover() -> None:
    """Customer handover (在职继承 / 离职继承)."""


@handover.command("start")
@click.option("--from", "from_userid", required=True, help="userid handing over (or the departed employee)")
@click.option("--to", "to_userid", default="", help="userid taking over (resigned: default = the successor)")
@click.option("--resigned", is_flag=True, help="the employee has left (离职继承)")
@click.option("--customers", default="all", show_default=True,
              help='"all" or comma-separated external_userids')
@click.option("--groups", default="none", show_default=True, help='"none", "all" or comma-separated chat_ids')
@click.option("--message", default=None, help="message shown to the customer (on-job, <= 200 chars)")
@click.option("--initiator", default=None, help="userid told by app message about refusals")
def start(from_userid: str, to_userid: str, resigned: bool, customers: str, groups: str, message: str | None,
          initiator: str | None) -> None:
    """Start a handover; background workers call WeCom in batches of 100 and poll the results."""
    from redis.exceptions import RedisError

    from bot.handover.service import HandoverRequestError, start_handover, validate_request
    from bot.models import Outbox
    from bot.queues import enqueue_outbox

    body: dict[str, Any] = {
        "kind": "resigned" if resigned else "onjob", "from_userid": from_userid, "to_userid": to_userid,
        "customers": "all" if customers == "all" else [c.strip() for c in customers.split(",") if c.strip()],
        "groups": {"none": False, "all": True}.get(groups, [g.strip() for g in groups.split(",") if g.strip()]),
        "message": message, "initiator_userid": initiator,
    }
    services = _services()
    try:
        req = validate_request(body, source="cli")
        with services.transaction() as session:
            handover_id, outbox_ids = start_handover(session, req, services.settings.extra)
            queued = [(i, q) for i, q in session.execute(
                select(Outbox.id, Outbox.queue).where(Outbox.id.in_(outbox_ids)))]
    except HandoverRequestError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        enqueue_outbox(services.redis, queued)
    except RedisError:
        click.echo("Redis unavailable: the scheduler's sweeper will start the jobs", err=True)
    click.echo(f"handover #{handover_id} started; follow it with: sopbot handover show {handover_id}")


@handover.command("show")
@click.argument("handover_id", type=int)
def show(handover_id: int) -> None:
    """Totals by status and every customer's outcome (JSON)."""
    from bot.handover.service import describe

    with _services().transaction() as session:
        detail = describe(session, handover_id)
    if detail is None:
        raise click.ClickException(f"handover {handover_id} not found")
    click.echo(json.dumps(detail, ensure_ascii=False, indent=2))


@handover.command("list")
@click.option("--limit", default=20, show_default=True)
def list_(limit: int) -> None:
    """The latest handovers with their totals."""
    from bot.handover.models import Handover
    from bot.handover.service import totals_for

    with _services().transaction() as session:
        rows = session.scalars(select(Handover).order_by(Handover.id.desc()).limit(limit)).all()
        totals = totals_for(session, [r.id for r in rows])
        for r in rows:
            counts = " ".join(f"{k}={v}" for k, v in sorted(totals[r.id].items()))
            click.echo(f"#{r.id} {r.kind} {r.from_userid}->{r.to_userid} {r.status} {counts}")


commands = [handover]
