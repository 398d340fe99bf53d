"""The model a line monitor inspects with, and the switch to a newly promoted champion.

:class:`ModelProvider` holds the running :class:`~defectscan.pipeline.Inspector` and, when it
follows ``champion``, polls the registry between batches for one model name (``champion:NAME``,
or the one name that has a champion when it starts: promoting another product's model never
switches a line onto it). A new champion is loaded beside the running model and swapped in only
when it loaded, its weights match the registry and its classes fit the line's rules; otherwise
it is refused with an ``events`` row and the running model stays. A poll that cannot reach the
database is skipped: the line keeps inspecting while the writer rides out the outage.
:func:`inspector_loader` and :func:`line_loader` build the inspectors it loads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from defectscan.errors import ConfigError, DefectscanError, StoreError
from defectscan.pipeline import Inspector
from defectscan.service import fault_point
from defectscan.store.db import retrying
from defectscan.store.model_versions import get_champion, list_model_versions
from defectscan.store.operations import record_event

__all__ = [
    "InspectorLoader",
    "ModelProvider",
    "inspector_loader",
    "line_loader",
    "parse_model_ref",
]

logger = logging.getLogger(__name__)

InspectorLoader = Callable[[str], Inspector]


def parse_model_ref(model: str) -> tuple[str, str | None]:
    """``("champion", name|None)`` for ``champion``/``champion:NAME``, else ``("file", path)``."""
    if model == "champion":
        return "champion", None
    if model.startswith("champion:"):
        return "champion", model.split(":", 1)[1] or None
    return "file", model


class ModelProvider:
    """The model the monitor inspects with, and the switch to a newly promoted champion.

    With a file, the model never changes. With ``champion`` the registry is polled every
    ``poll_s`` seconds between batches, for one model name only: ``champion:NAME``, or for a
    plain ``champion`` the name whose champion the monitor started with (several names with a
    champion and no name chosen is a :class:`ConfigError`: promoting another product's model
    must never switch this line onto it). A new champion is loaded *beside* the running model
    and swapped in only once it loaded, its weights match the registry and its classes fit the
    line's rules. When that fails, the old model keeps running, the failure is logged and
    recorded as an event (``model_load_failed`` or ``model_refused``), and that version is not
    tried again until ``retry_s`` has passed. A poll that cannot reach the database is skipped
    (the writer rides out the outage; the poll must not stop the line meanwhile).
    """

    def __init__(
        self,
        model: str,
        *,
        load: InspectorLoader,
        sessions: sessionmaker[Session],
        line: str | None = None,
        poll_s: float = 5.0,
        retry_s: float = 300.0,
        poll_attempts: int = 2,
    ) -> None:
        self.kind, self.ref = parse_model_ref(model)
        self._load = load
        self._sessions = sessions
        self.line = line
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.poll_attempts = poll_attempts
        self._checked = 0.0
        self._failed: dict[str, float] = {}
        self._poll_failing = False
        self.inspector = self._initial()
        self.switches = 0

    def _champion(self, *, attempts: int = 8) -> tuple[str, str, str] | None:
        def unit(*, session: Session) -> tuple[str, str, str] | None:
            mv = get_champion(session=session, name=self.ref)
            if mv is None:
                return None
            return mv.version, mv.checkpoint_path or "", mv.sha256

        return retrying(unit, sessions=self._sessions, attempts=attempts)

    def _pin_name(self) -> None:
        """A plain ``champion`` follows the one model name that has a champion now."""

        def unit(*, session: Session) -> list[str]:
            champions = list_model_versions(session=session, status="champion")
            return sorted({mv.name for mv in champions})

        names = retrying(unit, sessions=self._sessions)
        if len(names) > 1:
            where = f"line {self.line!r}" if self.line else "it"
            msg = (
                f"several models have a champion ({', '.join(names)}) and plain 'champion' "
                f"does not say which one {where} should use: set the line's model to "
                f"champion:NAME in the plant file, or pass --model champion:{names[0]}"
            )
            raise ConfigError(msg)
        if names:
            self.ref = names[0]
            logger.info("following the champion of model %r", self.ref)

    def _fits(self, inspector: Inspector) -> None:
        """Raise :class:`ConfigError` unless the model's classes fit the line's rules."""
        inspector.postprocess_config(self.line)

    def _initial(self) -> Inspector:
        if self.kind == "file":
            assert self.ref is not None
            if not Path(self.ref).is_file():
                msg = f"model file {self.ref} does not exist; pass --model FILE or champion"
                raise ConfigError(msg)
            inspector = self._load(self.ref)
            self._fits_or_close(inspector, what=f"model file {self.ref}")
            return inspector
        if self.ref is None:
            self._pin_name()
        found = self._champion()
        if found is None:
            named = f" named {self.ref!r}" if self.ref else ""
            msg = (
                f"there is no champion model{named} in the registry yet: promote one "
                "(`defectscan models promote VERSION`) or pass --model FILE"
            )
            raise StoreError(msg)
        version, path, sha = found
        inspector = self._load(path)
        if inspector.checkpoint is not None and inspector.checkpoint.sha256 != sha:
            inspector.close()
            msg = f"checkpoint {path} no longer holds the weights of champion {version}"
            raise StoreError(msg)
        self._fits_or_close(inspector, what=f"champion {version}")
        self._checked = time.monotonic()
        return inspector

    def _fits_or_close(self, inspector: Inspector, *, what: str) -> None:
        try:
            self._fits(inspector)
        except ConfigError as exc:
            inspector.close()
            msg = f"{what} does not fit line {self.line!r}: {exc}"
            raise ConfigError(msg) from None

    def refresh(self, *, flow_run_id: str | None = None) -> bool:
        """Between batches: switch to a new champion if there is one; True when switched."""
        if self.kind != "champion" or time.monotonic() - self._checked < self.poll_s:
            return False
        self._checked = time.monotonic()
        try:
            found = self._champion(attempts=self.poll_attempts)
        except (SQLAlchemyError, StoreError) as exc:
            # The database is away: keep inspecting with the model in hand (the writer waits
            # for the database on its own) and look again at the next poll.
            if not self._poll_failing:
                logger.warning(
                    "champion poll: the registry is unreachable (%s: %s); still inspecting "
                    "with %s, polling again every %.0f s",
                    type(exc).__name__,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                    self.inspector.model_version,
                    self.poll_s,
                )
            self._poll_failing = True
            return False
        if self._poll_failing:
            logger.info("champion poll: the registry answers again")
            self._poll_failing = False
        if found is None or found[0] == self.inspector.model_version:
            return False
        version, path, sha = found
        failed_at = self._failed.get(version)
        if failed_at is not None and time.monotonic() - failed_at < self.retry_s:
            return False
        old = self.inspector.model_version
        try:
            candidate = self._load(path)
        except (DefectscanError, OSError, RuntimeError, ValueError) as exc:
            self._refuse(
                version, old, "model_load_failed", "could not be loaded", exc, path, flow_run_id
            )
            return False
        try:
            if candidate.checkpoint is not None and candidate.checkpoint.sha256 != sha:
                msg = f"{path} does not hold the weights registered for {version}"
                raise StoreError(msg)
        except StoreError as exc:
            candidate.close()
            self._refuse(
                version, old, "model_load_failed", "could not be loaded", exc, path, flow_run_id
            )
            return False
        try:
            self._fits(candidate)
        except ConfigError as exc:
            candidate.close()
            self._refuse(
                version, old, "model_refused", "does not fit the line", exc, path, flow_run_id
            )
            return False
        fault_point("mid_swap")
        previous, self.inspector = self.inspector, candidate
        previous.close()
        self.switches += 1
        message = f"switched from {old} to new champion {version}"
        logger.info(message)
        self._event("model_switch", message, "info", version, flow_run_id, {"previous": old})
        return True

    def _refuse(
        self,
        version: str,
        old: str,
        kind: str,
        why: str,
        exc: BaseException,
        path: str,
        flow_run_id: str | None = None,
    ) -> None:
        self._failed[version] = time.monotonic()
        message = (
            f"new champion {version} {why} ({type(exc).__name__}: {exc}); "
            f"still inspecting with {old}"
        )
        logger.error(message)
        self._event(kind, message, "error", version, flow_run_id, {"path": path})

    def _event(
        self,
        kind: str,
        message: str,
        level: str,
        version: str,
        flow_run_id: str | None,
        details: dict[str, Any],
    ) -> None:
        def unit(*, session: Session) -> None:
            record_event(
                session=session,
                kind=kind,
                level=level,
                message=message,
                line=self.line,
                model_version=version,
                flow_run_id=flow_run_id,
                details=details,
            )

        try:
            retrying(unit, sessions=self._sessions, attempts=3)
        except Exception:  # an event is worth a log line, not a stopped line
            logger.exception("could not record %s event", kind)


def inspector_loader(
    *,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    tile_size: int | None = None,
    overlap: int | None = None,
    infer_batch: int = 8,
    fast_start: bool = False,
) -> InspectorLoader:
    """A function that builds an :class:`Inspector` for a checkpoint path with these options.

    ``fast_start``: ``auto`` takes only engines already in the cache (eager torch when there
    is none) and exports nothing before the first image; a monitor's
    :class:`~defectscan.engine_upgrade.EngineUpgrader` does the rest in the background.
    """
    from defectscan.config import get_settings

    settings = get_settings()

    def load(path: str) -> Inspector:
        return Inspector.from_checkpoint(
            path,
            backend=backend,  # type: ignore[arg-type]
            device=device,
            precision=precision,  # type: ignore[arg-type]
            tile_size=tile_size,
            overlap=overlap,
            batch_size=infer_batch,
            max_pixels=settings.max_pixels,
            lines=settings.lines,
            cached_only=fast_start,
        )

    return load


def line_loader(line: str | None, *, fast_start: bool = False) -> InspectorLoader:
    """The loader a line's configuration describes (engine, device, precision, tiling)."""
    from defectscan.config import get_settings

    settings = get_settings()
    engine = settings.engine_for(line)
    tile_size, overlap = settings.tiling_for(line)
    return inspector_loader(
        backend=engine.backend,
        device=engine.device,
        precision=engine.precision,
        tile_size=tile_size,
        overlap=overlap,
        infer_batch=engine.batch_size,
        fast_start=fast_start,
    )
