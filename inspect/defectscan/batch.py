"""Batch inspection of a lot: a folder or glob, a list of archived images, or a query.

A lot goes through the one inspect-and-store loop (:func:`defectscan.service.inspect_and_store`),
so a re-run of the same lot under the same model writes nothing twice (batch rows are unique
on ``(sha256, model version)``). What a quality engineer reads comes from the batch rows of
the lot (a monitor's rows of the same images, keyed on their delivery, are not counted), not
from the run's own counters, so the report of a re-run equals the first one:

- per-class defect counts and the share of parts with each class,
- the defect rate (failed parts / inspected parts) by camera,
- the worst parts (most defect area, then highest score) with overlay thumbnails,
- rejected inputs with their reasons, and references that could not be found at all,
- what the batch could not see: stored parts whose image bytes are not kept (the archive keeps
  every failed part but only a sample of passes) are counted apart, by their stored verdict,
  and left out of every rate; each rate carries the number of parts it is computed on.

Images are streamed: a lot's references are resolved first (no bytes), then read and inspected
a chunk at a time, so a lot of 10,000 archived images never sits in memory at once.

Inputs:

- ``paths``: files, folders (their images, sorted) and glob patterns; read, never moved.
- ``sha256``: images kept in the archive (:mod:`defectscan.archive`).
- a query (``query_line``, ``camera``, ``since``, ``until``, ``verdict``): images already
  inspected, read back from the archive (or their file, if it still holds the same bytes)
  and inspected again under the model in use (by default the registry's champion).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, selectinload

from defectscan.archive import ArchiveError, ArchivePolicy, ImageArchive
from defectscan.batch_records import BatchReport, MissingInput, NotKept, PartRow
from defectscan.engine_upgrade import CalibrationPool, EngineOptions, calibration_pool_for
from defectscan.errors import DefectscanError
from defectscan.inputs import IMAGE_SUFFIXES, InputPathError, expand_inputs
from defectscan.pipeline import InspectionResult, Inspector
from defectscan.report import class_table, summary_markdown
from defectscan.service import BatchOutcome, inspect_and_store, register_model
from defectscan.sources.base import ImageRecord
from defectscan.store.db import session_factory
from defectscan.store.schema import Inspection, ModelVersion
from defectscan.store.writer import ResultWriter

__all__ = [
    "IMAGE_SUFFIXES",
    "BatchInputError",
    "BatchReport",
    "BatchSelection",
    "Lot",
    "MissingInput",
    "NotKept",
    "PartRow",
    "class_table",
    "collect_records",
    "inspect_lot",
    "parse_time",
    "run_batch",
    "summary_markdown",
]

logger = logging.getLogger(__name__)

_THUMB = 320
_SHA = re.compile(r"^[0-9a-f]{64}$")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class BatchInputError(DefectscanError):
    """A batch was given nothing to inspect, or inputs that do not exist."""

    kind = "batch_input"


def parse_time(value: str | datetime | None, *, now: datetime | None = None) -> datetime | None:
    """An aware datetime from ISO 8601 text (UTC when it has no zone) or ``24h``/``7d`` ago."""
    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value
    text = value.strip()
    m = _RELATIVE.match(text)
    if m:
        return (now or datetime.now(UTC)) - timedelta(seconds=float(m[1]) * _UNITS[m[2]])
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        msg = f"time {value!r}: give ISO 8601 (2026-01-31T06:00) or an age such as 8h, 2d"
        raise BatchInputError(msg) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class BatchSelection:
    """What a batch inspects: paths, archived sha256s and/or a query over past inspections."""

    paths: tuple[str, ...] = ()
    sha256: tuple[str, ...] = ()
    query_line: str | None = None
    camera: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    verdict: str | None = None
    limit: int = 10_000

    @property
    def has_query(self) -> bool:
        """Whether past inspections are selected by a query."""
        return any(
            v is not None for v in (self.query_line, self.since, self.until, self.verdict)
        ) or (self.camera is not None and not self.paths and not self.sha256)

    def describe(self) -> str:
        """One line for titles and logs."""
        parts = []
        if self.paths:
            parts.append(", ".join(self.paths[:3]) + (" ..." if len(self.paths) > 3 else ""))
        if self.sha256:
            parts.append(f"{len(self.sha256)} archived image(s)")
        if self.has_query:
            q = [
                f"{k}={v.isoformat() if isinstance(v, datetime) else v}"
                for k, v in (
                    ("line", self.query_line),
                    ("camera", self.camera),
                    ("since", self.since),
                    ("until", self.until),
                    ("verdict", self.verdict),
                )
                if v is not None
            ]
            parts.append("inspections where " + " ".join(q))
        return "; ".join(parts) or "nothing"


# --------------------------------------------------------------------------- inputs


def _expand(patterns: Sequence[str]) -> list[Path]:
    try:
        return expand_inputs(patterns)
    except InputPathError as exc:
        raise BatchInputError(str(exc)) from None


def _file_of(uri: str) -> Path | None:
    from urllib.parse import unquote, urlparse
    from urllib.request import url2pathname

    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(unquote(parsed.path)))
    return None


def _bytes_of(
    sha256: str, uri: str | None, archive: ImageArchive | None
) -> tuple[bytes | None, str]:
    """The image with this sha256: from the archive, else from its file if unchanged."""
    if archive is not None and archive.has(sha256):
        try:
            return archive.get(sha256), ""
        except ArchiveError as exc:
            return None, str(exc)
    path = _file_of(uri) if uri else None
    if path is not None and path.is_file():
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == sha256:
            return data, ""
        return None, f"{path} holds other bytes now and the archive does not keep {sha256[:12]}"
    return None, f"image {sha256[:12]} is neither in the archive nor at its source ({uri or '-'})"


@dataclass(frozen=True)
class _Stored:
    """An image selected by sha256 or query, before its bytes are read."""

    sha256: str
    uri: str
    source_uri: str | None
    camera: str | None
    line: str | None
    captured_at: datetime | None
    #: ``pass``/``fail`` or ``rejected``: how its latest stored inspection ended (None: never).
    stored: str | None


@dataclass
class Lot:
    """What a selection resolved to: files, stored images (bytes read when streamed) and
    references that could not be resolved; ``not_kept`` fills while :meth:`chunks` runs."""

    paths: list[Path] = field(default_factory=list)
    stored: list[_Stored] = field(default_factory=list)
    missing: list[MissingInput] = field(default_factory=list)
    not_kept: list[NotKept] = field(default_factory=list)
    line: str | None = None
    camera: str | None = None
    #: Every reference of the selection: files, stored images and unresolved ones.
    selected: int = 0

    def records(self, archive: ImageArchive | None) -> Iterator[ImageRecord]:
        """The lot's records one at a time: a file's bytes are read when it is inspected, a
        stored image's when it is yielded; an image whose bytes are not kept is noted in
        ``not_kept`` and skipped."""
        for path in self.paths:
            yield ImageRecord.from_path(path, camera=self.camera, line=self.line)
        for ref in self.stored:
            data, why = _bytes_of(ref.sha256, ref.source_uri, archive)
            if data is None:
                if ref.stored is None:  # never inspected here, and not in the archive
                    self.missing.append(MissingInput(ref.uri, why))
                else:
                    self.not_kept.append(NotKept(ref.uri, ref.sha256, ref.stored, why))
                continue
            yield ImageRecord(
                id=f"sha256:{ref.sha256}",
                uri=ref.uri,
                data=data,
                camera=ref.camera,
                line=ref.line,
                captured_at=ref.captured_at,
                source="batch",
            )

    def chunks(self, archive: ImageArchive | None, size: int = 32) -> Iterator[list[ImageRecord]]:
        """:meth:`records` in lists of at most ``size``: never the whole lot in memory."""
        chunk: list[ImageRecord] = []
        for record in self.records(archive):
            chunk.append(record)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _stored_verdict(row: Inspection) -> str | None:
    return "rejected" if row.status != "ok" else row.verdict


def collect_records(
    selection: BatchSelection,
    *,
    session: Session | None,
    line: str | None = None,
    camera: str | None = None,
) -> Lot:
    """The selection resolved to a :class:`Lot` (no image bytes are read here).

    Records from paths carry ``line``/``camera`` as given; records from the archive or a query
    keep the line and camera of their latest inspection.
    """
    lot = Lot(paths=_expand(selection.paths), line=line, camera=camera)
    wanted: dict[str, Inspection | None] = {}
    for sha in selection.sha256:
        sha = sha.strip().lower()
        if not _SHA.match(sha):
            lot.missing.append(MissingInput(sha, "not a sha256 (64 hex digits)"))
            continue
        wanted.setdefault(sha, None)
    if session is not None and wanted:
        for known in session.scalars(
            select(Inspection)
            .where(Inspection.sha256.in_(list(wanted)))
            .order_by(Inspection.finished_at)
        ):
            wanted[known.sha256] = known
    if selection.has_query:
        if session is None:
            msg = "a query over past inspections needs the results database"
            raise BatchInputError(msg)
        for found in _query(selection, session):
            wanted[found.sha256] = found
    for sha, row in wanted.items():
        if row is None:
            lot.stored.append(_Stored(sha, f"archive:{sha}", None, camera, line, None, None))
            continue
        lot.stored.append(
            _Stored(
                sha,
                row.uri,
                row.uri,
                row.camera,
                row.line,
                row.captured_at,
                _stored_verdict(row),
            )
        )
    lot.selected = len(lot.paths) + len(lot.stored) + len(lot.missing)
    if not lot.selected:
        msg = f"the batch selects no images ({selection.describe()})"
        raise BatchInputError(msg)
    return lot


def _query(selection: BatchSelection, session: Session) -> list[Inspection]:
    stmt = select(Inspection)
    if selection.query_line is not None:
        stmt = stmt.where(Inspection.line == selection.query_line)
    if selection.camera is not None:
        stmt = stmt.where(Inspection.camera == selection.camera)
    if selection.since is not None:
        stmt = stmt.where(Inspection.finished_at >= selection.since)
    if selection.until is not None:
        stmt = stmt.where(Inspection.finished_at < selection.until)
    if selection.verdict == "rejected":
        stmt = stmt.where(Inspection.status == "rejected")
    elif selection.verdict is not None:
        if selection.verdict not in ("pass", "fail"):
            msg = f"verdict {selection.verdict!r}: use pass, fail or rejected"
            raise BatchInputError(msg)
        stmt = stmt.where(Inspection.verdict == selection.verdict)
    stmt = stmt.order_by(Inspection.finished_at.desc()).limit(selection.limit)
    return list(reversed(list(session.scalars(stmt))))


# --------------------------------------------------------------------------- the run


def _thumbnail(result: InspectionResult, folder: Path, class_names: Sequence[str]) -> str | None:
    from defectscan.report import overlay, write_png

    if result.status != "ok" or result.image is None or result.class_map is None:
        return None
    picture = overlay(result.image, result.class_map, result.defects, class_names)
    h, w = picture.shape[:2]
    scale = min(1.0, _THUMB / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
    path = write_png(folder / f"{result.sha256[:16]}.png", np.ascontiguousarray(picture))
    return str(path)


def run_batch(
    selection: BatchSelection,
    *,
    inspector: Inspector,
    engine: Engine,
    report_dir: Path,
    archive: ImageArchive | None = None,
    line: str | None = None,
    camera: str | None = None,
    title: str | None = None,
    chunk_size: int = 16,
    calibration: CalibrationPool | None = None,
) -> BatchReport:
    """Inspect a lot, store one row per image (idempotent), write the HTML report.

    ``calibration``: the model's INT8 calibration pool, offered each inspected image (a
    bounded, stratified sample is kept: see :mod:`defectscan.engine_upgrade`).

    Images are streamed ``chunk_size`` at a time. Stored images whose bytes are not kept
    (the archive keeps every failed part but only a sample of passes) cannot be re-inspected:
    they are counted apart (``not_kept``) and stay out of every rate."""
    from defectscan.report import batch_report_html

    started = datetime.now(UTC)
    report_dir = Path(report_dir)
    thumbs = report_dir / "overlays"
    sessions = session_factory(engine, write=True)
    with sessions() as session:
        lot = collect_records(selection, session=session, line=line, camera=camera)
    writer = ResultWriter(engine, batch_size=chunk_size)
    register_model(writer, inspector)
    names = list(inspector.spec.class_names)
    thumb_of: dict[str, str] = {}
    seen: list[str] = []

    def draw(result: InspectionResult) -> tuple[str | None, str | None]:
        seen.append(result.sha256)
        if calibration is not None and result.status == "ok":
            stratum = calibration.stratum(result.record.camera, result.verdict)
            try:
                calibration.offer(stratum, result.sha256, result.record.read)
            except Exception as exc:  # a calibration sample is never worth the lot
                logger.warning("calibration sample of %s not kept: %s", result.record.uri, exc)
        path = _thumbnail(result, thumbs, names)
        if path is not None:
            thumb_of[result.sha256] = path
        return None, path

    outcome = BatchOutcome()
    # A chunk at a time: image bytes are read as their chunk comes, never the whole lot.
    for chunk in lot.chunks(archive, size=chunk_size):
        outcome.merge(
            inspect_and_store(
                chunk,
                inspector=inspector,
                writer=writer,
                archive=archive,
                on_result=draw,
                keep_images=True,
            )
        )
    with sessions() as session:
        parts = _parts(session, list(dict.fromkeys(seen)), inspector.model_version)
    for p in parts:
        p.thumbnail = thumb_of.get(p.sha256)
    report = BatchReport(
        title=title or f"batch inspection: {selection.describe()}",
        selection=selection.describe(),
        model_version=inspector.model_version,
        class_names=names,
        started_at=started,
        finished_at=datetime.now(UTC),
        inputs=lot.selected,
        inserted=outcome.inserted,
        duplicates=outcome.duplicates,
        parts=parts,
        missing=lot.missing,
        not_kept=lot.not_kept,
    )
    report.report_path = batch_report_html(report, report_dir / "report.html")
    logger.info(
        "batch %s: %d parts, %d failed, %d rejected, %d not kept, %d missing; report %s",
        report.selection,
        len(parts),
        report.failed,
        len(report.rejected),
        len(lot.not_kept),
        len(lot.missing),
        report.report_path,
    )
    return report


def _parts(session: Session, shas: Sequence[str], model_version: str) -> list[PartRow]:
    """The batch rows of ``shas`` under ``model_version``, in the order given.

    Only rows without a source identity: a monitor's row of the same image under the same
    model (keyed on its delivery) is not part of the batch and would count the part twice.
    """
    if not shas:
        return []
    rows: list[Inspection] = []
    for start in range(0, len(shas), 500):
        rows += session.scalars(
            select(Inspection)
            .join(ModelVersion, Inspection.model_version_id == ModelVersion.id)
            .where(
                ModelVersion.version == model_version,
                Inspection.source_key.is_(None),
                Inspection.sha256.in_(list(shas[start : start + 500])),
            )
            .options(selectinload(Inspection.defects))
        ).all()
    order = {s: i for i, s in enumerate(shas)}
    out = []
    for row in sorted(rows, key=lambda r: order.get(r.sha256, 0)):
        classes = Counter(d.class_name for d in row.defects)
        out.append(
            PartRow(
                sha256=row.sha256,
                uri=row.uri,
                camera=row.camera,
                line=row.line,
                status=row.status,
                verdict=row.verdict,
                n_defects=len(row.defects),
                defect_area=sum(d.area for d in row.defects),
                max_score=max((d.max_score for d in row.defects), default=0.0),
                classes=dict(classes),
                error_kind=row.error_kind,
                error_message=row.error_message,
            )
        )
    return out


def inspect_lot(
    selection: BatchSelection,
    *,
    model: str = "champion",
    line: str | None = None,
    camera: str | None = None,
    report_dir: Path | None = None,
    title: str | None = None,
    database_url: str | None = None,
) -> BatchReport:
    """:func:`run_batch` with everything else from the settings (what the flow calls).

    ``model`` is a checkpoint file or ``champion[:NAME]``; the line's engine, tiling and
    archive policy apply. The database must be at the code's schema head (a brand-new SQLite
    file is created); the report goes to ``report_dir`` (default ``var/reports/<time>``).
    """
    from defectscan.config import get_settings
    from defectscan.monitor import ModelProvider, line_loader
    from defectscan.store.db import ensure_schema, make_engine

    settings = get_settings()
    engine = make_engine(database_url or settings.database_url)
    try:
        ensure_schema(engine)
        models = ModelProvider(
            model, load=line_loader(line), sessions=session_factory(engine, write=True), line=line
        )
        archive_dir = settings.archive_dir or settings.var_dir / "archive"
        archive = ImageArchive(archive_dir, ArchivePolicy.from_config(settings.archive_for(line)))
        if report_dir is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            report_dir = settings.var_dir / "reports" / f"batch-{line or 'lot'}-{stamp}"
        return run_batch(
            selection,
            inspector=models.inspector,
            engine=engine,
            report_dir=report_dir,
            archive=archive,
            line=line,
            camera=camera,
            title=title,
            # A model without INT8 here: the lot's images calibrate it for the next monitor.
            calibration=calibration_pool_for(
                models.inspector, EngineOptions.for_line(settings, line)
            ),
        )
    finally:
        engine.dispose()
