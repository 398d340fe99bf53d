"""Plain records the inference pipeline hands to the store.

Pure dataclasses: no SQLAlchemy, no torch, so that ``pipeline`` and ``sources`` can build them
without importing the database layer. Datetimes are timezone-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

__all__ = ["DefectRecord", "InspectionRecord", "InspectionStatus", "Verdict"]

InspectionStatus = Literal["ok", "rejected"]
Verdict = Literal["pass", "fail"]


@dataclass(frozen=True, slots=True)
class DefectRecord:
    """One connected defect region found in an image."""

    class_index: int
    class_name: str
    area: int
    bbox: tuple[int, int, int, int]  # x, y, w, h in pixels
    centroid: tuple[float, float]  # x, y in pixels
    perimeter: float
    mean_score: float
    max_score: float
    polygon: list[list[int]] = field(default_factory=list)  # [[x, y], ...]


@dataclass(slots=True)
class InspectionRecord:
    """The outcome of inspecting (or refusing) one image under one model version.

    A rejected input is a record with ``status="rejected"``, ``verdict=None`` and
    ``error_kind``/``error_message`` set, so that every image gets exactly one row.
    """

    sha256: str
    uri: str
    model_version: str
    status: InspectionStatus
    verdict: Verdict | None
    camera: str | None = None
    line: str | None = None
    width: int | None = None
    height: int | None = None
    channels: int | None = None
    captured_at: datetime | None = None
    received_at: datetime | None = None
    finished_at: datetime | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # decode, infer, post, total
    error_kind: str | None = None
    error_message: str | None = None
    mask_path: str | None = None
    overlay_path: str | None = None
    source: str | None = None
    source_id: str | None = None
    #: The delivery's identity at its source (``ImageRecord.source_key``): the row is unique on
    #: (source_key, sha256) under any model version. None for explicit inspections (``batch``,
    #: ``inspect --store``), which are unique on (sha256, model_version) instead.
    source_key: str | None = None
    defects: list[DefectRecord] = field(default_factory=list)
