"""Escape and false-reject estimates from partly reviewed random picks: unbiased, an interval."""

from __future__ import annotations

import numpy as np

from defectscan.drift.review_sampling import Candidate, estimate_rate, select_for_review


def _line(seed: int) -> tuple[list[Candidate], dict[str, bool]]:
    """Two cameras, two hours, 30 images a minute; escapes cluster in a bad hour."""
    rng = np.random.default_rng(seed)
    cands, wrong = [], {}
    for i in range(2 * 120 * 30):
        t = (i // 2) * 2.0
        fail = rng.random() < 0.1
        cands.append(Candidate(f"h{i}", ("a", "b")[i % 2], t, "fail" if fail else "pass"))
        bad_hour = 1800 <= t < 5400
        wrong[f"h{i}"] = rng.random() < ((0.10 if bad_hour else 0.02) if not fail else 0.3)
    return cands, wrong


def test_unreviewed_picks_are_not_zeros_and_the_interval_covers_the_truth() -> None:
    cands, wrong = _line(5)
    passes = [c for c in cands if c.verdict == "pass"]
    truth = float(np.mean([wrong[c.sha256] for c in passes]))
    estimates, zeros, covered = [], [], 0
    reps = 200
    for rep in range(reps):
        rng = np.random.default_rng([11, rep])
        picks = [
            p for p in select_for_review(cands, budget=300, rng=rng) if p.stratum == "random_pass"
        ]
        # Reviewers got through 60% of the picks (in the queue's shuffled order).
        reviewed = set(rng.permutation([p.sha256 for p in picks])[: int(0.6 * len(picks))])
        rows = [
            (
                "day1",
                p.inclusion_probability,
                len(passes),
                wrong[p.sha256] if p.sha256 in reviewed else None,
            )
            for p in picks
        ]
        e = estimate_rate(rows)
        assert e.rate is not None
        assert e.low is not None
        assert e.high is not None
        assert e.reviewed == len(reviewed)
        assert e.picked == len(picks)
        assert e.population == len(passes)
        estimates.append(e.rate)
        covered += e.low <= truth <= e.high
        # Counting unreviewed picks as "no escape" would understate the rate by 40%.
        zeros.append(sum(y / pi for _, pi, _, y in rows if y) / len(passes))
    se = float(np.std(estimates)) / np.sqrt(reps)
    assert abs(float(np.mean(estimates)) - truth) < 3 * se + 1e-3
    assert float(np.mean(zeros)) < 0.75 * truth
    assert covered / reps >= 0.88


def test_no_review_no_estimate_and_zero_errors_still_give_an_upper_bound() -> None:
    none = estimate_rate([("d", 0.01, 1000, None)] * 5)
    assert none.rate is None
    assert none.picked == 5
    assert none.reviewed == 0
    clean = estimate_rate([("d", 0.01, 4000, False)] * 40 + [("d2", 0.01, 4000, None)] * 3)
    assert clean.rate == 0.0
    assert clean.low == 0.0
    assert clean.high is not None
    assert 0.02 < clean.high < 0.15  # Wilson at n = 40: about 8.8%
    assert clean.population == 4000  # the day without a review is not counted
