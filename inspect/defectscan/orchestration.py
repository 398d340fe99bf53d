"""Prefect's environment for defectscan: set before Prefect is first imported.

Without a server (no ``PREFECT_API_URL``) flows run on Prefect's ephemeral API: a temporary
local server whose state lives under ``PREFECT_HOME`` (``var/prefect``), with telemetry off and
Prefect's own INFO chatter (server start, every task state) kept off the terminal, so an
operator sees defectscan's progress. Anything already set in the environment wins: a user
who wants Prefect's logs sets ``PREFECT_LOGGING_LEVEL=INFO``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["configure_prefect", "prefect_server_configured"]

_DONE = False


def prefect_server_configured() -> bool:
    """Whether flows report to a Prefect server (``PREFECT_API_URL`` is set)."""
    return bool(os.environ.get("PREFECT_API_URL"))


def configure_prefect(var_dir: Path | None = None) -> None:
    """Set Prefect's environment defaults (idempotent; call before ``import prefect``)."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    if var_dir is None:
        from defectscan.config import get_settings

        var_dir = get_settings().var_dir
    defaults = {
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
        # The temporary server of the ephemeral API starts in seconds on an idle machine, but
        # far slower on 2 busy cores: Prefect's 20 s default fails a monitor for nothing.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        # Results of our tasks are small summaries; nothing needs persisting.
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    }
    if not prefect_server_configured():
        defaults["PREFECT_HOME"] = str(Path(var_dir, "prefect").resolve())
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "PREFECT_HOME" in os.environ:
        # Prefect creates only the last folder of its home; var/ may not exist yet.
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    if os.environ["PREFECT_SERVER_LOGGING_LEVEL"] == "CRITICAL":
        # The temporary server's pool logs a cancelled connection reset when it stops: noise
        # from Prefect's own database (our engines use the synchronous QueuePool).
        logging.getLogger("sqlalchemy.pool.impl.AsyncAdaptedQueuePool").setLevel(logging.CRITICAL)
