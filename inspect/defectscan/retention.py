"""Archive retention in a long-lived line monitor: due on a clock that survives restarts.

The monitor process keeps the archive within its line's policy (age, size): a pass is due when
the line's last one is ``every_s`` seconds old. A stamp file per line in the archive's root
remembers it across restarts, so a monitor that is restarted often still prunes, and a fresh
one does not walk the archive at every start. Each pass spares images of reviews not yet used
for training and is recorded as an ``events`` row (``archive_retention``) with what it
removed, so an operator sees that retention runs.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from defectscan.archive import PruneResult
from defectscan.monitor import LineMonitor
from defectscan.store.db import retrying, session_factory
from defectscan.store.operations import record_event
from defectscan.store.training_runs import reviews_for_training

__all__ = ["STAMP", "hand_over_retention", "retention_due", "run_retention"]

logger = logging.getLogger(__name__)

#: The file in the archive's root (``-<line>`` appended) whose modification time is the last
#: retention pass of that line's monitor.
STAMP = ".retention"


def _stamp(monitor: LineMonitor) -> Path:
    # One stamp per line: each line's monitor applies its own line's policy on its own clock.
    assert monitor.archive is not None
    name = STAMP if monitor.line is None else f"{STAMP}-{monitor.line}"
    return Path(monitor.archive.root) / name


def hand_over_retention(monitor: LineMonitor) -> None:
    """The process runs retention (:func:`run_retention`), not the monitor's own hourly timer."""
    monitor.prune_every_s = math.inf


def retention_due(monitor: LineMonitor, *, every_s: float, now: float | None = None) -> bool:
    """Whether the monitor's archive is due for a retention pass."""
    if monitor.archive is None:
        return False
    try:
        last = _stamp(monitor).stat().st_mtime
    except FileNotFoundError:
        return True
    return (time.time() if now is None else now) - last >= every_s


def run_retention(monitor: LineMonitor, *, flow_run_id: str | None = None) -> PruneResult | None:
    """One retention pass over the monitor's archive, recorded as an ``events`` row.

    Returns what it removed; None when the monitor has no archive or the pass failed (logged
    and recorded; retention never stops the line, the next pass is due after the interval).
    """
    archive = monitor.archive
    if archive is None:
        return None
    sessions = session_factory(monitor.engine, write=True)
    stamp = _stamp(monitor)
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()  # stamped first: a pass that fails is not retried at every batch

        def protected(*, session: Session) -> list[str]:
            return [r.inspection.sha256 for r in reviews_for_training(session=session)]

        result = archive.prune(protect=retrying(protected, sessions=sessions, attempts=3))
    except Exception as exc:  # retention must never stop the line
        logger.exception("archive retention failed; it is tried again after the interval")
        _event(
            sessions,
            monitor,
            flow_run_id,
            level="error",
            message=f"archive retention failed: {type(exc).__name__}: {exc}",
            details={"archive": str(archive.root)},
        )
        return None
    message = (
        f"archive retention removed {result.removed} image(s) ({result.freed_bytes} bytes); "
        f"{result.kept} kept ({result.kept_bytes} bytes)"
    )
    logger.info(message)
    _event(
        sessions,
        monitor,
        flow_run_id,
        level="info",
        message=message,
        details={
            "archive": str(archive.root),
            "removed": result.removed,
            "freed_bytes": result.freed_bytes,
            "kept": result.kept,
            "kept_bytes": result.kept_bytes,
        },
    )
    return result


def _event(
    sessions: sessionmaker[Session],
    monitor: LineMonitor,
    flow_run_id: str | None,
    *,
    level: str,
    message: str,
    details: dict[str, object],
) -> None:
    def unit(*, session: Session) -> None:
        record_event(
            session=session,
            kind="archive_retention",
            level=level,
            message=message,
            line=monitor.line,
            flow_run_id=flow_run_id,
            details=details,
        )

    try:
        retrying(unit, sessions=sessions, attempts=3)
    except Exception:  # an event is worth a log line, not a stopped line
        logger.exception("could not record the archive retention event")
