"""The linear algebra and resampling under drift monitoring, in numpy only.

- :func:`pca`: the top ``k`` principal axes of a feature matrix (fewer when the features
  have fewer dimensions or rows).
- :func:`ledoit_wolf`: the Ledoit-Wolf (2004) shrunk covariance and its shrinkage, written
  here (not taken from scikit-learn) and tested against the paper's formula.
- :func:`whitening`: the symmetric inverse square root of a covariance.
- :func:`block_windows`: windows of image indices drawn by a moving-block bootstrap whose
  blocks are the images of one minute of the line: consecutive line images are correlated
  (the same lot, the same lamp warming up), and blocks keep that correlation inside a
  resampled window, so thresholds drawn from them hold on the line.
- :func:`psi`: the population stability index, used only to rank what moved.
"""

from __future__ import annotations

import numpy as np

__all__ = ["block_windows", "ledoit_wolf", "pca", "psi", "whitening"]


def pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean ``[D]``, axes ``[D, k']`` and variances ``[k']`` of ``x`` ``[n, D]``; ``k' <= k``.

    ``k'`` is ``min(k, D, n - 1)``: a reference cannot have more axes than it has dimensions,
    or than its rows can span.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        msg = f"PCA needs a [n >= 2, D] matrix, got shape {x.shape}"
        raise ValueError(msg)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    kk = max(1, min(k, x.shape[1], x.shape[0] - 1))
    var = s[:kk] ** 2 / (x.shape[0] - 1)
    return mean, vt[:kk].T.copy(), var


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of ``x`` ``[n, p]`` and its shrinkage intensity.

    The target is ``mu * I`` with ``mu`` the mean eigenvalue; the intensity is the paper's
    consistent estimator ``min(b^2, d^2) / d^2`` (Ledoit & Wolf 2004, "A well-conditioned
    estimator for large-dimensional covariance matrices", lemmas 3.2-3.4), with the sample
    covariance normalised by ``n`` as in the paper. ``x`` is centred here.
    """
    x = np.asarray(x, dtype=np.float64)
    n, p = x.shape
    xc = x - x.mean(axis=0)
    s = xc.T @ xc / n
    mu = float(np.trace(s)) / p
    d2 = float(np.sum((s - mu * np.eye(p)) ** 2)) / p
    # b_bar^2 = 1/n^2 sum_k || x_k x_k^T - S ||_F^2 / p, computed without the n outer products:
    # sum_k ||x_k x_k^T||^2 = sum_k |x_k|^4, and the cross terms collapse to n ||S||^2.
    sq = np.sum(xc**2, axis=1)
    b2 = (float(np.sum(sq**2)) / n - float(np.sum(s**2))) / (n * p)
    b2 = min(b2, d2)
    shrink = 0.0 if d2 == 0 else b2 / d2
    return (1 - shrink) * s + shrink * mu * np.eye(p), shrink


def whitening(cov: np.ndarray) -> np.ndarray:
    """``cov^(-1/2)`` (symmetric): ``z = x @ W`` has identity covariance under ``cov``."""
    vals, vecs = np.linalg.eigh(cov)
    floor = max(float(vals.max()) * 1e-9, 1e-12)
    return (vecs / np.sqrt(np.maximum(vals, floor))) @ vecs.T


def block_windows(
    times: np.ndarray, n: int, count: int, rng: np.random.Generator, *, block_s: float = 60.0
) -> np.ndarray:
    """``count`` windows of ``n`` image indices each, ``[count, n]``, from moving blocks.

    ``times`` (seconds, ascending) are the capture times of the pool. A block is the images of
    ``block_s`` seconds starting at any image; blocks are drawn with replacement and joined
    until a window holds ``n`` images.
    """
    times = np.asarray(times, dtype=np.float64)
    m = len(times)
    if m == 0:
        msg = "block bootstrap needs at least one image"
        raise ValueError(msg)
    ends = np.searchsorted(times, times + block_s, side="left")
    ends = np.maximum(ends, np.arange(m) + 1)
    out = np.empty((count, n), dtype=np.int64)
    for w in range(count):
        filled = 0
        while filled < n:
            start = int(rng.integers(0, m))
            block = np.arange(start, ends[start])
            take = min(len(block), n - filled)
            out[w, filled : filled + take] = block[:take]
            filled += take
    return out


def psi(expected_edges: np.ndarray, actual: np.ndarray) -> float:
    """PSI of ``actual`` against a reference cut into equal-count bins by ``expected_edges``."""
    edges = np.asarray(expected_edges, dtype=np.float64)
    bins = len(edges) + 1
    counts = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=bins)
    q = (counts + 0.5) / (counts.sum() + 0.5 * bins)
    p = 1.0 / bins
    return float(np.sum((q - p) * np.log(q / p)))
