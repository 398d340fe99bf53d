"""The review queue's sampling: budgets, rate limits, class minima, dedupe, holdout, estimates."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from defectscan.drift.review_sampling import (
    Candidate,
    horvitz_thompson,
    select_for_review,
    stratum_budgets,
)

CLASSES = ("scratch", "spot", "stain")


def _burst(rng: np.random.Generator, seconds: int = 600, per_s: int = 100) -> list[Candidate]:
    """Two cameras at 100 images/s each: margins, novelty, classes, lots and flags at random."""
    out = []
    for i in range(seconds * per_s):
        t = i / per_s
        fail = rng.random() < 0.2
        out.append(
            Candidate(
                sha256=f"s{i}",
                camera=("a", "b")[i % 2],
                time=t,
                verdict="fail" if fail else "pass",
                classes=(CLASSES[int(rng.integers(0, 3))],) if fail else (),
                margin=float(rng.random()),
                novelty=float(rng.gamma(2.0)),
                features=rng.normal(size=4),
                lot=f"lot{int(t // 30)}",
                flagged=rng.random() < 0.001,
            )
        )
    return out


def test_budgets_follow_the_shares_and_a_drift_alert_raises_novelty() -> None:
    b = stratum_budgets(150)
    assert sum(b.values()) == 150
    assert b["close_call"] in (52, 53)
    assert b["random_pass"] in (22, 23)
    assert b["flagged"] in (7, 8)
    d = stratum_budgets(150, drift_alert=True)
    assert sum(d.values()) == 150
    assert d["novelty"] == 60
    assert d["close_call"] < b["close_call"]


def test_a_100_images_per_second_burst_keeps_every_rate_limit() -> None:
    rng = np.random.default_rng(0)
    cands = _burst(rng)
    picks = select_for_review(cands, budget=150, class_names=CLASSES, class_min=10, rng=rng)
    by_sha = {c.sha256: c for c in cands}
    budgets = stratum_budgets(150)
    assert len(picks) <= 150
    per_stratum = Counter(p.stratum for p in picks)
    for stratum, n in per_stratum.items():
        assert n <= budgets[stratum], stratum
    # Ten minutes, two cameras: at most 20 picks by the one-a-minute-per-camera rule.
    cells = Counter((by_sha[p.sha256].camera, int(by_sha[p.sha256].time // 60)) for p in picks)
    assert max(cells.values()) == 1
    assert len(picks) == 20
    assert len({p.sha256 for p in picks}) == len(picks)


def test_chosen_strata_take_at_most_three_images_of_a_lot() -> None:
    rng = np.random.default_rng(4)
    # One long lot on one camera: an image every 61 s, all close calls and novel.
    cands = [
        Candidate(f"l{i}", "a", 61.0 * i, "pass", margin=0.001 * i, novelty=5.0 - 0.001 * i,
                  lot="L7", flagged=i < 10)
        for i in range(400)
    ]  # fmt: skip
    picks = select_for_review(cands, budget=150, rng=rng)
    chosen = [p for p in picks if not p.stratum.startswith("random")]
    randoms = [p for p in picks if p.stratum.startswith("random")]
    assert randoms  # the random strata sample the lot like any other image
    assert len(chosen) == max(0, 3 - len(randoms))


def test_class_minima_and_the_cap_per_class() -> None:
    rng = np.random.default_rng(1)
    cands = []
    for i in range(3000):
        # "stain" is rare (12 images), "scratch" common: one image every 61 s per camera.
        name = "stain" if i < 12 else ("scratch" if i % 4 else "spot")
        cands.append(Candidate(f"c{i}", f"cam{i % 3}", 61.0 * i, "fail", classes=(name,), lot=None))
    picks = select_for_review(cands, budget=150, class_names=CLASSES, class_min=10, rng=rng)
    bal = Counter(
        next(c for c in cands if c.sha256 == p.sha256).classes[0]
        for p in picks
        if p.stratum == "class_balance"
    )
    assert bal["stain"] >= 10
    assert sum(bal.values()) == stratum_budgets(150)["class_balance"]
    assert max(bal.values()) <= 0.4 * sum(bal.values())


def test_duplicates_the_holdout_and_queued_images_are_never_picked() -> None:
    rng = np.random.default_rng(2)
    cands = [
        Candidate(f"x{i % 50}", "a", 60.0 * i, "pass", margin=0.01 * (i % 50)) for i in range(300)
    ]
    holdout = {"x0", "x1", "x2"}
    queued = {"x3"}
    picks = select_for_review(cands, budget=150, holdout=holdout, queued=queued, rng=rng)
    shas = [p.sha256 for p in picks]
    assert len(shas) == len(set(shas))
    assert not (set(shas) & (holdout | queued))
    assert set(shas) <= {f"x{i}" for i in range(4, 50)}


def test_horvitz_thompson_is_unbiased_on_a_simulated_line() -> None:
    """Escapes cluster in time (a bad hour): the estimate is still unbiased over repetitions."""
    rng = np.random.default_rng(3)
    cands, defective = [], {}
    for i in range(2 * 120 * 30):  # two cameras, two hours, 30 images a minute each
        t = (i // 2) * 2.0
        bad_hour = 1800 <= t < 5400
        fail = rng.random() < 0.1
        cands.append(Candidate(f"h{i}", ("a", "b")[i % 2], t, "fail" if fail else "pass"))
        # Escapes: defective among passes (2%, 10% in the bad hour); false rejects: good fails.
        defective[f"h{i}"] = rng.random() < ((0.10 if bad_hour else 0.02) if not fail else 0.7)
    passes = [c for c in cands if c.verdict == "pass"]
    fails = [c for c in cands if c.verdict == "fail"]
    true_escape = float(np.mean([defective[c.sha256] for c in passes]))
    true_false_reject = float(np.mean([not defective[c.sha256] for c in fails]))
    esc, frj = [], []
    for rep in range(300):
        picks = select_for_review(cands, budget=150, rng=np.random.default_rng([7, rep]))
        labels_pass = {p.sha256: defective[p.sha256] for p in picks}
        labels_fail = {p.sha256: not defective[p.sha256] for p in picks}
        e = horvitz_thompson(picks, labels_pass, stratum="random_pass", population=len(passes))
        f = horvitz_thompson(picks, labels_fail, stratum="random_fail", population=len(fails))
        assert e is not None
        assert f is not None
        esc.append(e)
        frj.append(f)
    for est, truth in ((esc, true_escape), (frj, true_false_reject)):
        se = float(np.std(est)) / np.sqrt(len(est))
        assert abs(float(np.mean(est)) - truth) < 3 * se + 1e-3, (np.mean(est), truth, se)
    # Each pick carries its probability: a random pass's is (1/cell size) * (n / cells).
    picks = select_for_review(cands, budget=150, rng=np.random.default_rng(0))
    random_picks = [p for p in picks if p.stratum == "random_pass"]
    assert random_picks
    assert all(0 < p.inclusion_probability < 1 for p in random_picks)
    assert all(p.selector_version == "review-strata-1" for p in picks)


def test_no_reviews_no_estimate() -> None:
    assert horvitz_thompson([], {}, stratum="random_pass", population=10) is None
    with pytest.raises(KeyError):
        stratum_budgets(10)["nonexistent"]


def test_images_from_outside_the_period_enter_only_the_flagged_stratum() -> None:
    rng = np.random.default_rng(5)
    inside = [
        Candidate(f"in{i}", "a", 61.0 * i, "pass" if i % 3 else "fail", margin=0.01 * (i % 7))
        for i in range(300)
    ]
    # Inspected days before the period: flagged since (3), or not (3, a bug upstream).
    outside = [
        Candidate(f"out{i}", "a", -86_400.0 * 3 + 61.0 * i, "pass", margin=0.0,
                  flagged=i < 3, outside_period=True)
        for i in range(6)
    ]  # fmt: skip
    picks = select_for_review([*inside, *outside], budget=150, rng=rng)
    by_stratum = Counter(p.stratum for p in picks if p.sha256.startswith("out"))
    assert by_stratum == {"flagged": 3}
    assert {p.inclusion_probability for p in picks if p.stratum == "flagged"} == {1.0}
