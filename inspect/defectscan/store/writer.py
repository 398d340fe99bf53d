"""A batching results writer: what the CLI, the demo and the line monitor save through.

Records are buffered and written in one transaction per batch with
:func:`~defectscan.store.inspection_writes.save_inspections` (idempotent per delivery: source
identity + sha256, or sha256 + model version without one), retrying transient connection
failures. Sources must acknowledge a record only after the :meth:`ResultWriter.flush` that wrote
it has returned. :meth:`ResultWriter.committed` finds deliveries that come back after their row
was committed, so they are settled instead of inspected again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from defectscan.store.db import retrying, session_factory
from defectscan.store.inspection_writes import (
    CommittedDelivery,
    SaveResult,
    committed_deliveries,
    save_inspections,
)
from defectscan.store.model_versions import ensure_model_version
from defectscan.store.records import InspectionRecord

__all__ = ["ResultWriter"]

logger = logging.getLogger(__name__)


class ResultWriter:
    """Buffer inspection records and write them in batches, with retries."""

    def __init__(self, engine: Engine, *, batch_size: int = 64, attempts: int = 5) -> None:
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ValueError(msg)
        self._sessions = session_factory(engine, write=True)
        self.batch_size = batch_size
        self.attempts = attempts
        self._pending: list[InspectionRecord] = []
        self.inserted = 0
        self.duplicates = 0

    def register_model(self, **model: Any) -> None:
        """Make sure the model version exists (arguments of ``ensure_model_version``)."""

        def unit(*, session: Session) -> None:
            ensure_model_version(session=session, **model)

        retrying(unit, sessions=self._sessions, attempts=self.attempts)

    def committed(self, source_keys: Iterable[str]) -> dict[str, list[CommittedDelivery]]:
        """Rows already committed for these source identities (under any model version).

        Retried like a write: a monitor that cannot tell whether an image was stored must not
        guess, and a database outage is ridden out the same way.
        """
        keys = list(source_keys)
        if not keys:
            return {}

        def unit(*, session: Session) -> dict[str, list[CommittedDelivery]]:
            return committed_deliveries(keys, session=session)

        return retrying(unit, sessions=self._sessions, attempts=self.attempts)

    def add(self, record: InspectionRecord) -> SaveResult | None:
        """Queue one record; writes the batch (and returns its result) when it is full."""
        self._pending.append(record)
        if len(self._pending) >= self.batch_size:
            return self.flush()
        return None

    def write(self, records: Sequence[InspectionRecord]) -> SaveResult:
        """Write ``records`` now, in one transaction (retried as a whole)."""

        def unit(*, session: Session) -> SaveResult:
            return save_inspections(records, session=session)

        result = retrying(unit, sessions=self._sessions, attempts=self.attempts)
        self.inserted += result.inserted
        self.duplicates += result.duplicates
        if result.duplicates:
            logger.info("%d repeated deliveries were already stored", result.duplicates)
        return result

    def flush(self) -> SaveResult:
        """Write what is buffered; on failure the batch stays buffered for the next try."""
        if not self._pending:
            return SaveResult(inserted=0, duplicates=0)
        result = self.write(self._pending)
        self._pending = []
        return result

    def discard(self) -> int:
        """Drop what is buffered (its sources redeliver it); returns how many were dropped."""
        n = len(self._pending)
        self._pending = []
        return n

    @property
    def pending(self) -> int:
        """Records buffered but not yet written."""
        return len(self._pending)
