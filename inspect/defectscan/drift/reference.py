"""A drift reference: what one camera's images looked like to one model version.

:func:`fit_reference` splits accepted production by capture time into a fitting half and a
calibration half. On the fitting half: the pooled bottleneck features' PCA to ``k`` axes,
Ledoit-Wolf shrunk covariance in those axes, whitening; the image statistics' medians and
MADs; the model's output rates. On the calibration half: the 99th percentile of the
Mahalanobis distance (what counts as a novel image), and every window statistic's threshold
from windows drawn by a moving-block bootstrap with 1-minute blocks (see
:func:`~defectscan.drift.stats.block_windows`).

The thresholds are calibrated jointly: a window is over threshold when *any* statistic is,
so each statistic's threshold is its quantile at the level where the bootstrap windows that
have some statistic over threshold are 1% (the 99% quantile of the windows' largest
statistic, each on its own empirical scale). A threshold never goes below its effect-size
floor (:data:`EFFECT_FLOORS`): a shift too small to matter never alarms, however tight the
reference. Thresholds depend on a window's size; they are kept for the sizes in
:data:`N_GRID` and a window uses the largest grid size not above its own (the conservative one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from defectscan.drift.stats import block_windows, ledoit_wolf, pca, psi, whitening
from defectscan.errors import DefectscanError
from defectscan.image_stats import STAT_NAMES

__all__ = [
    "ALARM_LEVEL",
    "EFFECT_FLOORS",
    "EWMA_LAMBDA",
    "N_GRID",
    "DriftError",
    "DriftReference",
    "ImageRows",
    "fit_reference",
    "over_threshold",
    "psi_ranking",
    "window_statistics",
]

#: Window sizes thresholds are calibrated for (a window holds 200 to 1,000 images).
N_GRID: tuple[int, ...] = (200, 300, 450, 700, 1000)
#: Share of calibration windows over threshold (jointly, over every statistic).
ALARM_LEVEL = 0.01
#: Weight of the newest window in the EWMA of the model's output rates.
EWMA_LAMBDA = 0.3
#: Bootstrap windows drawn per grid size.
BOOTSTRAP_WINDOWS = 2000
#: Smallest threshold of each kind of statistic: shifts below these never matter.
EFFECT_FLOORS: dict[str, float] = {
    "mean_shift": 0.10,  # norm of the mean whitened feature vector (in reference SDs)
    "novelty": 0.02,  # share of novel images (the reference's own share is 0.01)
    "stat_novelty": 0.02,  # share of images whose statistics are novel (likewise)
    "stat": 0.25,  # median shift of an image statistic, in reference MADs
    "output": 0.01,  # EWMA of an output rate's difference from the reference's rate
}
#: Image statistics and whitened components whose PSI is kept for ranking.
_PSI_COMPONENTS = 16
_PSI_BINS = 10


class DriftError(DefectscanError):
    """A drift reference cannot be built or used as asked."""

    kind = "drift"


@dataclass
class ImageRows:
    """Per-image drift inputs, time-ordered: features, image statistics, output flags."""

    times: np.ndarray  # [n] seconds (capture times)
    features: np.ndarray  # [n, D] pooled bottleneck features
    stats: np.ndarray  # [n, len(STAT_NAMES)]
    outputs: np.ndarray  # [n, q] 0/1 flags (fail per class, close call)

    def __len__(self) -> int:
        return len(self.times)

    def take(self, idx: np.ndarray | slice) -> ImageRows:
        """The rows at ``idx``."""
        return ImageRows(self.times[idx], self.features[idx], self.stats[idx], self.outputs[idx])

    @classmethod
    def concat(cls, parts: list[ImageRows]) -> ImageRows:
        """Rows of ``parts`` one after another."""
        return cls(
            np.concatenate([p.times for p in parts]),
            np.concatenate([p.features for p in parts]),
            np.concatenate([p.stats for p in parts]),
            np.concatenate([p.outputs for p in parts]),
        )


@dataclass
class DriftReference:
    """A fitted reference; :meth:`to_dict` / :meth:`from_dict` round-trip it through JSON."""

    k: int
    mean: np.ndarray  # [D]
    components: np.ndarray  # [D, k]
    whitening: np.ndarray  # [k, k]
    shrinkage: float
    novelty_cut: float  # Mahalanobis distance: the calibration half's 99th percentile
    stat_novelty_cut: float  # largest |image statistic| in MADs: the same percentile
    stat_names: tuple[str, ...]
    stat_median: np.ndarray
    stat_mad: np.ndarray
    output_names: tuple[str, ...]
    output_rates: np.ndarray
    thresholds: dict[str, list[float]]  # statistic -> threshold per N_GRID size
    n_grid: tuple[int, ...]
    n_images: int
    psi_edges: dict[str, list[float]] = field(default_factory=dict)
    built_from: float | None = None
    built_to: float | None = None

    # -- projections ----------------------------------------------------------------------

    def whiten(self, features: np.ndarray) -> np.ndarray:
        """Whitened PCA coordinates ``[n, k]`` of features ``[n, D]``."""
        return ((np.asarray(features, np.float64) - self.mean) @ self.components) @ self.whitening

    def stat_z(self, stats: np.ndarray) -> np.ndarray:
        """Image statistics in reference MAD units (centred on the reference medians)."""
        return (np.asarray(stats, np.float64) - self.stat_median) / self.stat_mad

    def threshold_for(self, n: int) -> dict[str, float]:
        """Each statistic's threshold for a window of ``n`` images."""
        i = max(0, int(np.searchsorted(self.n_grid, n, side="right")) - 1)
        return {name: float(v[i]) for name, v in self.thresholds.items()}

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "k": self.k,
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "whitening": self.whitening.tolist(),
            "shrinkage": self.shrinkage,
            "novelty_cut": self.novelty_cut,
            "stat_novelty_cut": self.stat_novelty_cut,
            "stat_names": list(self.stat_names),
            "stat_median": self.stat_median.tolist(),
            "stat_mad": self.stat_mad.tolist(),
            "output_names": list(self.output_names),
            "output_rates": self.output_rates.tolist(),
            "thresholds": self.thresholds,
            "n_grid": list(self.n_grid),
            "n_images": self.n_images,
            "psi_edges": self.psi_edges,
            "built_from": self.built_from,
            "built_to": self.built_to,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftReference:
        """Inverse of :meth:`to_dict`."""
        return cls(
            k=int(d["k"]),
            mean=np.asarray(d["mean"], np.float64),
            components=np.asarray(d["components"], np.float64),
            whitening=np.asarray(d["whitening"], np.float64),
            shrinkage=float(d["shrinkage"]),
            novelty_cut=float(d["novelty_cut"]),
            stat_novelty_cut=float(d["stat_novelty_cut"]),
            stat_names=tuple(d["stat_names"]),
            stat_median=np.asarray(d["stat_median"], np.float64),
            stat_mad=np.asarray(d["stat_mad"], np.float64),
            output_names=tuple(d["output_names"]),
            output_rates=np.asarray(d["output_rates"], np.float64),
            thresholds={k: [float(x) for x in v] for k, v in d["thresholds"].items()},
            n_grid=tuple(int(x) for x in d["n_grid"]),
            n_images=int(d["n_images"]),
            psi_edges={k: [float(x) for x in v] for k, v in d.get("psi_edges", {}).items()},
            built_from=d.get("built_from"),
            built_to=d.get("built_to"),
        )


# -- window statistics ----------------------------------------------------------------------


def _floor_of(name: str) -> float:
    return EFFECT_FLOORS[name.split(":")[0]]


@dataclass(frozen=True)
class _Centre:
    """How far the fitting half's centre may sit from the line's (one bootstrap draw)."""

    z: np.ndarray  # whitened mean
    stats: np.ndarray  # image statistics' medians, in MADs
    outputs: np.ndarray  # output rates


def _raw_stats(
    ref: DriftReference,
    z: np.ndarray,
    novel: np.ndarray,
    sz: np.ndarray,
    outputs: np.ndarray,
    centre: _Centre | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Per-window values before the EWMA: magnitudes by name, and the output rates' deltas."""
    mean_z = z.mean(axis=0) if centre is None else z.mean(axis=0) - centre.z
    values: dict[str, float] = {
        "mean_shift": float(np.linalg.norm(mean_z)),
        "novelty": float(novel.mean()),
        # A share of images changed (a mixture) moves medians little but their tails a lot.
        "stat_novelty": float(np.mean(np.abs(sz).max(axis=1) > ref.stat_novelty_cut)),
    }
    med = np.median(sz, axis=0)
    if centre is not None:
        med = med - centre.stats
    for name, v in zip(ref.stat_names, med, strict=True):
        values[f"stat:{name}"] = float(v)
    delta = outputs.mean(axis=0) - ref.output_rates if outputs.size else np.zeros(0)
    if centre is not None and delta.size:
        delta = delta - centre.outputs
    return values, delta


def window_statistics(
    ref: DriftReference, rows: ImageRows, ewma: np.ndarray | None = None
) -> tuple[dict[str, float], np.ndarray]:
    """A window's signed statistics and the output rates' EWMA carried to the next window.

    Keys: ``mean_shift``, ``novelty``, ``stat:<name>`` (signed median shift in MADs),
    ``output:<name>`` (signed EWMA of the rate's difference from the reference).
    """
    z = ref.whiten(rows.features)
    novel = np.sqrt(np.sum(z**2, axis=1)) > ref.novelty_cut
    values, delta = _raw_stats(ref, z, novel, ref.stat_z(rows.stats), rows.outputs)
    prev = np.zeros_like(delta) if ewma is None else ewma
    new = EWMA_LAMBDA * delta + (1 - EWMA_LAMBDA) * prev
    for name, v in zip(ref.output_names, new, strict=True):
        values[f"output:{name}"] = float(v)
    return values, new


def over_threshold(values: dict[str, float], thresholds: dict[str, float]) -> dict[str, float]:
    """Statistics over their threshold, as the ratio |value| / threshold (> 1)."""
    out = {}
    for name, thr in thresholds.items():
        v = abs(values.get(name, 0.0))
        if math.isfinite(v) and v > thr:
            out[name] = v / thr
    return out


def psi_ranking(ref: DriftReference, rows: ImageRows, top: int = 5) -> list[tuple[str, float]]:
    """What moved most in a window, by PSI against the calibration half (ranking only)."""
    z = ref.whiten(rows.features)
    scores = []
    for name, edges in ref.psi_edges.items():
        kind, _, label = name.partition(":")
        col = z[:, int(label)] if kind == "pc" else rows.stats[:, ref.stat_names.index(label)]
        scores.append((name, psi(np.asarray(edges), col)))
    scores.sort(key=lambda t: -t[1])
    return [(n, round(s, 4)) for n, s in scores[:top]]


# -- fitting --------------------------------------------------------------------------------


def fit_reference(
    rows: ImageRows,
    *,
    output_names: tuple[str, ...],
    k: int = 64,
    seed: int = 0,
    bootstrap_windows: int = BOOTSTRAP_WINDOWS,
    n_grid: tuple[int, ...] = N_GRID,
    min_images: int = 400,
) -> DriftReference:
    """Fit a reference on the first half of ``rows`` by time, calibrate on the second half."""
    n = len(rows)
    if n < min_images:
        msg = (
            f"a drift reference needs at least {min_images} images, got {n}: collect more "
            "accepted production (the default for a camera is 3,000 over several shifts)"
        )
        raise DriftError(msg)
    if rows.stats.shape[1] != len(STAT_NAMES):
        msg = f"image statistics have {rows.stats.shape[1]} columns, expected {len(STAT_NAMES)}"
        raise DriftError(msg)
    order = np.argsort(rows.times, kind="stable")
    rows = rows.take(order)
    half = n // 2
    fit, cal = rows.take(slice(0, half)), rows.take(slice(half, n))

    mean, axes, _ = pca(fit.features, k)
    proj = (fit.features - mean) @ axes
    cov, shrink = ledoit_wolf(proj)
    white = whitening(cov)
    med = np.median(fit.stats, axis=0)
    mad = 1.4826 * np.median(np.abs(fit.stats - med), axis=0)
    # A statistic that never varied (a gray camera's channel means) still needs a scale.
    mad = np.maximum(mad, 1e-6 + 1e-3 * np.abs(med))
    ref = DriftReference(
        k=axes.shape[1],
        mean=mean,
        components=axes,
        whitening=white,
        shrinkage=shrink,
        novelty_cut=0.0,
        stat_novelty_cut=0.0,
        stat_names=STAT_NAMES,
        stat_median=med,
        stat_mad=mad,
        output_names=tuple(output_names),
        output_rates=fit.outputs.mean(axis=0) if len(fit) else np.zeros(len(output_names)),
        thresholds={},
        n_grid=tuple(n_grid),
        n_images=n,
        built_from=float(rows.times[0]),
        built_to=float(rows.times[-1]),
    )
    zc = ref.whiten(cal.features)
    dist = np.sqrt(np.sum(zc**2, axis=1))
    ref.novelty_cut = float(np.quantile(dist, 0.99))
    ref.stat_novelty_cut = float(np.quantile(np.abs(ref.stat_z(cal.stats)).max(axis=1), 0.99))
    centres = _centres(ref, fit, np.random.default_rng([seed, 1]))
    ref.thresholds = _calibrate(ref, cal, zc, dist, centres, seed, bootstrap_windows)
    qs = np.linspace(0, 1, _PSI_BINS + 1)[1:-1]
    for j in range(min(_PSI_COMPONENTS, ref.k)):
        ref.psi_edges[f"pc:{j}"] = np.quantile(zc[:, j], qs).tolist()
    for j, name in enumerate(STAT_NAMES):
        ref.psi_edges[f"stat:{name}"] = np.quantile(cal.stats[:, j], qs).tolist()
    return ref


def _centres(
    ref: DriftReference, fit: ImageRows, rng: np.random.Generator, count: int = 200
) -> list[_Centre]:
    """Block-bootstrap draws of the fitting half's centre, relative to the centre itself.

    The reference's centre (mean, medians, rates) is estimated from correlated images: it is
    off the line's true centre by an error of this size. Production windows meet that error;
    windows cut from the calibration half alone would not (they share the half's own offset),
    and thresholds set on them alone alarm too often on new data. Each calibration window is
    measured against one such draw, so the thresholds include the reference's own uncertainty
    (the estimated-parameters correction of control charts).
    """
    zf = ref.whiten(fit.features)
    sf = ref.stat_z(fit.stats)
    base_z, base_s = zf.mean(axis=0), np.median(sf, axis=0)
    base_o = fit.outputs.mean(axis=0)
    idx = block_windows(fit.times, len(fit), count, rng)
    return [
        _Centre(zf[i].mean(axis=0) - base_z, np.median(sf[i], axis=0) - base_s,
                fit.outputs[i].mean(axis=0) - base_o)
        for i in idx
    ]  # fmt: skip


def _calibrate(
    ref: DriftReference,
    cal: ImageRows,
    zc: np.ndarray,
    dist: np.ndarray,
    centres: list[_Centre],
    seed: int,
    count: int,
) -> dict[str, list[float]]:
    """Thresholds per statistic and grid size from block-bootstrap windows of ``cal``."""
    rng = np.random.default_rng(seed)
    novel = dist > ref.novelty_cut
    sz = ref.stat_z(cal.stats)
    names: list[str] | None = None
    per_n: list[np.ndarray] = []
    for n in ref.n_grid:
        idx = block_windows(cal.times, n, count, rng)
        rows = []
        ewma = np.zeros(len(ref.output_names))
        for j, w in enumerate(idx):
            centre = centres[j % len(centres)]
            values, delta = _raw_stats(ref, zc[w], novel[w], sz[w], cal.outputs[w], centre)
            # The windows follow each other like a line's: the EWMA runs along them.
            ewma = EWMA_LAMBDA * delta + (1 - EWMA_LAMBDA) * ewma
            for name, v in zip(ref.output_names, ewma, strict=True):
                values[f"output:{name}"] = float(v)
            if names is None:
                names = list(values)
            rows.append([abs(values[k]) for k in names])
        per_n.append(np.asarray(rows))
    assert names is not None
    out: dict[str, list[float]] = {name: [] for name in names}
    for mat in per_n:
        # Each statistic on its own empirical scale (the share of windows strictly below it:
        # ties, as in a statistic that never moved, never inflate it); the window's largest
        # is its joint score; the joint 99% quantile sets every threshold.
        ranks = np.stack(
            [np.searchsorted(np.sort(col), col, side="left") for col in mat.T], axis=1
        ) / len(mat)
        level = float(np.quantile(ranks.max(axis=1), 1 - ALARM_LEVEL, method="higher"))
        for j, name in enumerate(names):
            thr = float(np.quantile(mat[:, j], level, method="higher"))
            # Strictly above every bootstrap window ranked at or below the level.
            thr = float(np.nextafter(thr, np.inf))
            out[name].append(max(thr, _floor_of(name)))
    return out
