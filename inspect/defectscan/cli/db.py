"""``defectscan db``: run, inspect and check the results database's Alembic migrations.

The URL comes from Settings (``DEFECTSCAN_DATABASE_URL``, default a SQLite file under
``var/``); ``--url`` overrides it for one command.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from defectscan.cli.common import console, err_console

__all__ = ["db_app"]

db_app = typer.Typer(no_args_is_help=True, help="Results database migrations (Alembic).")

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="Database URL (default: DEFECTSCAN_DATABASE_URL / Settings)."),
]


def _config(url: str | None) -> Any:
    from defectscan.config import get_settings
    from defectscan.store.db import alembic_config

    resolved = url or get_settings().database_url
    config = alembic_config(resolved)
    # Show Alembic's own progress lines ("Running upgrade ...") as its CLI would.
    config.attributes["configure_logger"] = True
    return config, resolved


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _run(what: str, url: str | None, action: Any) -> None:
    from alembic.util.exc import CommandError

    from defectscan.errors import DefectscanError

    try:
        config, resolved = _config(url)
        err_console.print(f"[dim]{what} on {_redact(resolved)}[/]")
        action(config)
    except (CommandError, DefectscanError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc


@db_app.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    url: UrlOption = None,
) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from alembic import command

    _run("upgrade", url, lambda config: command.upgrade(config, revision))
    console.print(f"[green]upgrade to {revision}: done[/]")


@db_app.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision (-1: one step back).")] = "-1",
    url: UrlOption = None,
) -> None:
    """Revert migrations down to REVISION (default: one step)."""
    from alembic import command

    _run("downgrade", url, lambda config: command.downgrade(config, revision))
    console.print(f"[green]downgrade to {revision}: done[/]")


@db_app.command()
def current(url: UrlOption = None) -> None:
    """Show the database's current revision and the head it could upgrade to."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from defectscan.store.db import make_engine

    def show(config: Any) -> None:
        head = ScriptDirectory.from_config(config).get_current_head()
        engine = make_engine(url)
        try:
            with engine.connect() as connection:
                revision = MigrationContext.configure(connection).get_current_revision()
        finally:
            engine.dispose()
        if revision is None:
            console.print(f"current: [yellow]none (empty database)[/]  head: {head}")
        elif revision == head:
            console.print(f"current: [green]{revision} (head)[/]")
        else:
            console.print(
                f"current: [yellow]{revision}[/]  head: {head} (run `defectscan db upgrade`)"
            )

    _run("current", url, show)


@db_app.command()
def check(url: UrlOption = None) -> None:
    """Fail unless the database is at head and matches the ORM models (``alembic check``)."""
    from alembic import command

    _run("check", url, command.check)
    console.print("[green]database schema matches the models[/]")
