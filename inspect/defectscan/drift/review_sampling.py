"""Choosing the images worth an operator's minute: strata, budgets, rate limits, estimates.

:func:`select_for_review` fills one line's daily review budget (default 150) from the day's
inspected images, split into strata (:data:`STRATUM_SHARES`): close calls, novelty (raised to
40% for 72 hours after a drift alert), class balance, random passes (to measure escapes),
random fails (to measure false rejects) and operator-flagged images. Rules:

- never an image of the fixed holdout, never one already queued, never the same sha256 twice;
- at most one image per camera per minute (all strata together), at most
  ``max_per_lot`` per lot (the chosen strata);
- class balance: at least ``class_min`` images per class where the day has them, no class
  above 40% of that stratum;
- novelty: the most novel candidates, spread out by k-center greedy on whitened features.

The random strata are a two-stage probability sample, so their inclusion probabilities are
known exactly: in every (camera, minute) cell one image is drawn at random (stage 1, which is
also what keeps one image a minute per camera), and among the cells whose drawn image passed
(failed), a simple random sample of the stratum's size (stage 2). Each pick records
``pi = (1 / images in its cell) * (picked cells / cells)``; :func:`horvitz_thompson` then
estimates the line's escape rate (defective among passes) and false-reject rate (good among
fails) without bias from reviewed picks alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DRIFT_NOVELTY_SHARE",
    "SELECTOR_VERSION",
    "STRATUM_SHARES",
    "Candidate",
    "Pick",
    "RateEstimate",
    "estimate_rate",
    "horvitz_thompson",
    "select_for_review",
    "stratum_budgets",
]

SELECTOR_VERSION = "review-strata-1"

#: Shares of the daily budget by stratum.
STRATUM_SHARES: dict[str, float] = {
    "close_call": 0.35,
    "novelty": 0.15,
    "class_balance": 0.20,
    "random_pass": 0.15,
    "random_fail": 0.10,
    "flagged": 0.05,
}
#: The novelty stratum's share for 72 hours after a confirmed drift alert.
DRIFT_NOVELTY_SHARE = 0.40


@dataclass(frozen=True)
class Candidate:
    """One inspected image the queue may take."""

    sha256: str
    camera: str | None
    time: float  # capture time, seconds
    verdict: str  # pass | fail
    classes: tuple[str, ...] = ()  # classes the model found
    margin: float | None = None  # distance of the closest peak to its threshold
    novelty: float | None = None  # Mahalanobis distance to the drift reference
    features: np.ndarray | None = field(default=None, repr=False, compare=False)
    lot: str | None = None
    flagged: bool = False
    #: Inspected outside the fill's period and flagged since: only the flagged stratum takes it
    #: (the random strata's populations, and so their estimates, stay the period's).
    outside_period: bool = False


@dataclass(frozen=True)
class Pick:
    """A queued image: why it was chosen and with what probability."""

    sha256: str
    stratum: str
    score: float
    inclusion_probability: float
    selector_version: str = SELECTOR_VERSION


def stratum_budgets(budget: int, *, drift_alert: bool = False) -> dict[str, int]:
    """The budget split by stratum (largest remainders); novelty at 40% after a drift alert."""
    shares = dict(STRATUM_SHARES)
    if drift_alert:
        rest = 1.0 - shares["novelty"]
        scale = (1.0 - DRIFT_NOVELTY_SHARE) / rest
        shares = {
            k: (DRIFT_NOVELTY_SHARE if k == "novelty" else v * scale) for k, v in shares.items()
        }
    raw = {k: budget * v for k, v in shares.items()}
    out = {k: math.floor(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[: budget - sum(out.values())]:
        out[k] += 1
    return out


def _cell(c: Candidate) -> tuple[str | None, int]:
    return (c.camera, int(c.time // 60))


def _k_center(points: np.ndarray, k: int) -> list[int]:
    """Greedy k-center: the first point, then each time the one farthest from those chosen."""
    if k <= 0 or len(points) == 0:
        return []
    chosen = [0]
    dist = np.linalg.norm(points - points[0], axis=1)
    while len(chosen) < min(k, len(points)):
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0:
            break
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return chosen


def select_for_review(
    candidates: Iterable[Candidate],
    *,
    budget: int = 150,
    drift_alert: bool = False,
    holdout: frozenset[str] | set[str] = frozenset(),
    queued: frozenset[str] | set[str] = frozenset(),
    class_names: Sequence[str] = (),
    class_min: int = 10,
    class_max_share: float = 0.4,
    max_per_lot: int = 3,
    rng: np.random.Generator | None = None,
) -> list[Pick]:
    """One line's picks for the day (see the module docstring for the rules)."""
    rng = rng or np.random.default_rng()
    budgets = stratum_budgets(budget, drift_alert=drift_alert)
    seen: set[str] = set()
    pool: list[Candidate] = []
    for c in candidates:
        if c.sha256 in seen or c.sha256 in holdout or c.sha256 in queued:
            continue
        seen.add(c.sha256)
        pool.append(c)

    flagged = sorted((c for c in pool if c.flagged), key=lambda c: c.time)
    pool = [c for c in pool if not c.outside_period]

    picks: list[Pick] = []
    used_cells: set[tuple[str | None, int]] = set()
    lots: dict[str, int] = defaultdict(int)
    taken: set[str] = set()

    # Random strata first: their probabilities must not depend on what the others took.
    cells: dict[tuple[str | None, int], list[Candidate]] = defaultdict(list)
    for c in pool:
        cells[_cell(c)].append(c)
    reps: dict[str, list[tuple[Candidate, int]]] = {"pass": [], "fail": []}
    for key in sorted(cells, key=lambda k: (str(k[0]), k[1])):
        members = cells[key]
        rep = members[int(rng.integers(0, len(members)))]
        if rep.verdict in reps:
            reps[rep.verdict].append((rep, len(members)))
    for stratum, verdict in (("random_pass", "pass"), ("random_fail", "fail")):
        population = reps[verdict]
        n = min(budgets[stratum], len(population))
        if n == 0:
            continue
        for i in rng.choice(len(population), size=n, replace=False):
            c, size = population[int(i)]
            pi = (1.0 / size) * (n / len(population))
            picks.append(Pick(c.sha256, stratum, 0.0, pi))
            used_cells.add(_cell(c))
            taken.add(c.sha256)
            if c.lot is not None:
                lots[c.lot] += 1

    def allowed(c: Candidate) -> bool:
        if c.sha256 in taken or _cell(c) in used_cells:
            return False
        return c.lot is None or lots[c.lot] < max_per_lot

    def take(c: Candidate, stratum: str, score: float) -> None:
        picks.append(Pick(c.sha256, stratum, score, 1.0))
        used_cells.add(_cell(c))
        taken.add(c.sha256)
        if c.lot is not None:
            lots[c.lot] += 1

    for c in flagged:
        if sum(p.stratum == "flagged" for p in picks) >= budgets["flagged"]:
            break
        if allowed(c):
            take(c, "flagged", 1.0)

    close = sorted((c for c in pool if c.margin is not None), key=lambda c: c.margin or 0.0)
    n_close = 0
    for c in close:
        if n_close >= budgets["close_call"]:
            break
        if allowed(c):
            take(c, "close_call", -float(c.margin or 0.0))
            n_close += 1

    # Class balance: the rarest class first, each class capped at its share of the stratum.
    size = budgets["class_balance"]
    cap = max(1, math.floor(class_max_share * size))
    counts: dict[str, int] = dict.fromkeys(class_names, 0)
    by_class: dict[str, list[Candidate]] = {
        name: sorted((c for c in pool if name in c.classes), key=lambda c: c.time)
        for name in class_names
    }
    cursor: dict[str, int] = dict.fromkeys(class_names, 0)
    n_bal = 0
    while n_bal < size:
        open_classes = [n for n in class_names if counts[n] < cap and cursor[n] < len(by_class[n])]
        if not open_classes:
            break
        # Classes below their minimum first, then the one with the fewest picks so far.
        name = min(open_classes, key=lambda n: (counts[n] >= class_min, counts[n]))
        c = by_class[name][cursor[name]]
        cursor[name] += 1
        if allowed(c):
            take(c, "class_balance", float(counts[name]))
            counts[name] += 1
            n_bal += 1

    # Novelty: the most novel candidates, spread out (k-center) so that one cluster of new
    # images does not fill the stratum.
    novel = sorted(
        (c for c in pool if c.novelty is not None and allowed(c)),
        key=lambda c: -(c.novelty or 0.0),
    )[: 10 * max(1, budgets["novelty"])]
    if novel:
        feats = [c.features for c in novel]
        if all(f is not None for f in feats):
            order = _k_center(np.stack([np.asarray(f, np.float64) for f in feats]), len(novel))
        else:
            order = list(range(len(novel)))
        n_nov = 0
        for i in order:
            if n_nov >= budgets["novelty"]:
                break
            c = novel[i]
            if allowed(c):
                take(c, "novelty", float(c.novelty or 0.0))
                n_nov += 1
    return picks


def horvitz_thompson(
    picks: Sequence[Pick], labels: Mapping[str, bool], *, stratum: str, population: int
) -> float | None:
    """Estimated share of ``population`` with label True, from a random stratum's picks.

    ``labels``: the reviewers' answer per sha256 (True: defective for ``random_pass``, good
    for ``random_fail``); ``population``: that day's passes (fails) on the line.

    Picks not reviewed yet are not labels, and not zeros either: the reviewed ones are taken
    as a simple random subsample of the stratum's picks (a third sampling stage; the queue
    serves a fill's items in a shuffled order, so which get reviewed first does not depend on
    their labels), so each reviewed pick's probability is ``pi * reviewed / picked``. None
    when none is reviewed.
    """
    chosen = [p for p in picks if p.stratum == stratum]
    reviewed = [p for p in chosen if p.sha256 in labels]
    if not reviewed or population <= 0:
        return None
    scale = len(reviewed) / len(chosen)
    total = sum(float(labels[p.sha256]) / (p.inclusion_probability * scale) for p in reviewed)
    return total / population


@dataclass(frozen=True)
class RateEstimate:
    """A Horvitz-Thompson rate with its 95% interval, and what it rests on."""

    rate: float | None
    low: float | None
    high: float | None
    reviewed: int  # labelled picks the estimate uses
    picked: int  # picks of the stratum (reviewed or not)
    population: int  # images the fills with reviews sampled from


def estimate_rate(
    rows: Iterable[tuple[str, float, int, bool | None]], *, z: float = 1.96
) -> RateEstimate:
    """One random stratum over several fills: ``(fill, pi, population, model_wrong)`` rows.

    Per fill, the reviewed picks are a random subsample of its picks (see
    :func:`horvitz_thompson`); fills with no review yet are left out of both the numerator and
    the population (their day is simply not measured yet). The variance is the with-replacement
    approximation summed over fills; the interval is Wilson's at the design's effective sample
    size (``rate (1 - rate) / variance``, the reviewed count when no error was seen), so that
    zero escapes in 40 reviews still gives an upper bound, not ``[0, 0]``.
    """
    fills: dict[str, list[tuple[float, int, bool | None]]] = defaultdict(list)
    for fill, pi, population, wrong in rows:
        fills[fill].append((pi, population, wrong))
    picked = sum(len(v) for v in fills.values())
    total = var = 0.0
    pop = reviewed = 0
    for items in fills.values():
        labelled = [(pi, y) for pi, _, y in items if y is not None]
        r = len(labelled)
        if r == 0:
            continue
        scale = r / len(items)
        values = [float(y) / (pi * scale) for pi, y in labelled]
        t = sum(values)
        total += t
        pop += items[0][1]
        reviewed += r
        if r > 1:
            mean = t / r
            var += r / (r - 1) * sum((v - mean) ** 2 for v in values)
    if reviewed == 0 or pop <= 0:
        return RateEstimate(None, None, None, 0, picked, 0)
    rate = min(1.0, total / pop)
    variance = var / pop**2
    n_eff = rate * (1 - rate) / variance if variance > 0 and 0 < rate < 1 else float(reviewed)
    n_eff = max(1.0, min(n_eff, float(pop)))
    centre = (rate + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
    half = (z / (1 + z * z / n_eff)) * math.sqrt(
        rate * (1 - rate) / n_eff + z * z / (4 * n_eff * n_eff)
    )
    return RateEstimate(
        rate, max(0.0, centre - half), min(1.0, centre + half), reviewed, picked, pop
    )
