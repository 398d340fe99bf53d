"""CLI commands for operations: ``config check``, ``config show`` and ``health``.

Output is plain text (no rich markup): health lines and config errors are read by people and
by container healthchecks alike, and names such as ``model[line3]`` must print as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["config_app", "register"]

config_app = typer.Typer(no_args_is_help=True, help="Check and show the plant configuration.")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Plant YAML file (default: DEFECTSCAN_CONFIG)."),
]


@config_app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="Plant YAML file to validate.")],
) -> None:
    """Validate a plant file; print every error with its line and key; exit 1 on errors."""
    from defectscan.config import check_config_file

    issues = check_config_file(file)
    for issue in issues:
        where = f"{file}:{issue.line}" if issue.line is not None else str(file)
        typer.echo(f"{where}: {issue.path or '(top level)'}: {issue.message}")
    if issues:
        typer.echo(f"{file}: {len(issues)} error(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{file}: ok")


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML.")] = False,
) -> None:
    """Print the effective configuration (plant file + environment), passwords masked."""
    import yaml

    from defectscan.config import load_settings, settings_file

    settings = load_settings(config)
    data = settings.masked()
    source = config or settings_file()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"# plant file: {source or 'none'}; DEFECTSCAN_* environment variables win")
    typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


def health_cmd(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    check: Annotated[
        list[str] | None,
        typer.Option(
            "--check",
            help="Run only this check (repeatable): database, redis, model, archive, prefect, "
            "lines (each monitor's engine, and whether its backlog grows).",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per network check.")] = 5.0,
) -> None:
    """Check database, Redis, models, archive and Prefect; exit 1 with a reason per failure."""
    from defectscan.config import load_settings
    from defectscan.health import run_checks

    settings = load_settings(config)
    results = run_checks(settings, only=check or None, timeout_s=timeout)
    failed = [r for r in results if not r.ok]
    if as_json:
        doc = {"ok": not failed, "checks": [r.to_dict() for r in results]}
        typer.echo(json.dumps(doc, indent=2))
    else:
        for result in results:
            typer.echo(result.line())
        if not results:
            typer.echo("no checks ran (nothing configured for the requested checks)")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``config`` and ``health`` to the root app."""
    app.add_typer(config_app, name="config", help="Check and show the plant configuration.")
    app.command("health")(health_cmd)
