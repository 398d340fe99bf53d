"""What the operator console set for a line, as a monitor reads it between batches.

- **Pause** (``line_controls``): a paused line claims nothing (what it holds is finished and
  acknowledged first, since this is read between batches) and claims again where it stopped
  once resumed; the monitor reports it in its stats and on ``defectscan_line_paused``.
- **Threshold rules** (``threshold_rules``): the newest rule of each class overrides the plant
  file's ``lines.<line>.thresholds``, the way a new champion replaces the model: from the next
  batch on, and again on every newly loaded model. A rule naming a class the model does not
  have is refused with an event and the plant file's rule stays.

The database is read at most every ``poll_s`` seconds; when it cannot be read the last known
state holds (the line neither stops nor starts because of an outage).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from defectscan.config import LineConfig
from defectscan.errors import ConfigError, StoreError
from defectscan.pipeline import Inspector
from defectscan.postprocess import PostprocessConfig
from defectscan.store.db import retrying
from defectscan.store.line_rules import effective_thresholds, line_paused

__all__ = ["ConsoleControls"]

logger = logging.getLogger(__name__)

EventFn = Callable[[str, str, str, str | None, dict[str, Any]], None]


class ConsoleControls:
    """The console's pause flag and threshold rules for ``line``, polled between batches."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        line: str,
        *,
        base: LineConfig | None,
        event: EventFn,
        poll_s: float = 2.0,
    ) -> None:
        self.sessions = sessions
        self.line = line
        self.base = base or LineConfig(name=line)
        self.event = event
        self.poll_s = poll_s
        self.paused = False
        self.paused_by: str | None = None
        #: class -> (threshold, rule version) in force from the console (empty: the plant file)
        self.rules: dict[str, tuple[float, int]] = {}
        self._read_at = float("-inf")
        self._applied: tuple[int, tuple[tuple[str, float, int], ...]] | None = None

    def _read(self) -> tuple[bool, str | None, dict[str, tuple[float, int]]]:
        def unit(*, session: Session) -> tuple[bool, str | None, dict[str, tuple[float, int]]]:
            from defectscan.store.schema import LineControl

            row = session.get(LineControl, self.line)
            rules = effective_thresholds(self.line, session=session)
            return (
                line_paused(self.line, session=session),
                row.changed_by if row else None,
                {c: (r.threshold, r.version) for c, r in rules.items()},
            )

        return retrying(unit, sessions=self.sessions, attempts=2)

    def poll(self, inspector: Inspector, *, flow_run_id: str | None = None) -> bool:
        """Read the console's state (at most every ``poll_s``), apply new rules to
        ``inspector``; True while the line is paused."""
        now = time.monotonic()
        if now - self._read_at >= self.poll_s:
            self._read_at = now
            try:
                paused, by, rules = self._read()
            except (SQLAlchemyError, StoreError) as exc:
                logger.debug("console controls unreadable (%s); keeping the last state", exc)
            else:
                if paused != self.paused:
                    what = "paused" if paused else "resumed"
                    message = f"monitor {what} by the console ({by or 'unknown'})"
                    logger.warning(message) if paused else logger.info(message)
                    self.event(f"monitor_{what}", message, "info", flow_run_id, {"by": by})
                self.paused, self.paused_by = paused, by
                self.rules = rules
        self._apply(inspector, flow_run_id)
        return self.paused

    def _apply(self, inspector: Inspector, flow_run_id: str | None) -> None:
        key = (id(inspector), tuple(sorted((c, t, v) for c, (t, v) in self.rules.items())))
        if key == self._applied:
            return
        self._applied = key
        thresholds = {**self.base.thresholds, **{c: t for c, (t, _) in self.rules.items()}}
        cfg = self.base.model_copy(update={"thresholds": thresholds})
        try:
            PostprocessConfig.from_spec(inspector.spec, cfg)
        except ConfigError as exc:
            message = f"console threshold rule refused for line {self.line!r}: {exc}"
            logger.error(message)
            self.event("threshold_refused", message, "error", flow_run_id, {})
            cfg = self.base
        if inspector.lines.get(self.line) == cfg:
            return
        inspector.set_line_config(self.line, cfg)
        if self.rules:
            shown = ", ".join(f"{c} {t:.3f} (v{v})" for c, (t, v) in sorted(self.rules.items()))
            message = f"thresholds from the console in force on {self.line}: {shown}"
            logger.info(message)
            self.event(
                "threshold_applied",
                message,
                "info",
                flow_run_id,
                {"rules": {c: {"threshold": t, "version": v} for c, (t, v) in self.rules.items()}},
            )
