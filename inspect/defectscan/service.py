"""The one inspect-and-store loop: records in, rows committed, sources settled.

``inspect --store``, the demo, the benchmark and every flow go through
:func:`inspect_and_store`::

    records -> Inspector -> (on_result: masks/overlays) -> archive.keep -> ResultWriter
            -> commit -> source.ack(ok) / source.reject(rejected, reason)

The order is the reliability contract (DESIGN §5): an image is archived before its row is
committed and acknowledged only after the commit, so a crash at any point leaves it to be
delivered again, and the idempotent write (sha256, model version) turns the repeat into a
no-op. A batch that fails before its commit is handed back to the source (``release``) and
counted as a delivery there, so a poison input ends in quarantine instead of looping.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from defectscan.errors import DefectscanError
from defectscan.pipeline import InspectionResult, Inspector
from defectscan.sources.base import ImageRecord, Source
from defectscan.store.records import InspectionRecord
from defectscan.store.writer import ResultWriter

if TYPE_CHECKING:
    from defectscan.archive import ImageArchive

__all__ = [
    "BatchOutcome",
    "MetricsSink",
    "ResultHook",
    "inspect_and_store",
    "register_model",
]

logger = logging.getLogger(__name__)

#: Called for each result before it is stored; returns (mask_path, overlay_path) or None.
ResultHook = Callable[[InspectionResult], tuple[str | None, str | None] | None]


class MetricsSink(Protocol):
    """What the loop reports to (``defectscan.metrics.MonitorMetrics`` implements it)."""

    def observe_result(
        self,
        *,
        line: str | None,
        camera: str | None,
        status: str,
        verdict: str | None,
        error_kind: str | None,
        defect_classes: list[str],
        tiles: int,
        stage_ms: dict[str, float],
        capture_to_commit_s: float | None,
    ) -> None: ...

    def observe_batch(self, *, line: str | None, size: int, seconds: float) -> None: ...

    def set_queue(self, *, line: str | None, waiting: int, pending: int | None = None) -> None: ...

    def set_archive(self, bytes_: int, files: int) -> None: ...

    def set_model(self, *, line: str | None, version: str, engine: str, device: str) -> None: ...


@dataclass
class BatchOutcome:
    """What one call of :func:`inspect_and_store` did."""

    inspected: int = 0
    rejected: int = 0
    failed_parts: int = 0
    tiles: int = 0
    inserted: int = 0
    duplicates: int = 0
    archived: Counter[str] = field(default_factory=Counter)
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    defects_by_class: Counter[str] = field(default_factory=Counter)
    #: Seconds from capture (or arrival) to commit, one per stored image.
    latencies_s: list[float] = field(default_factory=list)
    seconds: float = 0.0
    model_versions: set[str] = field(default_factory=set)

    @property
    def images(self) -> int:
        """Images stored (inspected + rejected)."""
        return self.inspected + self.rejected

    def merge(self, other: BatchOutcome) -> None:
        """Add ``other``'s counts to this one."""
        for name in ("inspected", "rejected", "failed_parts", "tiles", "inserted", "duplicates"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.archived.update(other.archived)
        self.rejected_by_reason.update(other.rejected_by_reason)
        self.defects_by_class.update(other.defects_by_class)
        self.latencies_s.extend(other.latencies_s)
        self.seconds += other.seconds
        self.model_versions |= other.model_versions


def register_model(writer: ResultWriter, inspector: Inspector) -> str:
    """Register the inspector's model version (absolute checkpoint path); returns the version."""
    writer.register_model(**inspector.model_registration())
    return inspector.model_version


def _reason(result: InspectionResult) -> str:
    return f"{result.error_kind}: {result.error_message}"


def _settle(
    source: Source | None,
    committed: list[InspectionResult],
    outcome: BatchOutcome,
    metrics: MetricsSink | None,
) -> None:
    """After a commit: latency, metrics, then ack / reject at the source."""
    now = datetime.now(UTC)
    ok: list[ImageRecord] = []
    for r in committed:
        start = r.record.captured_at or r.received_at
        latency = (now - start).total_seconds() if start is not None else None
        if latency is not None:
            outcome.latencies_s.append(latency)
        if metrics is not None:
            metrics.observe_result(
                line=r.record.line,
                camera=r.record.camera,
                status=r.status,
                verdict=r.verdict,
                error_kind=r.error_kind,
                defect_classes=[d.class_name for d in r.defects],
                tiles=r.tiles,
                stage_ms=dict(r.timings_ms),
                capture_to_commit_s=latency,
            )
        if r.status == "ok":
            ok.append(r.record)
    if source is None:
        return
    if ok:
        source.ack(ok)
    for r in committed:
        if r.status != "ok":
            source.reject(r.record, _reason(r))


def inspect_and_store(
    records: Iterable[ImageRecord],
    *,
    inspector: Inspector,
    writer: ResultWriter | None,
    source: Source | None = None,
    archive: ImageArchive | None = None,
    on_result: ResultHook | None = None,
    metrics: MetricsSink | None = None,
    keep_images: bool = False,
) -> BatchOutcome:
    """Inspect ``records``, store a row for each, archive what the policy keeps, settle them.

    Rows are written in the writer's batches (one transaction each); the records of a batch
    are acknowledged (or rejected) at ``source`` right after its commit; without a writer
    nothing is stored (``inspect`` without ``--store``). When anything fails
    before a commit, the records not yet committed are released back to ``source`` and the
    error propagates: nothing is acknowledged that is not stored.
    """
    outcome = BatchOutcome()
    t0 = time.perf_counter()
    uncommitted: list[InspectionResult] = []
    settled: set[str] = set()
    materialised = list(records) if source is not None else records
    line: str | None = None
    try:
        for result in inspector.inspect(materialised, keep_images=keep_images):
            paths = on_result(result) if on_result is not None else None
            # Frame and class map are not needed past the hook: a batch of large frames must
            # not hold them until its commit.
            result.image = None
            result.class_map = None
            if archive is not None:
                _archive(archive, result, outcome)
            line = line or result.record.line
            mask_path, overlay_path = paths or (None, None)
            store_record: InspectionRecord = result.to_store_record(
                mask_path=mask_path, overlay_path=overlay_path
            )
            _count(result, outcome)
            uncommitted.append(result)
            if writer is None:
                _settle(source, uncommitted, outcome, metrics)
                settled.add(result.record.id)
                uncommitted = []
                continue
            saved = writer.add(store_record)
            if saved is not None:
                outcome.inserted += saved.inserted
                outcome.duplicates += saved.duplicates
                _settle(source, uncommitted, outcome, metrics)
                settled.update(r.record.id for r in uncommitted)
                uncommitted = []
        if writer is not None:
            saved = writer.flush()
            outcome.inserted += saved.inserted
            outcome.duplicates += saved.duplicates
        _settle(source, uncommitted, outcome, metrics)
        settled.update(r.record.id for r in uncommitted)
        uncommitted = []
    except BaseException as exc:
        if writer is not None:
            writer.discard()
        if source is not None:
            assert isinstance(materialised, list)
            back = [r for r in materialised if r.id not in settled]
            if back:
                logger.warning(
                    "batch of %d failed before commit (%s: %s); handing it back to %s",
                    len(back),
                    type(exc).__name__,
                    exc,
                    source.name,
                )
                try:
                    source.release(back, f"{type(exc).__name__}: {exc}")
                except Exception:  # the source redelivers unsettled records on its own
                    logger.exception("could not hand the batch back to %s", source.name)
        raise
    outcome.seconds = time.perf_counter() - t0
    if metrics is not None and outcome.images:
        metrics.observe_batch(line=line, size=outcome.images, seconds=outcome.seconds)
    return outcome


def _count(result: InspectionResult, outcome: BatchOutcome) -> None:
    outcome.model_versions.add(result.model_version)
    if result.status == "ok":
        outcome.inspected += 1
        outcome.tiles += result.tiles
        outcome.failed_parts += result.verdict == "fail"
        outcome.defects_by_class.update(d.class_name for d in result.defects)
    else:
        outcome.rejected += 1
        outcome.rejected_by_reason[result.error_kind or "error"] += 1


def _archive(archive: ImageArchive, result: InspectionResult, outcome: BatchOutcome) -> None:
    reason = archive.policy.reason(
        sha256=result.sha256,
        status=result.status,
        verdict=result.verdict,
        decision_margin=result.decision_margin,
    )
    if reason is None:
        return
    try:
        data = result.record.read()
    except DefectscanError:  # an unreadable or refused input has nothing to keep
        return
    if not data:
        return
    if hashlib.sha256(data).hexdigest() != result.sha256:
        logger.warning("%s changed after it was inspected; not archived", result.record.uri)
        return
    archive.put(data, result.sha256)
    outcome.archived[reason] += 1
