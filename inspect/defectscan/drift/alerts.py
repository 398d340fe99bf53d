"""Windows of one camera's images, their statistics, the alert rule and the hints.

- :class:`WindowCollector` closes windows as the line runs: 10 minutes with at least 200
  images; a quieter window is merged with the next minutes until it has 200; a busy one is
  closed at 1,000 images.
- :class:`AlertRule`: a window is *over* when any statistic is over its threshold. Three over
  in a row: warning; six in a row, or two in a row with some statistic at twice its
  threshold: critical. One window under threshold ends the run.
- :func:`hints`: what the statistics that moved point to - lighting (brightness or contrast
  moved), focus or lens (sharpness fell, gain-blind), a new variant (novelty up while every
  image statistic stayed steady).
- :class:`CameraDrift` ties them together for one camera and one reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from defectscan.drift.reference import (
    DriftReference,
    ImageRows,
    over_threshold,
    psi_ranking,
    window_statistics,
)

__all__ = [
    "AlertRule",
    "CameraDrift",
    "DriftState",
    "WindowCollector",
    "WindowResult",
    "hints",
]

DriftState = Literal["ok", "warning", "critical"]

#: Windows in a row over threshold for a warning, and for a critical alert.
WARN_RUN = 3
CRITICAL_RUN = 6
#: Two windows in a row with a statistic at this multiple of its threshold: critical.
CRITICAL_RATIO = 2.0
CRITICAL_RATIO_RUN = 2


@dataclass
class AlertRule:
    """Runs of windows over threshold -> ok, warning or critical."""

    run: int = 0
    run_2x: int = 0

    def update(self, over: dict[str, float]) -> DriftState:
        """The state after one more window (``over``: statistics over threshold, by ratio)."""
        if over:
            self.run += 1
            self.run_2x = self.run_2x + 1 if max(over.values()) >= CRITICAL_RATIO else 0
        else:
            self.run = self.run_2x = 0
        if self.run >= CRITICAL_RUN or self.run_2x >= CRITICAL_RATIO_RUN:
            return "critical"
        if self.run >= WARN_RUN:
            return "warning"
        return "ok"


def hints(values: dict[str, float], over: dict[str, float]) -> list[str]:
    """Likely causes of the statistics over threshold (empty when nothing is over)."""
    if not over:
        return []
    out = []
    sharp_fell = values.get("stat:rel_sharpness", 0.0) < 0 and "stat:rel_sharpness" in over
    if sharp_fell:
        out.append("focus or lens: sharpness fell")
    lighting = [s for s in ("stat:brightness", "stat:contrast") if s in over]
    if lighting and not sharp_fell:
        moved = ", ".join(
            f"{s.split(':')[1]} {'up' if values[s] > 0 else 'down'}" for s in lighting
        )
        out.append(f"lighting: {moved}")
    stats_over = [s for s in over if s.startswith("stat")]
    if ("novelty" in over or "mean_shift" in over) and not stats_over:
        out.append("new variant: features moved, image statistics steady")
    if not out:
        named = ", ".join(sorted(over))
        out.append(f"image or output statistics moved: {named}")
    return out


@dataclass
class WindowResult:
    """One closed window: its statistics, thresholds, state and hints."""

    start: float
    end: float
    n: int
    values: dict[str, float]
    thresholds: dict[str, float]
    over: dict[str, float]
    state: DriftState
    hints: list[str]
    psi_top: list[tuple[str, float]]

    def statistics_json(self) -> dict[str, Any]:
        """What ``drift_windows.statistics`` stores."""
        return {
            "values": {k: round(v, 6) for k, v in self.values.items()},
            "over": {k: round(v, 4) for k, v in self.over.items()},
            "psi_top": [[n, s] for n, s in self.psi_top],
        }


@dataclass
class CameraDrift:
    """One camera's drift against one reference: windows in, states out."""

    reference: DriftReference
    rule: AlertRule = field(default_factory=AlertRule)
    ewma: np.ndarray | None = None

    def evaluate(self, rows: ImageRows) -> WindowResult:
        """Statistics, thresholds, state and hints of a closed window."""
        values, self.ewma = window_statistics(self.reference, rows, self.ewma)
        thresholds = self.reference.threshold_for(len(rows))
        over = over_threshold(values, thresholds)
        state = self.rule.update(over)
        return WindowResult(
            start=float(rows.times.min()),
            end=float(rows.times.max()),
            n=len(rows),
            values=values,
            thresholds=thresholds,
            over=over,
            state=state,
            hints=hints(values, over),
            psi_top=psi_ranking(self.reference, rows) if over else [],
        )


class WindowCollector:
    """Buffers one camera's images and hands back windows as they close."""

    def __init__(
        self, *, seconds: float = 600.0, min_images: int = 200, max_images: int = 1000
    ) -> None:
        if not 0 < min_images <= max_images:
            msg = f"need 0 < min_images <= max_images, got {min_images}, {max_images}"
            raise ValueError(msg)
        self.seconds = seconds
        self.min_images = min_images
        self.max_images = max_images
        self._parts: list[ImageRows] = []
        self._n = 0
        self._start: float | None = None

    def __len__(self) -> int:
        return self._n

    def add(self, rows: ImageRows) -> list[ImageRows]:
        """Take images (time-ordered); return every window they closed."""
        closed: list[ImageRows] = []
        i = 0
        while i < len(rows):
            if self._start is None:
                self._start = float(rows.times[i])
            # How many of the remaining rows fit before the cap or the end of the window.
            room = self.max_images - self._n
            take = min(room, len(rows) - i)
            chunk = rows.take(slice(i, i + take))
            late = np.flatnonzero(chunk.times >= self._start + self.seconds)
            if late.size:
                # Past ten minutes: cut where the window also has its minimum of images.
                cut = max(int(late[0]), self.min_images - self._n)
                if cut < take:
                    take = cut
                    chunk = rows.take(slice(i, i + take))
            if take:
                self._parts.append(chunk)
                self._n += take
                i += take
            if self._n >= self.max_images or (
                i < len(rows)
                and float(rows.times[i]) >= self._start + self.seconds
                and self._n >= self.min_images
            ):
                closed.append(self._close())
        return closed

    def flush(self) -> ImageRows | None:
        """Close the open window now, whatever its size (the end of a replay); None if empty."""
        return self._close() if self._n else None

    def _close(self) -> ImageRows:
        window = ImageRows.concat(self._parts)
        self._parts, self._n, self._start = [], 0, None
        return window
