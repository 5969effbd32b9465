"""`sopbot check` (validate the content library) and `sopbot sop preview` (a dry run of one SOP)."""

from __future__ import annotations

from datetime import datetime

import click

from bot.db import utcnow


@click.command("check", context_settings={"ignore_unknown_options": True})
@click.argument("root", required=False)
def check(root: str | None) -> None:
    """Validate the whole scripts/SOP library; prints path:line: message per problem, exits 1 on any."""
    from bot.sop.service import content_root
    from scripts_library.validate import main as validate_main

    raise SystemExit(validate_main([root or str(content_root())]))


@click.group("sop")
def sop() -> None:
    """SOP sequences."""


@sop.command("preview")
@click.argument("sop_id")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 366))
@click.option("--limit", default=500, show_default=True, type=click.IntRange(1, 100000),
              help="At most this many current customers.")
@click.option("--now", "now_text", default=None, help="Pretend it is this moment (ISO 8601 with a zone).")
def preview(sop_id: str, days: int, limit: int, now_text: str | None) -> None:
    """Which customers would get which step when over the next DAYS days. Writes nothing."""
    from bot.cli import _settings_or_exit
    from bot.services import Services
    from bot.sop.service import definitions, preview_sop

    settings = _settings_or_exit()
    sops = definitions()
    if sop_id not in sops:
        raise click.ClickException(f"no SOP {sop_id!r} (known: {', '.join(sorted(sops))})")
    now = datetime.fromisoformat(now_text) if now_text else utcnow()
    if now.tzinfo is None:
        raise click.ClickException("--now needs a time zone offset, e.g. 2025-09-01T10:00:00+08:00")
    services = Services.from_settings(settings)
    with services.transaction() as session:
        rows = preview_sop(session, sops[sop_id], now, days, limit=limit)
    tz = settings.tz
    click.echo(f"{sop_id}: {len(rows)} row(s), {now.astimezone(tz):%Y-%m-%d %H:%M} + {days} days ({settings.timezone})")
    for r in rows:
        when = f"{r.due_at.astimezone(tz):%Y-%m-%d %a %H:%M}" if r.due_at else "-"
        step = f"{r.step_id}{'/' + r.variant if r.variant else ''}" if r.step_id else "-"
        click.echo(f"{r.customer_id:<34} {step:<28} {when:<20} {r.executor or '-':<12} {r.note}")


commands = [check, sop]
