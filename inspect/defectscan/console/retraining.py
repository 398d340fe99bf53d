"""The console's Retrain button goes the way ``defectscan retrain`` goes.

With a Prefect server that answers, the request is submitted to the retrain deployment (the
same parameters and idempotency key as the CLI). Without one, the retrain runs in this process
on a background thread (what ``defectscan retrain --no-prefect`` runs), one at a time; its
training run row, with the requester and the reason, appears at once on the Models page.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from defectscan.archive import ImageArchive
from defectscan.console.deps import ConsoleState
from defectscan.errors import DefectscanError
from defectscan.store.schema import TrainingRun, utcnow

__all__ = ["RetrainRefusedError", "request_retrain"]

logger = logging.getLogger(__name__)


class RetrainRefusedError(DefectscanError):
    """A retrain is already running here."""

    kind = "retrain"


def _submit(params: dict[str, Any]) -> str:
    from flows.serve import RETRAIN_DEPLOYMENT
    from prefect.deployments import run_deployment

    from defectscan.cli.flows import retrain_key

    run = run_deployment(
        RETRAIN_DEPLOYMENT,
        parameters=params,
        idempotency_key=retrain_key(params["requested_by"], params["reason"], None),
        timeout=0,
        as_subflow=False,
    )
    return f"submitted to Prefect as flow run {getattr(run, 'name', '')}"


def request_retrain(st: ConsoleState, *, requested_by: str, reason: str) -> str:
    """Start a retrain for ``requested_by`` because of ``reason``; what happened, in words."""
    from defectscan.orchestration import prefect_server_reachable

    params = {"trigger": "operator", "requested_by": requested_by, "reason": reason, "data": None}
    if prefect_server_reachable():
        return _submit(params)
    running = st.jobs.get("retrain")
    if running is not None and running.is_alive():
        msg = "a retrain started from this console is still running; wait for it to finish"
        raise RetrainRefusedError(msg)
    from defectscan.training.retrain import RetrainError, RetrainRequest, run_retrain

    settings = st.settings
    request = RetrainRequest(trigger="operator", requested_by=requested_by, reason=reason)
    if settings.retrain_recipe:
        request = replace(request, recipe={**settings.retrain_recipe})
    started = threading.Event()

    def work() -> None:
        started.set()
        try:
            run_retrain(
                request,
                engine=st.engine,
                var_dir=settings.var_dir,
                archive=ImageArchive(settings.archive_dir or settings.var_dir / "archive"),
                base=settings.retrain_data,
                device=settings.device,
            )
        except RetrainError as exc:
            logger.warning("retrain requested by %s failed: %s", requested_by, exc)
        except Exception:
            logger.exception("retrain requested by %s crashed", requested_by)

    asked_at = utcnow() - timedelta(seconds=1)
    thread = threading.Thread(target=work, name="console-retrain", daemon=True)
    st.jobs["retrain"] = thread
    thread.start()
    started.wait(5)
    # The run's row (requester, reason, status) is written as the retrain starts: wait for it,
    # so that the Models page the operator lands on shows the run.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with st.read() as session:
            run_id = session.scalar(
                select(TrainingRun.id).where(
                    TrainingRun.requested_by == requested_by,
                    TrainingRun.reason == reason,
                    TrainingRun.created_at >= asked_at,
                )
            )
        if run_id is not None:
            return f"retrain started on this console's machine as training run {run_id}"
        if not thread.is_alive():
            break
        time.sleep(0.1)
    return "retrain started on this console's machine (no Prefect server answers)"
