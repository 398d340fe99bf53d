"""What every command module shares: the rich consoles, the usage error, input expansion and
the worker thread that keeps signal handling in the main thread.

The command modules import this module and nothing of the assembler (``defectscan.cli``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = [
    "CliUsageError",
    "DbUrlOpt",
    "console",
    "db_session",
    "err_console",
    "expand_inputs",
    "in_worker_thread",
]

console = Console(stderr=False)
err_console = Console(stderr=True, soft_wrap=True)  # error lines stay whole in logs


DbUrlOpt = Annotated[
    str | None, typer.Option("--db", help="Database URL (default: DEFECTSCAN_DATABASE_URL).")
]


class CliUsageError(Exception):
    """A usage error found inside a command (exit status 1), such as a missing input file."""


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files as given, image files inside folders (sorted), and glob patterns, de-duplicated."""
    from defectscan.inputs import InputPathError
    from defectscan.inputs import expand_inputs as expand

    try:
        return expand(patterns)
    except InputPathError as exc:
        raise CliUsageError(str(exc)) from None


def in_worker_thread(fn: Any, **params: Any) -> dict[str, Any]:
    """Run ``fn`` in a worker thread while the main thread keeps the signal handlers.

    Prefect's flow engine replaces the SIGTERM handler of the main thread with one that
    crashes the flow run; from a worker thread it cannot, so a stop request reaches STOP and
    the run ends after the batch in hand, as a completed run.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(**params)
        except BaseException as exc:  # handed to the main thread below
            box["error"] = exc

    worker = threading.Thread(target=target, name="defectscan-monitor", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if "error" in box:
        raise box["error"]
    result: dict[str, Any] = box["result"]
    return result


@contextmanager
def db_session(url: str | None) -> Iterator[Any]:
    """One committed transaction on the migrated database."""
    from defectscan.config import get_settings
    from defectscan.store import make_engine, session_factory, upgrade_to_head

    resolved = url or get_settings().database_url
    upgrade_to_head(resolved)
    engine = make_engine(resolved)
    try:
        with session_factory(engine, write=True)() as session, session.begin():
            yield session
    finally:
        engine.dispose()
