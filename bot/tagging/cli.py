"""Tagging commands of `sopbot`: ``ingest`` (chat-archive records from a file) and ``explain`` (why a tag is there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _services() -> Any:
    from bot.config import ConfigError, load_settings
    from bot.services import Services

    try:
        return Services.from_settings(load_settings())
    except ConfigError as exc:
        raise click.ClickException(f"configuration error: {exc}") from exc


def read_records(path: Path) -> list[Any]:
    """A JSON array, or JSON lines (one record per line; blank lines skipped)."""
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{path}: invalid JSON array: {exc}") from exc
        return list(data)
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"{path}:{number}: invalid JSON line: {exc}") from exc
    return records


@click.command("ingest")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch", default=500, show_default=True, help="Records per transaction.")
def ingest(file: Path, batch: int) -> None:
    """Store chat-archive records (WeCom's decrypted JSON; array or JSON lines) and queue their matching."""
    from jobs.tagging import ingest_archive, parse_archive

    records = read_records(file)
    parsed, errors = parse_archive(records)
    for error in errors:
        click.echo(f"skipped {error}", err=True)
    services = _services()
    accepted = duplicates = 0
    for start in range(0, len(parsed), max(batch, 1)):
        result = ingest_archive(services, parsed[start:start + batch])
        accepted, duplicates = accepted + result.accepted, duplicates + result.duplicates
    click.echo(f"{file}: {accepted} stored, {duplicates} already known, {len(errors)} invalid "
               "(matching runs in the workers)")


@click.command("explain")
@click.argument("external_userid")
@click.argument("tag")
def explain(external_userid: str, tag: str) -> None:
    """Why TAG (group:name) is on the customer — rule, source, message excerpt, when — or when/why it went."""
    from bot.tagging.service import explain_tag

    if ":" not in tag:
        raise click.ClickException("tag must be written group:name, e.g. 意向:询价")
    services = _services()
    with services.transaction() as session:
        lines = explain_tag(session, external_userid, tag, services.settings.tz)
    click.echo("\n".join(lines))


commands = [ingest, explain]
