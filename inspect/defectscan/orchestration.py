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

__all__ = [
    "configure_prefect",
    "crash_orphaned_runs",
    "prefect_server_configured",
    "prefect_server_reachable",
]

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


def prefect_server_reachable(timeout_s: float = 3.0) -> bool:
    """Whether ``PREFECT_API_URL`` is set and its server answers ``/health``."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return False
    from defectscan.health import check_prefect

    return check_prefect(url, timeout_s=timeout_s).ok


def crash_orphaned_runs(deployments: list[str], *, reason: str | None = None) -> list[str]:
    """Mark runs of these deployments (``flow/deployment``) left Running or Pending as Crashed.

    Called when ``defectscan serve`` starts: a serve process that was killed cannot report
    its runs' end, and a run that stays Running holds its deployment's concurrency slot (one
    retrain at a time) forever. Returns the names of the runs marked.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    message = reason or "left running by a defectscan serve process that stopped without ending it"
    marked: list[str] = []
    with get_client(sync_client=True) as client:
        names = []
        for full in deployments:
            try:
                names.append(client.read_deployment_by_name(full).name)
            except ObjectNotFound:
                continue
        if not names:
            return marked
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names)),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(
                        any_=[StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]
                    )
                )
            ),
        )
        for run in runs:
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            logging.getLogger(__name__).warning(
                "flow run %s (%s) was left %s: marked crashed", run.name, run.id, run.state_name
            )
            marked.append(run.name)
    return marked
