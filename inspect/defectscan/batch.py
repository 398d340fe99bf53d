"""Batch inspection of a lot: a folder or glob, a list of archived images, or a query.

A lot goes through the one inspect-and-store loop (:func:`defectscan.service.inspect_and_store`),
so a re-run of the same lot under the same model writes nothing twice (rows are unique on
``(sha256, model version)``). What a quality engineer reads comes from the database rows of
the lot, not from the run's own counters, so the report of a re-run equals the first one:

- per-class defect counts and the share of parts with each class,
- the defect rate (failed parts / inspected parts) by camera,
- the worst parts (most defect area, then highest score) with overlay thumbnails,
- rejected inputs with their reasons, and references that could not be found at all.

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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, selectinload

from defectscan.archive import ArchiveError, ArchivePolicy, ImageArchive
from defectscan.batch_records import BatchReport, MissingInput, PartRow
from defectscan.errors import DefectscanError
from defectscan.inputs import IMAGE_SUFFIXES, InputPathError, expand_inputs
from defectscan.pipeline import InspectionResult, Inspector
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
    "MissingInput",
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


def collect_records(
    selection: BatchSelection,
    *,
    session: Session | None,
    archive: ImageArchive | None,
    line: str | None = None,
    camera: str | None = None,
) -> tuple[list[ImageRecord], list[MissingInput]]:
    """The records of a selection and the references that could not be found.

    Records from paths carry ``line``/``camera`` as given; records from the archive or a query
    keep the line and camera of their latest inspection.
    """
    records: list[ImageRecord] = []
    missing: list[MissingInput] = []
    seen: set[str] = set()
    for path in _expand(selection.paths):
        records.append(ImageRecord.from_path(path, camera=camera, line=line))
    wanted: dict[str, Inspection | None] = {}
    for sha in selection.sha256:
        sha = sha.strip().lower()
        if not _SHA.match(sha):
            missing.append(MissingInput(sha, "not a sha256 (64 hex digits)"))
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
        if sha in seen:
            continue
        seen.add(sha)
        uri = row.uri if row is not None else f"archive:{sha}"
        data, why = _bytes_of(sha, row.uri if row is not None else None, archive)
        if data is None:
            missing.append(MissingInput(uri, why))
            continue
        records.append(
            ImageRecord(
                id=f"sha256:{sha}",
                uri=uri,
                data=data,
                camera=row.camera if row is not None else camera,
                line=row.line if row is not None else line,
                captured_at=row.captured_at if row is not None else None,
                source="batch",
            )
        )
    if not records and not missing:
        msg = f"the batch selects no images ({selection.describe()})"
        raise BatchInputError(msg)
    return records, missing


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
) -> BatchReport:
    """Inspect a lot, store one row per image (idempotent), write the HTML report."""
    from defectscan.report import batch_report_html

    started = datetime.now(UTC)
    report_dir = Path(report_dir)
    thumbs = report_dir / "overlays"
    sessions = session_factory(engine, write=True)
    with sessions() as session:
        records, missing = collect_records(
            selection, session=session, archive=archive, line=line, camera=camera
        )
    writer = ResultWriter(engine, batch_size=32)
    register_model(writer, inspector)
    names = list(inspector.spec.class_names)
    thumb_of: dict[str, str] = {}
    lot: list[str] = []

    def draw(result: InspectionResult) -> tuple[str | None, str | None]:
        lot.append(result.sha256)
        path = _thumbnail(result, thumbs, names)
        if path is not None:
            thumb_of[result.sha256] = path
        return None, path

    outcome = BatchOutcome()
    if records:
        outcome = inspect_and_store(
            records,
            inspector=inspector,
            writer=writer,
            archive=archive,
            on_result=draw,
            keep_images=True,
        )
    with sessions() as session:
        parts = _parts(session, list(dict.fromkeys(lot)), inspector.model_version)
    for p in parts:
        p.thumbnail = thumb_of.get(p.sha256)
    report = BatchReport(
        title=title or f"batch inspection: {selection.describe()}",
        selection=selection.describe(),
        model_version=inspector.model_version,
        class_names=names,
        started_at=started,
        finished_at=datetime.now(UTC),
        inputs=len(records) + len(missing),
        inserted=outcome.inserted,
        duplicates=outcome.duplicates,
        parts=parts,
        missing=missing,
    )
    report.report_path = batch_report_html(report, report_dir / "report.html")
    logger.info(
        "batch %s: %d parts, %d failed, %d rejected, %d missing; report %s",
        report.selection,
        len(parts),
        report.failed,
        len(report.rejected),
        len(missing),
        report.report_path,
    )
    return report


def _parts(session: Session, shas: Sequence[str], model_version: str) -> list[PartRow]:
    if not shas:
        return []
    rows: list[Inspection] = []
    for start in range(0, len(shas), 500):
        rows += session.scalars(
            select(Inspection)
            .join(ModelVersion, Inspection.model_version_id == ModelVersion.id)
            .where(
                ModelVersion.version == model_version,
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


# --------------------------------------------------------------------------- summaries


def _pct(value: float | int | None) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"


def class_table(report: BatchReport) -> list[dict[str, Any]]:
    """Rows of the per-class table: class, defects, parts, rate (and a total row)."""
    rows: list[dict[str, Any]] = [
        {"class": name, "defects": c["defects"], "parts": c["parts"], "rate": _pct(c["rate"])}
        for name, c in report.per_class().items()
    ]
    rows.append(
        {
            "class": "any (failed parts)",
            "defects": sum(p.n_defects for p in report.parts),
            "parts": report.failed,
            "rate": _pct(report.defect_rate),
        }
    )
    return rows


def summary_markdown(report: BatchReport, *, worst: int = 10) -> str:
    """A markdown summary: counts, rate by camera, the worst parts, rejected and missing inputs."""
    lines = [
        f"# {report.title}",
        "",
        f"Model `{report.model_version}`; {len(report.parts)} parts: {report.inspected} "
        f"inspected, {report.failed} failed ({_pct(report.defect_rate)}), "
        f"{len(report.rejected)} rejected, {len(report.missing)} not found. "
        f"New rows {report.inserted}, already stored {report.duplicates}.",
        "",
        "## Defect rate by camera",
        "",
        "| camera | inspected | failed | rejected | rate |",
        "|---|---:|---:|---:|---:|",
    ]
    for camera, c in report.by_camera().items():
        lines.append(
            f"| {camera} | {c['inspected']} | {c['failed']} | {c['rejected']} | {_pct(c['rate'])} |"
        )
    lines += ["", f"## Worst parts (top {worst})", ""]
    bad = report.worst(worst)
    if bad:
        lines += ["| part | camera | defects | area px | max score |", "|---|---|---:|---:|---:|"]
        lines += [
            f"| `{p.uri}` | {p.camera or '-'} | "
            + ", ".join(f"{n} {c}" for c, n in sorted(p.classes.items()))
            + f" | {p.defect_area} | {p.max_score:.2f} |"
            for p in bad
        ]
    else:
        lines.append("No failed parts.")
    if report.rejected or report.missing:
        lines += ["", "## Rejected inputs", ""]
        lines += [f"- `{p.uri}`: {p.error_kind}: {p.error_message}" for p in report.rejected]
        lines += [f"- `{m.ref}`: not found: {m.reason}" for m in report.missing]
    if report.report_path is not None:
        lines += ["", f"Report: `{report.report_path}`"]
    return "\n".join(lines) + "\n"


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
        )
    finally:
        engine.dispose()
