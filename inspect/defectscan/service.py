"""The one inspect-and-store loop: records in, rows committed, sources settled.

``inspect --store``, the demo, the benchmark and every flow go through
:func:`inspect_and_store`::

    records -> Inspector -> (on_result: masks/overlays) -> archive.keep -> ResultWriter
            -> commit -> source.ack(ok) / source.reject(rejected, reason)

The order is the reliability contract (DESIGN §5): an image is archived before its row is
committed and acknowledged only after the commit, so a crash at any point leaves it to be
delivered again. A delivery that comes back after its row was committed (the process died
before the ack, or a folder ``ack`` failed) is recognised *before* inspection by its source
identity (``ImageRecord.source_key``) and sha256, under whatever model version stored it, and
only settled: re-inspection under a new model is an explicit act (``batch``), never a side effect
of a crash. The write is idempotent on the same identity, so two consumers racing for one
entry still store one row, and two parts with identical bytes each get theirs.

Failures are classified (:func:`is_plant_fault`). A batch that fails before its commit is
handed back to the source (``release``); an image's own fault (a crash in a native decoder or
the model on some input) counts as a delivery there, so a poison input ends in quarantine
instead of looping. A fault of the plant (full or read-only volume, database or broker down,
unwritable folder, model that does not fit the line, device out of memory) is handed back with
``charge=False``: the images are not to blame and must never be quarantined for it.

Fault injection (tests only): ``DEFECTSCAN_FAULT=POINT[:N][,POINT[:N]...]`` kills the process
with SIGKILL the N-th time (default: the first) it reaches ``POINT``, to crash it
deterministically in a window of the contract. The points (:data:`FAULT_POINTS`) are
``before_inspect`` (records claimed, nothing inspected), ``after_commit`` (rows committed,
nothing acknowledged) and ``mid_swap`` (a new champion loaded, not yet swapped in; see
:mod:`defectscan.monitor`). Unset, as in production, the points cost one environment lookup.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.exc import SQLAlchemyError

from defectscan.errors import (
    CheckpointError,
    ConfigError,
    DefectscanError,
    ImageDecodeError,
    PlantFault,
    SourceError,
    StoreError,
)
from defectscan.pipeline import InspectionResult, Inspector
from defectscan.sources.base import ImageRecord, Source
from defectscan.store.records import InspectionRecord
from defectscan.store.writer import ResultWriter

if TYPE_CHECKING:
    from defectscan.archive import ImageArchive

__all__ = [
    "FAULT_POINTS",
    "BatchOutcome",
    "MetricsSink",
    "ResultHook",
    "fault_point",
    "inspect_and_store",
    "is_plant_fault",
    "register_model",
]

logger = logging.getLogger(__name__)

#: Called for each result before it is stored; returns (mask_path, overlay_path) or None.
ResultHook = Callable[[InspectionResult], tuple[str | None, str | None] | None]

#: Where ``DEFECTSCAN_FAULT`` can crash the process (see the module docstring).
FAULT_POINTS = ("before_inspect", "after_commit", "mid_swap")
_FAULT_ENV = "DEFECTSCAN_FAULT"
_fault_hits: Counter[str] = Counter()


def _fault_plan(spec: str) -> dict[str, int]:
    plan: dict[str, int] = {}
    for item in spec.split(","):
        name, _, nth = item.strip().partition(":")
        if not name:
            continue
        if name not in FAULT_POINTS or (nth and not nth.isdigit()) or nth == "0":
            msg = (
                f"{_FAULT_ENV}={spec!r}: {item.strip()!r} is not POINT[:N] with POINT one of "
                f"{', '.join(FAULT_POINTS)} and N >= 1; unset {_FAULT_ENV} outside tests"
            )
            raise ConfigError(msg)
        plan[name] = int(nth or 1)
    return plan


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL here when ``DEFECTSCAN_FAULT`` asks for it (tests only)."""
    spec = os.environ.get(_FAULT_ENV)
    if not spec:
        return
    nth = _fault_plan(spec).get(name)
    if nth is None:
        return
    _fault_hits[name] += 1
    if _fault_hits[name] == nth:
        logger.critical("%s=%s: killing process %d at %s", _FAULT_ENV, spec, os.getpid(), name)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


#: errno values of a volume or folder the plant must fix (full, read-only, no permission).
_PLANT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


def is_plant_fault(exc: BaseException) -> bool:
    """True when ``exc`` is a fault of the plant, not of the images the batch held.

    Plant: :class:`~defectscan.errors.PlantFault`, settings or a model that do not fit
    (``ConfigError``, ``CheckpointError``), the database or a source refusing work
    (``StoreError``, ``SourceError``, SQLAlchemy errors), a volume that cannot be written (an
    OS error behind a library error, such as the archive's, or a full, read-only or forbidden
    one), and memory exhausted on the host or the device. Anything else (an exception a native
    library raised on some input) may be the image's: it is charged as a delivery.
    """
    if isinstance(
        exc,
        PlantFault | ConfigError | CheckpointError | StoreError | SourceError | SQLAlchemyError,
    ):
        return True
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _PLANT_ERRNOS
    if (
        isinstance(exc, DefectscanError)
        and not isinstance(exc, ImageDecodeError)
        and isinstance(exc.__cause__, OSError)
    ):
        # Our own errors wrap the OS's when a volume refuses a write (the archive's "cannot
        # write ...: is the archive volume writable and not full?"); image reads never get
        # here (they become rejected rows inside the pipeline).
        return True
    # torch.cuda.OutOfMemoryError (a RuntimeError), or the message older CUDA stacks raise.
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


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

    def observe_plant_fault(self, *, line: str | None, kind: str) -> None: ...

    def set_paused(self, *, line: str | None, paused: bool) -> None: ...

    def set_dead_letter_dropped(self, *, line: str | None, dropped: int) -> None: ...


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
    nothing is stored (``inspect`` without ``--store``). Records from a ``source`` are
    deliveries: each row carries its source identity, and a delivery whose row is already
    committed is settled without being inspected again. When anything fails before a commit,
    the records not yet settled are released back to ``source`` (charging the delivery only
    when the fault may be the images', see :func:`is_plant_fault`) and the error propagates:
    nothing is acknowledged that is not stored.
    """
    outcome = BatchOutcome()
    t0 = time.perf_counter()
    uncommitted: list[InspectionResult] = []
    settled: set[str] = set()
    materialised = list(records) if source is not None else records
    line: str | None = None
    try:
        if source is not None and writer is not None:
            assert isinstance(materialised, list)
            again = _settle_redeliveries(materialised, writer=writer, source=source)
            if again:
                settled.update(again)
                outcome.duplicates += len(again)
                materialised = [r for r in materialised if r.id not in settled]
        if source is not None and materialised:
            fault_point("before_inspect")
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
            if source is not None:
                store_record.source_key = result.record.source_key
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
                fault_point("after_commit")
                _settle(source, uncommitted, outcome, metrics)
                settled.update(r.record.id for r in uncommitted)
                uncommitted = []
        if writer is not None:
            saved = writer.flush()
            outcome.inserted += saved.inserted
            outcome.duplicates += saved.duplicates
            if uncommitted:
                fault_point("after_commit")
        _settle(source, uncommitted, outcome, metrics)
        settled.update(r.record.id for r in uncommitted)
        uncommitted = []
    except BaseException as exc:
        if writer is not None:
            writer.discard()
        if source is not None:
            back = [r for r in materialised if r.id not in settled]
            if back:
                _hand_back(source, back, exc)
        raise
    outcome.seconds = time.perf_counter() - t0
    if metrics is not None and outcome.images:
        metrics.observe_batch(line=line, size=outcome.images, seconds=outcome.seconds)
    return outcome


def _hand_back(source: Source, back: list[ImageRecord], exc: BaseException) -> None:
    """Release unsettled records; a plant fault does not count as a delivery of the images."""
    reason = f"{type(exc).__name__}: {exc}"
    plant = is_plant_fault(exc)
    logger.warning(
        "batch of %d failed before its commit (%s%s); handing it back to %s",
        len(back),
        "plant fault, not charged to the images: " if plant else "",
        reason,
        source.name,
    )
    try:
        if plant:
            source.release(back, reason, charge=False)
        else:
            source.release(back, reason)
    except Exception:  # the source redelivers unsettled records on its own
        logger.exception("could not hand the batch back to %s", source.name)


def _delivery_sha256(record: ImageRecord) -> str | None:
    """The sha256 the pipeline keys this record's row on; None when its bytes cannot be read."""
    try:
        data = record.read()
    except DefectscanError:
        return None
    if not data:
        return None
    return hashlib.sha256(data).hexdigest()


def _settle_redeliveries(
    records: Sequence[ImageRecord], *, writer: ResultWriter, source: Source
) -> list[str]:
    """Settle the records whose delivery is already stored; returns their ids.

    One indexed query per batch finds rows by source identity (any model version); only those
    records are read and hashed, so a first delivery costs no extra read. A record whose bytes
    cannot be read now (a source that marks it poison or refused after more deliveries) is
    matched on its identity alone: the row stored for it stands.
    """
    keyed = {r.source_key: r for r in records if r.source_key}
    if not keyed:
        return []
    found = writer.committed(keyed)
    if not found:
        return []
    ok: list[ImageRecord] = []
    rejected: list[tuple[ImageRecord, str]] = []
    for record in records:
        stored = found.get(record.source_key) if record.source_key else None
        if not stored:
            continue
        sha = _delivery_sha256(record)
        if sha is None:
            # No bytes to compare: the pipeline keyed such a row on the source instead.
            no_bytes = hashlib.sha256(f"no-bytes:{record.uri}".encode()).hexdigest()
            match = next((c for c in stored if c.sha256 == no_bytes), None)
            match = match or next((c for c in stored if c.status == "ok"), stored[0])
        else:
            match = next((c for c in stored if c.sha256 == sha), None)
        if match is None:
            continue  # the source reused an identity for other bytes: a delivery of its own
        if match.status == "ok":
            ok.append(record)
        else:
            rejected.append((record, f"{match.error_kind}: {match.error_message}"))
        logger.info(
            "%s came back after its row was committed (under %s): settled, not inspected again",
            record.uri,
            match.model_version,
        )
    if ok:
        source.ack(ok)
    for record, reason in rejected:
        source.reject(record, reason)
    return [r.id for r in ok] + [r.id for r, _ in rejected]


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
