"""What a batch inspection found, as plain records: the lot's parts, what could not be seen,
and the per-class and per-camera figures computed from them.

What a batch could not see is counted apart and kept out of every rate: references that could
not be found (``missing``) and stored parts whose image bytes are not kept (``not_kept``: the
archive keeps every failed part but only a sample of passes, so a re-inspection of past parts
sees mostly the failed ones). Each rate carries the number of parts it is computed on (``n``),
and :attr:`BatchReport.coverage_note` says plainly what the rates leave out.

:mod:`defectscan.batch` builds a :class:`BatchReport` from the database rows of a lot;
:mod:`defectscan.report` renders it as HTML. Both import this module, never each other the
other way round.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["BatchReport", "MissingInput", "NotKept", "PartRow"]


@dataclass(frozen=True)
class MissingInput:
    """A reference that could not be turned into image bytes, and why."""

    ref: str
    reason: str


@dataclass(frozen=True)
class NotKept:
    """A selected, already stored part whose image bytes are not kept: it cannot be seen."""

    ref: str
    sha256: str
    #: How its latest stored inspection ended: pass, fail or rejected.
    stored: str | None
    reason: str


@dataclass
class PartRow:
    """One inspected (or rejected) part of the lot, as stored."""

    sha256: str
    uri: str
    camera: str | None
    line: str | None
    status: str
    verdict: str | None
    n_defects: int
    defect_area: int
    max_score: float
    classes: dict[str, int]
    error_kind: str | None = None
    error_message: str | None = None
    thumbnail: str | None = None


@dataclass
class BatchReport:
    """A lot's results under one model version, read back from the database."""

    title: str
    selection: str
    model_version: str
    class_names: list[str]
    started_at: datetime
    finished_at: datetime
    inputs: int
    inserted: int
    duplicates: int
    parts: list[PartRow] = field(default_factory=list)
    missing: list[MissingInput] = field(default_factory=list)
    not_kept: list[NotKept] = field(default_factory=list)
    report_path: Path | None = None

    @property
    def inspected(self) -> int:
        """Parts with a verdict."""
        return sum(p.status == "ok" for p in self.parts)

    @property
    def rejected(self) -> list[PartRow]:
        """Inputs that could not be inspected (with their reasons)."""
        return [p for p in self.parts if p.status != "ok"]

    @property
    def failed(self) -> int:
        """Parts that failed."""
        return sum(p.verdict == "fail" for p in self.parts)

    @property
    def defect_rate(self) -> float | None:
        """Failed parts / inspected parts."""
        return self.failed / self.inspected if self.inspected else None

    def not_kept_by_verdict(self) -> dict[str, int]:
        """Parts not seen because their bytes are not kept, by their stored verdict."""
        return dict(sorted(Counter(n.stored or "unknown" for n in self.not_kept).items()))

    @property
    def coverage_note(self) -> str | None:
        """A plain sentence on what the rates leave out (None when the batch saw everything)."""
        if not self.not_kept and not self.missing:
            return None
        said = []
        if self.not_kept:
            verdicts = ", ".join(f"{n} {v}" for v, n in self.not_kept_by_verdict().items())
            said.append(
                f"{len(self.not_kept)} selected part(s) could not be re-inspected because their "
                f"images are not kept ({verdicts} when stored): the archive keeps every failed "
                "part but only a sample of passes, so the parts that could be seen lean toward "
                "failures"
            )
        if self.missing:
            said.append(f"{len(self.missing)} reference(s) were not found")
        return (
            "; ".join(said)
            + f". Every rate below is over the {self.inspected} part(s) inspected in this "
            "batch, not over the whole selection."
        )

    def per_class(self) -> dict[str, dict[str, float | int | None]]:
        """Per class: defects found, parts with the class, and that share of the ``n``
        inspected parts."""
        out: dict[str, dict[str, float | int | None]] = {}
        n = self.inspected
        for name in self.class_names:
            defects = sum(p.classes.get(name, 0) for p in self.parts)
            parts = sum(1 for p in self.parts if p.classes.get(name))
            out[name] = {
                "defects": defects,
                "parts": parts,
                "rate": parts / n if n else None,
                "n": n,
            }
        return out

    def by_camera(self) -> dict[str, dict[str, float | int | None]]:
        """Per camera: inspected, failed, rejected parts and the defect rate over ``n``."""
        groups: dict[str, list[PartRow]] = defaultdict(list)
        for p in self.parts:
            groups[p.camera or "-"].append(p)
        out: dict[str, dict[str, float | int | None]] = {}
        for camera in sorted(groups):
            rows = groups[camera]
            ok = sum(p.status == "ok" for p in rows)
            failed = sum(p.verdict == "fail" for p in rows)
            out[camera] = {
                "inspected": ok,
                "failed": failed,
                "rejected": len(rows) - ok,
                "rate": failed / ok if ok else None,
                "n": ok,
            }
        return out

    def worst(self, n: int = 10) -> list[PartRow]:
        """Failed parts with the most defect area first (then the highest score)."""
        failed = [p for p in self.parts if p.verdict == "fail"]
        return sorted(failed, key=lambda p: (-p.defect_area, -p.max_score, p.uri))[:n]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (the flow's return value)."""
        return {
            "title": self.title,
            "selection": self.selection,
            "model_version": self.model_version,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "inputs": self.inputs,
            "parts": len(self.parts),
            "inspected": self.inspected,
            "failed": self.failed,
            "rejected": len(self.rejected),
            "missing": [asdict(m) for m in self.missing],
            "not_kept": len(self.not_kept),
            "not_kept_by_verdict": self.not_kept_by_verdict(),
            "coverage_note": self.coverage_note,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "defect_rate": self.defect_rate,
            "defect_rate_n": self.inspected,
            "per_class": self.per_class(),
            "by_camera": self.by_camera(),
            "rejected_inputs": [
                {"uri": p.uri, "kind": p.error_kind, "message": p.error_message}
                for p in self.rejected
            ],
            "worst": [
                {"uri": p.uri, "sha256": p.sha256, "area": p.defect_area} for p in self.worst()
            ],
            "report": str(self.report_path) if self.report_path else None,
        }
