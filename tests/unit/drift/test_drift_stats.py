"""The drift statistics core: Ledoit-Wolf against the paper, PCA, whitening, bootstrap, rules."""

from __future__ import annotations

import numpy as np
import pytest

from defectscan.drift import AlertRule, CameraDrift, ImageRows, WindowCollector, fit_reference
from defectscan.drift.alerts import hints
from defectscan.drift.reference import DriftError, DriftReference
from defectscan.drift.stats import block_windows, ledoit_wolf, pca, psi, whitening
from defectscan.image_stats import STAT_NAMES


def _lw_paper(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit & Wolf (2004), section 3.3, literally: norms ||A||^2 = tr(A A^T) / p."""
    n, p = x.shape
    x = x - x.mean(axis=0)
    s = sum(np.outer(r, r) for r in x) / n
    eye = np.eye(p)

    def norm2(a: np.ndarray) -> float:
        return float(np.trace(a @ a.T)) / p

    m = float(np.trace(s @ eye.T)) / p  # <S, I>
    d2 = norm2(s - m * eye)
    bbar2 = sum(norm2(np.outer(r, r) - s) for r in x) / n**2
    b2 = min(bbar2, d2)
    a2 = d2 - b2
    return (b2 / d2) * m * eye + (a2 / d2) * s, b2 / d2


@pytest.mark.parametrize(("n", "p"), [(40, 10), (15, 30), (200, 5)])
def test_ledoit_wolf_matches_the_paper(n: int, p: int) -> None:
    rng = np.random.default_rng(n * p)
    a = rng.normal(size=(p, p))
    x = rng.normal(size=(n, p)) @ a + 3.0
    got, shrink = ledoit_wolf(x)
    want, want_shrink = _lw_paper(x)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert shrink == pytest.approx(want_shrink, rel=1e-9)
    assert 0.0 <= shrink <= 1.0
    # Fewer rows than dimensions: the sample covariance is singular, the shrunk one is not.
    assert np.linalg.eigvalsh(got).min() > 0


def test_pca_keeps_fewer_axes_when_the_features_have_fewer_dims() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 12)) * np.arange(1, 13) ** 2
    mean, axes, var = pca(x, 64)
    assert axes.shape == (12, 12)
    assert var.shape == (12,)
    np.testing.assert_allclose(axes.T @ axes, np.eye(12), atol=1e-10)
    assert np.all(np.diff(var) <= 0)
    np.testing.assert_allclose(mean, x.mean(axis=0))
    _, axes5, _ = pca(x, 5)
    assert axes5.shape == (12, 5)
    # The first axis is the widest column (index 11).
    assert abs(axes5[11, 0]) > 0.95


def test_whitening_gives_identity_covariance() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5000, 6)) @ rng.normal(size=(6, 6))
    cov = np.cov(x, rowvar=False)
    z = (x - x.mean(axis=0)) @ whitening(cov)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(6), atol=1e-8)


def test_block_windows_are_made_of_one_minute_runs() -> None:
    times = np.arange(0, 3600, 0.5)  # 2 images/s for an hour
    rng = np.random.default_rng(3)
    idx = block_windows(times, 300, 50, rng)
    assert idx.shape == (50, 300)
    for w in idx:
        # Runs of consecutive indices, each within 60 s of its first image.
        cuts = np.flatnonzero(np.diff(w) != 1) + 1
        for run in np.split(w, cuts):
            assert times[run[-1]] - times[run[0]] < 60.0
        assert len(cuts) >= 2  # 300 images need at least three one-minute blocks


def test_psi_is_zero_on_the_reference_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(4)
    ref = rng.normal(size=20000)
    edges = np.quantile(ref, np.linspace(0, 1, 11)[1:-1])
    assert psi(edges, rng.normal(size=20000)) < 0.01
    assert psi(edges, rng.normal(0.5, 1, size=20000)) > 0.1


def _line(
    rng: np.random.Generator, n: int, *, t0: float = 0.0, shift: float = 0.0, gain: float = 1.0
) -> ImageRows:
    """A correlated line: a random offset per minute on features and statistics."""
    times = t0 + np.arange(n, dtype=np.float64)  # one image a second
    minute = ((times - t0) // 60).astype(int)
    per_min = rng.normal(scale=0.3, size=(minute.max() + 1, 20))
    feats = rng.normal(size=(n, 20)) + per_min[minute] + shift
    stats = rng.normal(size=(n, len(STAT_NAMES))) * 0.05 + 0.5
    stats[:, 0] *= gain
    outputs = (rng.random((n, 2)) < [0.1, 0.05]).astype(np.float64)
    return ImageRows(times, feats, stats, outputs)


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    rng = np.random.default_rng(5)
    return fit_reference(_line(rng, 6000), output_names=("fail:a", "close_call"), k=64, seed=0)


def test_reference_round_trips_and_has_thresholds_per_grid_size(
    reference: DriftReference,
) -> None:
    assert reference.k == 20
    assert reference.novelty_cut > 0
    back = DriftReference.from_dict(reference.to_dict())
    np.testing.assert_allclose(back.whitening, reference.whitening)
    assert back.thresholds == reference.thresholds
    for name, values in reference.thresholds.items():
        assert len(values) == len(reference.n_grid), name
        # Larger windows average more: thresholds do not grow with the window.
        assert values[-1] <= values[0] + 1e-12, name
    assert reference.threshold_for(250) == {k: v[0] for k, v in reference.thresholds.items()}


def test_fresh_null_windows_exceed_about_one_percent_and_a_shift_alarms(
    reference: DriftReference,
) -> None:
    rng = np.random.default_rng(6)
    over = 0
    cam = CameraDrift(reference)
    for i in range(300):
        res = cam.evaluate(_line(rng, 600, t0=1e6 + 600 * i))
        over += bool(res.over)
    assert over / 300 < 0.05
    cam = CameraDrift(reference)
    states = [cam.evaluate(_line(rng, 600, t0=2e6 + 600 * i, shift=0.4)).state for i in range(3)]
    assert states == ["ok", "ok", "warning"]
    cam = CameraDrift(reference)
    results = [cam.evaluate(_line(rng, 600, t0=3e6 + 600 * i, gain=1.3)) for i in range(3)]
    assert results[-1].state in ("warning", "critical")
    assert any(h.startswith("lighting: brightness up") for h in results[-1].hints)


def test_too_few_images_is_refused() -> None:
    rng = np.random.default_rng(7)
    with pytest.raises(DriftError, match="at least 400 images"):
        fit_reference(_line(rng, 100), output_names=())


def test_alert_rule_warns_after_three_and_goes_critical_after_six_or_two_at_2x() -> None:
    rule = AlertRule()
    seq = [rule.update({"x": 1.2}) for _ in range(7)]
    assert seq == ["ok", "ok", "warning", "warning", "warning", "critical", "critical"]
    assert rule.update({}) == "ok"
    assert [rule.update({"x": 2.5}) for _ in range(2)] == ["ok", "critical"]
    rule = AlertRule()
    assert [rule.update(o) for o in ({"x": 1.5}, {}, {"x": 1.5}, {"x": 1.5})] == ["ok"] * 4


def test_hints_name_lighting_focus_and_a_new_variant() -> None:
    assert hints({"stat:brightness": -3.0}, {"stat:brightness": 2.0}) == [
        "lighting: brightness down"
    ]
    assert hints(
        {"stat:rel_sharpness": -4.0, "stat:contrast": -2.0},
        {"stat:rel_sharpness": 3.0, "stat:contrast": 1.5},
    ) == ["focus or lens: sharpness fell"]
    assert hints({"novelty": 0.2}, {"novelty": 4.0}) == [
        "new variant: features moved, image statistics steady"
    ]
    assert hints({}, {}) == []


def test_collector_closes_ten_minute_windows_merges_quiet_ones_and_caps_busy_ones() -> None:
    col = WindowCollector(seconds=600, min_images=200, max_images=1000)

    def rows(times: np.ndarray) -> ImageRows:
        n = len(times)
        return ImageRows(times, np.zeros((n, 2)), np.zeros((n, len(STAT_NAMES))), np.zeros((n, 0)))

    # One image a second for 25 minutes: windows of 600 images, each 10 minutes.
    out = col.add(rows(np.arange(0, 1500, 1.0)))
    assert [len(w) for w in out] == [600, 600]
    assert len(col) == 300
    # Quiet: one image every 10 s (60 per 10 minutes): merged until 200 images.
    col = WindowCollector()
    out = col.add(rows(np.arange(0, 4000, 10.0)))
    assert [len(w) for w in out] == [200]
    assert out[0].times[-1] - out[0].times[0] > 600
    # Busy: 5 images a second: capped at 1,000.
    col = WindowCollector()
    out = col.add(rows(np.arange(0, 500, 0.2)))
    assert [len(w) for w in out] == [1000, 1000]
