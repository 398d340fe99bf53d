"""Post-processing band by band, for a region too large to hold its probabilities whole.

:func:`postprocess_bands` gives what :func:`defectscan.postprocess.postprocess` gives, while
memory stays near two ``uint8`` frames: one class at a time, the mask is built, cleaned and
labelled band by band, and components that cross bands are joined through the rows where the
bands meet (the connected components of a graph, with scipy). The pipeline takes this path
only when one region exceeds its float budget (16k x 16k frames); it is the band-wise twin of
:mod:`defectscan.postprocess` and shares its private helpers (masks, morphology, painting,
the verdict), so that both paths decide the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from defectscan.postprocess import (
    Defect,
    PostprocessConfig,
    Postprocessed,
    _argmax_map,
    _morphology,
    _paint,
    _region,
    _verdict,
    defect_order,
)

__all__ = ["postprocess_bands"]


def _class_mask(probs: np.ndarray, cfg: PostprocessConfig, c: int) -> np.ndarray:
    """The raw ``uint8`` mask of class ``c`` alone (what ``class_masks(...)[c]`` gives)."""
    if cfg.activation == "sigmoid":
        return (probs[c] > cfg.thresholds[c]).view(np.uint8)
    return (_argmax_map(probs, cfg.min_confidence) == c + 1).view(np.uint8)


@dataclass
class _BandLabels:
    """8-connected components of the mask rows ``[a, b)``; their ids are ``base + label``."""

    a: int
    b: int
    base: int
    n: int  # labels 1..n-1
    stats: np.ndarray  # cv2 stats of labels 1..n-1
    centroids: np.ndarray


def postprocess_bands(
    read: Callable[[int, int], np.ndarray],
    cfg: PostprocessConfig,
    class_map: np.ndarray,
    *,
    band_rows: int = 256,
) -> Postprocessed:
    """What :func:`postprocess` gives for a region too large to hold its probabilities whole.

    ``read(a, b)`` returns the float probabilities ``[K, b - a, W]`` of rows ``[a, b)``;
    ``class_map`` (``uint8 [H, W]``, zero) is painted in place. One class at a time, its mask
    is built band by band (one ``uint8`` frame), cleaned, and labelled band by band; components
    that cross bands are joined through the rows where bands meet (a graph's connected
    components). Areas, boxes, centroids and scores add up across bands; a component's outline
    comes from its own pixels, flood-filled out of the mask when it spans bands. The result
    equals :func:`postprocess` on the whole region (up to float rounding of centroids and mean
    scores), while memory stays near two ``uint8`` frames instead of the float probabilities,
    a full mask and ``int32`` labels of the whole region.
    """
    height, width = class_map.shape
    channel_of = cfg.channel_of
    bands = [(a, min(height, a + band_rows)) for a in range(0, height, band_rows)]
    defects: list[Defect] = []
    for c in range(len(cfg.class_names)):
        mask = np.zeros((height, width), dtype=np.uint8)
        for a, b in bands:
            mask[a:b] = _class_mask(read(a, b), cfg, c)
        region = _region(mask, cfg.margin)
        if region is None:
            continue
        if cfg.morph_kernel > 0:
            y0, y1, x0, x1 = region
            mask[y0:y1, x0:x1] = _morphology(mask[y0:y1, x0:x1], cfg.morph_kernel)
        defects += _banded_class_defects(mask, read, bands, c + 1, cfg, class_map, channel_of)
        del mask
    defects.sort(key=defect_order)
    return Postprocessed(class_map=class_map, defects=defects, verdict=_verdict(defects, cfg))


def _band_labels(
    mask: np.ndarray, a: int, b: int
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(
        mask[a:b], connectivity=8, ltype=cv2.CV_32S
    )
    return n, labels, stats, centroids


def _banded_class_defects(
    mask: np.ndarray,
    read: Callable[[int, int], np.ndarray],
    bands: list[tuple[int, int]],
    class_index: int,
    cfg: PostprocessConfig,
    class_map: np.ndarray,
    channel_of: list[int],
) -> list[Defect]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    c = class_index - 1
    width = mask.shape[1]
    # -- pass 1: label every band, gather per-label statistics and the joins between bands
    done: list[_BandLabels] = []
    sums: list[np.ndarray] = []
    maxes: list[np.ndarray] = []
    join_a: list[np.ndarray] = []
    join_b: list[np.ndarray] = []
    join_x: list[np.ndarray] = []
    join_y: list[int] = []
    base = 0
    previous: np.ndarray | None = None  # global ids of the last row of the band above
    for a, b in bands:
        if cv2.countNonZero(mask[a:b]) == 0:
            previous = None
            continue
        n, labels, stats, centroids = _band_labels(mask, a, b)
        p = read(a, b)[channel_of[c]]
        flat = labels.ravel()
        sums.append(np.bincount(flat, weights=p.ravel(), minlength=n)[1:])
        peak = np.full(n, -np.inf, dtype=np.float32)
        np.maximum.at(peak, flat, p.ravel())
        maxes.append(peak[1:])
        first = np.where(labels[0] > 0, labels[0] + base, 0)
        if previous is not None:
            # 8-connectivity: pixel x of the row above touches x - 1, x and x + 1 below.
            for dx in (-1, 0, 1):
                lo, hi = max(0, -dx), min(width, width - dx)
                up, down = previous[lo:hi], first[lo + dx : hi + dx]
                hit = np.flatnonzero((up > 0) & (down > 0))
                join_a.append(up[hit])
                join_b.append(down[hit])
                join_x.append(hit + lo)
                join_y.extend([a - 1] * hit.size)
        previous = np.where(labels[-1] > 0, labels[-1] + base, 0)
        done.append(_BandLabels(a, b, base, n, stats[1:].copy(), centroids[1:].copy()))
        base += n - 1
    if not done:
        return []
    # -- components of the whole region: labels joined across bands
    n_ids = base + 1  # id 0 is background
    ja = np.concatenate(join_a) if join_a else np.zeros(0, np.int64)
    jb = np.concatenate(join_b) if join_b else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(ja.size, np.int8), (ja, jb)), shape=(n_ids, n_ids))
    _, root = connected_components(graph, directed=False)
    ids = np.concatenate([band.base + np.arange(1, band.n) for band in done])
    stats = np.concatenate([band.stats for band in done]).astype(np.int64)
    cents = np.concatenate([band.centroids for band in done])
    band_y = np.concatenate([np.full(band.n - 1, band.a, np.int64) for band in done])
    comp, comp_of = np.unique(root[ids], return_inverse=True)
    k = comp.size
    area = np.bincount(comp_of, weights=stats[:, cv2.CC_STAT_AREA], minlength=k).astype(np.int64)
    x0 = np.full(k, np.iinfo(np.int64).max)
    y0 = np.full(k, np.iinfo(np.int64).max)
    x1 = np.zeros(k, np.int64)
    y1 = np.zeros(k, np.int64)
    top = stats[:, cv2.CC_STAT_TOP] + band_y
    left = stats[:, cv2.CC_STAT_LEFT]
    np.minimum.at(x0, comp_of, left)
    np.minimum.at(y0, comp_of, top)
    np.maximum.at(x1, comp_of, left + stats[:, cv2.CC_STAT_WIDTH])
    np.maximum.at(y1, comp_of, top + stats[:, cv2.CC_STAT_HEIGHT])
    part_area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    cx = np.bincount(comp_of, weights=cents[:, 0] * part_area, minlength=k) / area
    cy = np.bincount(comp_of, weights=(cents[:, 1] + band_y) * part_area, minlength=k) / area
    score_sum = np.bincount(comp_of, weights=np.concatenate(sums), minlength=k)
    score_max = np.full(k, -np.inf, dtype=np.float32)
    np.maximum.at(score_max, comp_of, np.concatenate(maxes))
    parts = np.bincount(comp_of, minlength=k)
    keep = area >= cfg.min_area[c]
    # a pixel of each component that crosses bands: where it was joined
    seed: dict[int, tuple[int, int]] = {}
    if ja.size:
        where = np.searchsorted(comp, root[ja])
        xs = np.concatenate(join_x)
        for j in np.unique(where, return_index=True)[1]:
            seed[int(where[j])] = (int(xs[j]), join_y[j])
    # -- pass 2: paint kept components, trace the outlines of those within one band
    contours: dict[int, np.ndarray] = {}
    start = 0
    for band in done:
        n = band.n
        mine = comp_of[start : start + n - 1]
        start += n - 1
        kept_local = np.concatenate([[False], keep[mine]])
        if not kept_local.any():
            continue
        _, labels, stats_b, _ = _band_labels(mask, band.a, band.b)
        pixels = kept_local[labels]
        _paint(
            class_map[band.a : band.b], read(band.a, band.b), channel_of, class_index, 0, 0, pixels
        )
        for local in np.flatnonzero(kept_local):
            j = int(mine[local - 1])
            if parts[j] != 1:
                continue
            x, y, w, h = (int(v) for v in stats_b[local, :4])
            own = (labels[y : y + h, x : x + w] == local).view(np.uint8)
            found, _ = cv2.findContours(
                own, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y + band.a)
            )
            contours[j] = max(found, key=len)
    for j, (sx, sy) in seed.items():
        if not keep[j]:
            continue
        bx, by, bw, bh = int(x0[j]), int(y0[j]), int(x1[j] - x0[j]), int(y1[j] - y0[j])
        own = mask[by : by + bh, bx : bx + bw].copy()
        cv2.floodFill(own, None, (sx - bx, sy - by), 2, flags=8)
        cv2.threshold(own, 1, 1, cv2.THRESH_BINARY, dst=own)  # only the filled pixels stay
        found, _ = cv2.findContours(
            own, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(bx, by)
        )
        del own
        contours[j] = max(found, key=len)
    name = cfg.class_names[c]
    out: list[Defect] = []
    for j in np.flatnonzero(keep):
        contour = contours[int(j)]
        out.append(
            Defect(
                class_index=class_index,
                class_name=name,
                area=int(area[j]),
                bbox=(int(x0[j]), int(y0[j]), int(x1[j] - x0[j]), int(y1[j] - y0[j])),
                centroid=(float(cx[j]), float(cy[j])),
                perimeter=float(cv2.arcLength(contour, True)),
                polygon=contour.reshape(-1, 2).tolist(),
                mean_score=float(score_sum[j] / area[j]),
                max_score=float(score_max[j]),
            )
        )
    return out
