"""What a line monitor counts: per-minute windows and the summary of a bounded run.

:class:`WindowStats` adds up the outcomes of the micro-batches of one metrics window (a minute,
or a whole run) and gives its ``run_metrics`` row; :class:`RunSummary` is what one bounded run
of :meth:`defectscan.monitor.LineMonitor.run` returns (and the flow returns as JSON).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from defectscan.service import BatchOutcome

__all__ = ["RunSummary", "WindowStats"]


@dataclass
class WindowStats:
    """Counts and latencies over one metrics window (a minute, or a whole run)."""

    start: datetime = field(default_factory=lambda: datetime.now(UTC))
    outcome: BatchOutcome = field(default_factory=BatchOutcome)

    def percentile(self, q: float) -> float | None:
        """Capture-to-commit latency percentile ``q`` in [0, 1], in milliseconds."""
        values = sorted(self.outcome.latencies_s)
        if not values:
            return None
        pos = q * (len(values) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return 1e3 * (values[lo] + (values[hi] - values[lo]) * (pos - lo))

    def row(self, end: datetime) -> dict[str, Any]:
        """Keyword arguments of ``store.save_run_metrics`` for this window."""
        o = self.outcome
        seconds = max((end - self.start).total_seconds(), 1e-9)
        return {
            "window_start": self.start,
            "window_end": end,
            "processed": o.images,
            "rejected": o.rejected,
            "tiles": o.tiles,
            "failed": o.failed_parts,
            "throughput_per_s": o.images / seconds,
            "latency_p50_ms": self.percentile(0.5),
            "latency_p95_ms": self.percentile(0.95),
            "defect_rate": (o.failed_parts / o.inspected) if o.inspected else None,
            "rejected_by_reason": dict(o.rejected_by_reason),
            "model_version": ",".join(sorted(o.model_versions)) or None,
        }


@dataclass
class RunSummary:
    """What one bounded monitor run did."""

    run_id: str
    images: int
    inspected: int
    rejected: int
    failed_parts: int
    tiles: int
    duplicates: int
    seconds: float
    stopped_by: str
    model_versions: list[str]
    failed_batches: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    archived: dict[str, int]
    rejected_by_reason: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the flow's return value)."""
        return dict(self.__dict__)
