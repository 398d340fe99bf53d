"""The ``defectscan`` command line (typer + rich): the outermost layer.

This module only assembles: it builds the Typer app, adds the root options and registers the
command groups, one module each (``inspect``, ``demo``, ``db``, ``monitor`` and ``enqueue``,
``config`` and ``health``, ``export``, the flows ``batch``/``retrain``/``serve``,
``train``/``eval``, ``models``/``review``, and ``users``/``console``). The command modules
import :mod:`.common`, never this module. :func:`main` maps errors to the documented exit
statuses.

Exit status: 0 when every input was inspected, 2 when some inputs were rejected (the rest are
still inspected), 1 for usage errors (bad options, missing files, unreadable model).
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from defectscan import __version__
from defectscan.cli import (
    db,
    demo,
    drift,
    export,
    flows,
    models,
    monitor,
    ops,
    review,
    training,
    users,
)
from defectscan.cli import inspect as inspect_commands
from defectscan.cli.common import CliUsageError, err_console
from defectscan.errors import DefectscanError

__all__ = ["app", "main"]


app = typer.Typer(
    name="defectscan",
    help="Industrial defect inspection: tiled UNet segmentation, masks, contours, verdicts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"defectscan {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", help="text or json (default: DEFECTSCAN_LOG_FORMAT, text)."),
    ] = None,
) -> None:
    """Inspect images for scratches, cracks and spots with a UNet; train and manage models."""
    from defectscan.logs import configure_logging, resolve_log_format

    if log_format not in (None, "text", "json"):
        msg = f"--log-format must be text or json, not {log_format!r}"
        raise CliUsageError(msg)
    configure_logging(logging.INFO if verbose else logging.WARNING, resolve_log_format(log_format))


# The order here is the order of ``defectscan --help``.
inspect_commands.register(app)
demo.register(app)
app.add_typer(db.db_app, name="db", help="Results database migrations.")
monitor.register(app)
ops.register(app)
export.register(app)
flows.register(app)
training.register(app)
models.register(app)
review.register(app)
users.register(app)
drift.register(app)


def main() -> None:
    """Console-script entry point with the documented exit statuses."""
    try:
        rv = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except CliUsageError as exc:
        err_console.print(f"[red]usage error[/]: {exc}")
        sys.exit(1)
    except typer.TyperException as exc:  # typer's own usage errors (missing option, bad value)
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"[red]usage error[/]: {exc}")
        sys.exit(1)
    except DefectscanError as exc:
        err_console.print(f"[red]error[/]: {exc}")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
