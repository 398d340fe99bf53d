"""CLI commands for operations: ``config check``, ``config show`` and ``health``.

Output is plain text (no rich markup): health lines and config errors are read by people and
by container healthchecks alike, and names such as ``model[line3]`` must print as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

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
    note = _console_thresholds(settings, data)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"# plant file: {source or 'none'}; DEFECTSCAN_* environment variables win")
    typer.echo(f"# {note}")
    typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


def _console_thresholds(settings: Any, data: dict[str, Any]) -> str:
    """Put the console's threshold rules (they override the plant file) into ``data``'s
    lines, each class's origin under ``threshold_origin``; a line saying what was found."""
    from sqlalchemy import select
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from defectscan.store.db import make_engine, session_factory
    from defectscan.store.schema import ThresholdRule

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        if not url.database or not Path(url.database).is_file():
            return "console threshold rules: no database yet; plant file only"
        engine = make_engine(settings.database_url)
    else:
        engine = make_engine(settings.database_url, connect_args={"connect_timeout": 3})
    try:
        with session_factory(engine)() as session:
            rules = list(session.scalars(select(ThresholdRule).order_by(ThresholdRule.version)))
    except SQLAlchemyError as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return f"console threshold rules: database not readable ({reason}); plant file only"
    finally:
        engine.dispose()
    lines = data.setdefault("lines", {})
    for line_cfg in lines.values():
        origins = dict.fromkeys(line_cfg.get("thresholds") or {}, "plant file")
        line_cfg["threshold_origin"] = origins
    for rule in rules:  # ascending versions: the newest wins
        line_cfg = lines.setdefault(rule.line, {"name": rule.line, "thresholds": {}})
        line_cfg.setdefault("thresholds", {})[rule.class_name] = rule.threshold
        line_cfg.setdefault("threshold_origin", {})[rule.class_name] = (
            f"console rule v{rule.version} by {rule.created_by} "
            f"({rule.created_at:%Y-%m-%d %H:%M} UTC): {rule.reason}"
        )
    n = len({(r.line, r.class_name) for r in rules})
    return f"console threshold rules in force: {n} (they override the plant file's thresholds)"


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
