"""``defectscan users add|passwd|disable|enable|list`` (console accounts) and ``console``.

Passwords are read from a hidden prompt (asked twice), from stdin with ``--password-stdin``
(for scripts), or generated with ``--generate`` and printed once. Only an argon2 hash is
stored. Every change is recorded in the audit table, like the console's own actions.
"""

from __future__ import annotations

import getpass
import secrets
import sys
from typing import Annotated

import typer

from defectscan.cli.common import CliUsageError, DbUrlOpt, console
from defectscan.cli.common import db_session as _session

__all__ = ["generate_password", "register"]

users_app = typer.Typer(no_args_is_help=True, help="Operator console accounts.")

ROLE_HELP = "viewer (read), operator (review, pause, retrain), engineer (thresholds, models), admin"


def generate_password() -> str:
    """A random password of about 120 bits, easy to type (URL-safe characters)."""
    return secrets.token_urlsafe(15)


def _read_password(from_stdin: bool, generate: bool) -> tuple[str, bool]:
    from defectscan.console.security import password_problem

    if generate:
        return generate_password(), True
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            msg = "the two passwords differ"
            raise CliUsageError(msg)
    problem = password_problem(password)
    if problem:
        raise CliUsageError(problem)
    return password, False


PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
]
GenerateOpt = Annotated[
    bool, typer.Option("--generate", help="Make a random password and print it once.")
]


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="User name (no spaces, at most 64 characters).")],
    role: Annotated[str, typer.Option("--role", help=f"Role: {ROLE_HELP}.")] = "viewer",
    password_stdin: PasswordStdinOpt = False,
    generate: GenerateOpt = False,
    db: DbUrlOpt = None,
) -> None:
    """Create a console user."""
    from defectscan.console.security import hash_password
    from defectscan.store.console_users import add_user, audit

    password, made = _read_password(password_stdin, generate)
    with _session(db) as session:
        add_user(name, password_hash=hash_password(password), role=role, session=session)
        audit("user_add", who=None, ip="cli", detail={"user": name, "role": role}, session=session)
    console.print(f"user {name} ({role}) created")
    if made:
        console.print(f"password (shown once): {password}", markup=False, highlight=False)


@users_app.command("passwd")
def users_passwd(
    name: Annotated[str, typer.Argument(help="User name.")],
    password_stdin: PasswordStdinOpt = False,
    generate: GenerateOpt = False,
    db: DbUrlOpt = None,
) -> None:
    """Set a new password (unlocks the account and logs it out everywhere)."""
    from defectscan.console.security import hash_password
    from defectscan.store.console_users import audit, set_password_hash

    password, made = _read_password(password_stdin, generate)
    with _session(db) as session:
        set_password_hash(name, hash_password(password), session=session)
        audit("user_passwd", who=None, ip="cli", detail={"user": name}, session=session)
    console.print(f"password of {name} changed; its sessions are ended")
    if made:
        console.print(f"password (shown once): {password}", markup=False, highlight=False)


@users_app.command("disable")
def users_disable(
    name: Annotated[str, typer.Argument(help="User name.")],
    enable: Annotated[
        bool, typer.Option("--enable", help="Enable the user again instead.")
    ] = False,
    db: DbUrlOpt = None,
) -> None:
    """Disable a user (their sessions end at once), or enable them again with --enable."""
    from defectscan.store.console_users import audit, set_user_disabled

    with _session(db) as session:
        set_user_disabled(name, not enable, session=session)
        action = "user_enable" if enable else "user_disable"
        audit(action, who=None, ip="cli", detail={"user": name}, session=session)
    console.print(f"user {name} {'enabled' if enable else 'disabled'}")


@users_app.command("list")
def users_list(db: DbUrlOpt = None) -> None:
    """Every console user with role, state and last login."""
    from rich.table import Table

    from defectscan.store.console_users import list_users
    from defectscan.store.schema import utcnow

    table = Table(title="console users", title_justify="left")
    for header in ("name", "role", "state", "last login (UTC)"):
        table.add_column(header, no_wrap=True)
    with _session(db) as session:
        now = utcnow()
        for u in list_users(session=session):
            state = "disabled" if u.disabled else "enabled"
            if u.locked_until is not None and u.locked_until > now:
                state += f", locked until {u.locked_until:%H:%M}"
            last = f"{u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else "-"
            table.add_row(u.name, u.role, state, last)
    console.print(table)


def console_cmd(
    host: Annotated[
        str | None, typer.Option("--host", help="Listen address (default: console.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Listen port (default: console.port, 8080).")
    ] = None,
    db: DbUrlOpt = None,
    proxy_headers: Annotated[
        bool,
        typer.Option(
            "--proxy-headers",
            help="Believe X-Forwarded-Proto/For from console.trusted_proxies (behind TLS).",
        ),
    ] = False,
) -> None:
    """Serve the operator console (web pages over the results database and the archive)."""
    import uvicorn

    from defectscan.config import get_settings
    from defectscan.console.app import create_app

    settings = get_settings()
    app = create_app(settings, database_url=db)
    bind_host = host or settings.console.host
    bind_port = port or settings.console.port
    console.print(f"console on http://{bind_host}:{bind_port}/ (log in with a `users add` account)")
    uvicorn.run(
        app,
        host=bind_host,
        port=bind_port,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=",".join(settings.console.trusted_proxies) if proxy_headers else None,
        log_level="warning",
    )


def register(app: typer.Typer) -> None:
    """Add ``users`` and ``console`` to ``app``."""
    app.add_typer(users_app, name="users")
    app.command("console")(console_cmd)
