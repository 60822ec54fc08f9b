"""``flask`` commands: migrations and demo data (``flask --app web seed``)."""

from __future__ import annotations

import time

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from models.demo import DemoSize, load_demo_data
from models.migrate import current_revision, upgrade

from .runtime import services

db_cli = AppGroup("db", help="Database schema.")


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Apply Alembic migrations up to head (safe to run on every start)."""
    url = services().settings.effective_database_url
    services().settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(url)
    click.echo(f"schema at revision {current_revision(url)}")


@click.command("seed")
@with_appcontext
@click.option("--small", "size_name", flag_value="small", help="Test/demo size.")
@click.option(
    "--full",
    "size_name",
    flag_value="full",
    default=True,
    help="The seed document's scale (102k users, 50k shops, 110 vouchers).",
)
def seed(size_name: str) -> None:
    """Load demo data (idempotent), then run every registered post-seed step."""
    size = DemoSize.named(size_name)
    svc = services()
    svc.settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(svc.settings.effective_database_url)
    started = time.perf_counter()
    bars: dict[str, object] = {}

    def progress(table: str, done: int, total: int) -> None:
        bar = bars.get(table)
        if bar is None:
            bar = click.progressbar(length=max(total, 1), label=f"{table:<20}")
            bar.__enter__()
            bars[table] = bar
        bar.update(done - bar.pos)  # type: ignore[attr-defined]
        if done >= total:
            bar.__exit__(None, None, None)  # type: ignore[attr-defined]

    inserted = load_demo_data(svc.db, size, progress)
    for step in current_app.extensions.get("hmdp_post_seed", []):
        step(svc)
    elapsed = time.perf_counter() - started
    click.echo(
        f"seeded ({size_name}) in {elapsed:.1f}s: "
        + ", ".join(f"{t}+{n}" for t, n in inserted.items())
    )


def register_cli(app: Flask) -> None:
    app.cli.add_command(db_cli)
    app.cli.add_command(seed)
