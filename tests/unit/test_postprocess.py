"""Post-processing: known defects in hand-built probability maps come out exactly right."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from defectscan import postprocess as postprocess_module
from defectscan.config import LineConfig
from defectscan.errors import ConfigError
from defectscan.model.spec import ModelSpec
from defectscan.postprocess import (
    Defect,
    PostprocessConfig,
    class_masks,
    postprocess,
)
from defectscan.postprocess_bands import postprocess_bands

H, W = 64, 96


def _sigmoid_cfg(**kw: object) -> PostprocessConfig:
    return PostprocessConfig(activation="sigmoid", class_names=("scratch", "dent"), **kw)  # type: ignore[arg-type]


def _softmax_cfg(**kw: object) -> PostprocessConfig:
    return PostprocessConfig(
        activation="softmax",
        class_names=("scratch", "dent", "stain"),
        **kw,  # type: ignore[arg-type]
    )


def _disc(cx: int, cy: int, r: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, (cx, cy), r, 1, thickness=-1)
    return m.astype(bool)


def _inside_bbox(d: Defect) -> bool:
    x, y, w, h = d.bbox
    pts = np.array(d.polygon)
    return bool(
        (pts[:, 0] >= x).all()
        and (pts[:, 0] < x + w).all()
        and (pts[:, 1] >= y).all()
        and (pts[:, 1] < y + h).all()
    )


# --- sigmoid ----------------------------------------------------------------------------


def test_sigmoid_rectangle_and_disc_give_exact_defects() -> None:
    probs = np.full((2, H, W), 0.1, np.float32)
    # Scratch: 20x10 rectangle with a left-to-right score gradient 0.6..0.98.
    probs[0, 5:15, 10:30] = np.linspace(0.6, 0.98, 20, dtype=np.float32)[None, :]
    disc = _disc(60, 40, 6)
    probs[1][disc] = 0.8
    post = postprocess(probs, _sigmoid_cfg())

    assert [d.class_name for d in post.defects] == ["scratch", "dent"]
    scratch, dent = post.defects
    assert scratch.class_index == 1
    assert scratch.area == 200
    assert scratch.bbox == (10, 5, 20, 10)
    assert scratch.centroid == pytest.approx((19.5, 9.5))
    assert sorted(map(tuple, scratch.polygon)) == [(10, 5), (10, 14), (29, 5), (29, 14)]
    assert scratch.perimeter == pytest.approx(2 * (19 + 9))
    assert scratch.mean_score == pytest.approx(0.79, abs=1e-6)
    assert scratch.max_score == pytest.approx(0.98, abs=1e-6)

    assert dent.class_index == 2
    assert dent.area == int(disc.sum())
    assert dent.bbox == (54, 34, 13, 13)
    assert dent.centroid == pytest.approx((60.0, 40.0))
    assert _inside_bbox(dent)
    assert dent.mean_score == pytest.approx(0.8)
    assert dent.perimeter == pytest.approx(2 * np.pi * 6, rel=0.15)

    expected = np.zeros((H, W), np.uint8)
    expected[5:15, 10:30] = 1
    expected[disc] = 2
    np.testing.assert_array_equal(post.class_map, expected)
    assert post.class_map.dtype == np.uint8
    assert post.verdict == "fail"


def test_sigmoid_thresholds_are_per_class_and_strict() -> None:
    probs = np.full((2, H, W), 0.0, np.float32)
    probs[0, 10:20, 10:20] = 0.6  # scratch at 0.6
    probs[1, 30:40, 50:60] = 0.6  # dent at 0.6
    probs[0, 50:55, 80:90] = 0.5  # exactly the threshold: not a defect (strictly greater)
    post = postprocess(probs, _sigmoid_cfg(thresholds=(0.5, 0.7)))
    assert [(d.class_name, d.bbox) for d in post.defects] == [("scratch", (10, 10, 10, 10))]
    lowered = postprocess(probs, _sigmoid_cfg(thresholds=(0.5, 0.55)))
    assert [d.class_name for d in lowered.defects] == ["scratch", "dent"]
    assert postprocess(probs, _sigmoid_cfg(thresholds=(0.49, 1.0))).defects[1].bbox == (
        80,
        50,
        10,
        5,
    )


def test_overlapping_sigmoid_classes_are_multi_label_and_the_map_shows_the_likelier() -> None:
    probs = np.full((2, H, W), 0.05, np.float32)
    probs[0, 10:30, 10:40] = 0.7  # scratch 20x30
    probs[1, 20:40, 30:60] = 0.9  # dent 20x30, overlapping the scratch in [20:30, 30:40]
    post = postprocess(probs, _sigmoid_cfg())
    scratch, dent = post.defects
    # Both defects keep their full extent: the classes are independent labels.
    assert (scratch.area, scratch.bbox) == (600, (10, 10, 30, 20))
    assert (dent.area, dent.bbox) == (600, (30, 20, 30, 20))
    assert (post.class_map[20:30, 30:40] == 2).all()  # dent is more probable there
    assert (post.class_map[10:20, 10:40] == 1).all()
    assert (post.class_map[20:30, 10:30] == 1).all()
    assert int((post.class_map > 0).sum()) == 600 + 600 - 100
    masks = class_masks(probs, _sigmoid_cfg())
    assert int((masks[0] & masks[1]).sum()) == 100


def test_sigmoid_defaults_reproduce_raw_thresholding_exactly() -> None:
    # The seed's predict: mask = sigmoid(logits) > threshold. An imported seed checkpoint must
    # give the same masks through post-processing when nothing else is configured.
    rng = np.random.default_rng(0)
    probs = rng.random((1, 120, 130), dtype=np.float32)
    probs[0, 40:60, 40:60] = 0.5  # ties with the threshold stay background
    cfg = PostprocessConfig(activation="sigmoid", class_names=("defect",))
    post = postprocess(probs, cfg)
    np.testing.assert_array_equal(post.class_map, (probs[0] > 0.5).astype(np.uint8))
    assert sum(d.area for d in post.defects) == int((probs[0] > 0.5).sum())
    two = rng.random((2, 120, 130), dtype=np.float32)
    two[:, :10, :10] = 0.8  # both classes over threshold and equally likely: the first shows
    post2 = postprocess(two, _sigmoid_cfg(thresholds=(0.3, 0.6)))
    over = two > np.array([0.3, 0.6], np.float32)[:, None, None]
    score = np.where(over, two, -1.0)
    expected = np.where(over.any(0), score.argmax(0) + 1, 0)
    np.testing.assert_array_equal(post2.class_map, expected)
    assert (post2.class_map[:10, :10] == 1).all()


# --- softmax ----------------------------------------------------------------------------


def _softmax_scene() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    probs = np.zeros((4, H, W), np.float32)
    probs[0] = 0.85
    probs[1:] = 0.05
    regions = {
        "scratch": (slice(4, 12), slice(4, 44)),  # 8 x 40 = 320
        "dent": (slice(30, 50), slice(10, 25)),  # 20 x 15 = 300
        "stain": (slice(40, 60), slice(60, 90)),  # 20 x 30 = 600
    }
    truth = {}
    for c, (name, (ys, xs)) in enumerate(regions.items(), start=1):
        probs[:, ys, xs] = 0.05
        probs[c, ys, xs] = 0.85
        m = np.zeros((H, W), bool)
        m[ys, xs] = True
        truth[name] = m
    return probs, truth


def test_softmax_argmax_gives_exact_classes_and_defects() -> None:
    probs, truth = _softmax_scene()
    post = postprocess(probs, _softmax_cfg())
    assert [(d.class_index, d.class_name, d.area, d.bbox) for d in post.defects] == [
        (1, "scratch", 320, (4, 4, 40, 8)),
        (2, "dent", 300, (10, 30, 15, 20)),
        (3, "stain", 600, (60, 40, 30, 20)),
    ]
    assert post.defects[2].centroid == pytest.approx((74.5, 49.5))
    assert all(_inside_bbox(d) for d in post.defects)
    assert all(d.mean_score == pytest.approx(0.85) for d in post.defects)
    expected = np.zeros((H, W), np.uint8)
    for c, m in enumerate(truth.values(), start=1):
        expected[m] = c
    np.testing.assert_array_equal(post.class_map, expected)
    np.testing.assert_array_equal(post.class_map, probs.argmax(0))


def test_softmax_min_confidence_turns_unsure_pixels_into_background() -> None:
    probs, _ = _softmax_scene()
    # An unsure blob: dent wins the argmax with only 0.4.
    probs[:, 20:26, 60:70] = np.array([0.3, 0.1, 0.4, 0.2], np.float32)[:, None, None]
    plain = postprocess(probs, _softmax_cfg())
    assert (plain.class_map[20:26, 60:70] == 2).all()
    assert len(plain.defects) == 4
    sure = postprocess(probs, _softmax_cfg(min_confidence=0.5))
    assert (sure.class_map[20:26, 60:70] == 0).all()
    assert [d.area for d in sure.defects] == [320, 300, 600]  # the confident ones stay


def test_softmax_defaults_reproduce_argmax_exactly_including_ties() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 90, 110)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    probs[:, :10, :10] = 0.25  # four-way tie: argmax takes the first (background)
    probs[:, 10:20, :10] = np.array([0.1, 0.1, 0.4, 0.4], np.float32)[:, None, None]
    post = postprocess(probs, _softmax_cfg())
    np.testing.assert_array_equal(post.class_map, probs.argmax(0))
    assert (post.class_map[10:20, :10] == 2).all()


# --- cleaning ---------------------------------------------------------------------------


def test_min_area_drops_small_components_from_defects_and_class_map() -> None:
    probs = np.full((2, H, W), 0.1, np.float32)
    probs[0, 10:12, 10:12] = 0.9  # 4 px scratch
    probs[0, 30:40, 30:35] = 0.9  # 50 px scratch
    probs[1, 50:53, 70:73] = 0.9  # 9 px dent
    post = postprocess(probs, _sigmoid_cfg(min_area=(10, 9)))
    assert [(d.class_name, d.area) for d in post.defects] == [("scratch", 50), ("dent", 9)]
    assert (post.class_map[10:12, 10:12] == 0).all()
    assert (post.class_map[30:40, 30:35] == 1).all()
    assert (post.class_map[50:53, 70:73] == 2).all()
    stricter = postprocess(probs, _sigmoid_cfg(min_area=(10, 10)))
    assert [d.class_name for d in stricter.defects] == ["scratch"]
    assert int(stricter.class_map.sum()) == 50


def test_morphology_removes_one_pixel_noise_and_keeps_real_defects() -> None:
    rng = np.random.default_rng(2)
    probs = np.full((2, H, W), 0.1, np.float32)
    disc = _disc(40, 30, 8)
    probs[0][disc] = 0.9
    ys, xs = rng.integers(0, H, 40), rng.integers(0, W, 40)
    far = np.hypot(xs - 40, ys - 30) > 12
    probs[0, ys[far], xs[far]] = 0.9  # isolated specks
    probs[1, 5, 90] = 0.9  # a dent speck at the frame border
    raw = postprocess(probs, _sigmoid_cfg())
    assert len(raw.defects) > 10
    clean = postprocess(probs, _sigmoid_cfg(morph_kernel=3))
    assert len(clean.defects) == 1
    (d,) = clean.defects
    assert d.class_name == "scratch"
    assert abs(d.area - int(disc.sum())) <= 8
    assert d.centroid == pytest.approx((40.0, 30.0), abs=0.5)
    # Cropped morphology gives exactly what the same operations give on the whole frame.
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    full = cv2.morphologyEx((probs[0] > 0.5).astype(np.uint8), cv2.MORPH_OPEN, kernel)
    full = cv2.morphologyEx(full, cv2.MORPH_CLOSE, kernel)
    np.testing.assert_array_equal(clean.class_map, full)


def test_morphology_crop_matches_full_frame_near_the_borders() -> None:
    probs = np.full((1, H, W), 0.1, np.float32)
    probs[0, 0:9, 0:14] = 0.9  # touching the top-left corner
    probs[0, 0:9, 16:30] = 0.9  # 2 px gap: the closing bridges it
    probs[0, 55:64, 85:96] = 0.9  # bottom-right corner
    probs[0, 55:64, 82] = 0.9  # 1 px wide line, 2 px away
    cfg = PostprocessConfig(activation="sigmoid", class_names=("defect",), morph_kernel=5)
    post = postprocess(probs, cfg)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    full = cv2.morphologyEx((probs[0] > 0.5).astype(np.uint8), cv2.MORPH_OPEN, kernel)
    full = cv2.morphologyEx(full, cv2.MORPH_CLOSE, kernel)
    np.testing.assert_array_equal(post.class_map, full)
    assert sum(d.area for d in post.defects) == int(full.sum())


# --- components and contours ------------------------------------------------------------


def test_each_contour_belongs_to_its_own_component() -> None:
    probs = np.full((1, H, W), 0.1, np.float32)
    # A U shape whose bounding box contains a separate blob, and a ring with a hole.
    probs[0, 10:40, 10:14] = 0.9
    probs[0, 10:40, 36:40] = 0.9
    probs[0, 36:40, 10:40] = 0.9
    probs[0, 18:24, 22:28] = 0.6  # the blob inside the U's bbox, with its own score
    ring = _disc(70, 30, 10) & ~_disc(70, 30, 5)
    probs[0][ring] = 0.9
    probs[0, 50, 5] = 0.9  # diagonal neighbours are one component (8-connectivity)
    probs[0, 51, 6] = 0.9
    cfg = PostprocessConfig(activation="sigmoid", class_names=("defect",))
    post = postprocess(probs, cfg)
    by_bbox = {d.bbox: d for d in post.defects}
    assert len(post.defects) == 4
    u = by_bbox[(10, 10, 30, 30)]
    assert u.area == 30 * 4 * 2 + 4 * 22
    blob = by_bbox[(22, 18, 6, 6)]
    assert blob.area == 36
    assert sorted(map(tuple, blob.polygon)) == [(22, 18), (22, 23), (27, 18), (27, 23)]
    assert (blob.mean_score, blob.max_score) == pytest.approx((0.6, 0.6))
    assert (u.mean_score, u.max_score) == pytest.approx((0.9, 0.9))  # the blob is not counted
    # The U's outline does not wander onto the blob.
    assert not any(22 <= x <= 27 and 18 <= y <= 23 for x, y in u.polygon)
    r = by_bbox[(60, 20, 21, 21)]
    assert r.area == int(ring.sum())
    assert r.centroid == pytest.approx((70.0, 30.0))
    assert np.hypot(*(np.array(r.polygon) - 70).T).min() >= 9  # outer contour only
    assert by_bbox[(5, 50, 2, 2)].area == 2
    assert all(_inside_bbox(d) for d in post.defects)


def _noise_probs(channels: int, seed: int, softmax: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((channels, 150, 170)).astype(np.float32)
    noise = np.stack([cv2.GaussianBlur(ch, (0, 0), 1.5) for ch in white])
    if softmax:
        e = np.exp(6.0 * noise)
        return (e / e.sum(0, keepdims=True)).astype(np.float32)
    probs = 1.0 / (1.0 + np.exp(-8.0 * noise))
    for ys, xs in ((slice(15, 125), slice(5, 38)), (slice(0, 150), slice(76, 87))):
        probs[0, ys, xs] = 0.1  # clear ground around the shapes below
    probs[0, 56:96, 112:150] = 0.1
    # One component across the whole height (every band), a U whose arms meet in the last band
    # only, and a ring: joins across bands must make each of them one defect.
    probs[0, 2:148, 80:83] = 0.95
    probs[0, 20:120, 10:13] = 0.95
    probs[0, 20:120, 30:33] = 0.95
    probs[0, 117:120, 10:33] = 0.95
    ring = _disc(130, 75, 14, shape=(150, 170)) & ~_disc(130, 75, 7, shape=(150, 170))
    probs[0][ring] = 0.95
    return probs.astype(np.float32)


@pytest.mark.parametrize(
    ("activation", "min_area", "morph", "band_rows"),
    [
        ("sigmoid", 0, 0, 7),
        ("sigmoid", 6, 0, 16),
        ("sigmoid", 6, 3, 32),
        ("softmax", 0, 0, 5),
        ("softmax", 4, 3, 64),
    ],
)
def test_banded_postprocessing_equals_the_whole_region(
    activation: str, min_area: int, morph: int, band_rows: int
) -> None:
    if activation == "sigmoid":
        probs = _noise_probs(2, 5, softmax=False)
        cfg = _sigmoid_cfg(
            thresholds=(0.7, 0.75), min_area=(min_area, min_area), morph_kernel=morph
        )
    else:
        probs = _noise_probs(4, 6, softmax=True)
        cfg = _softmax_cfg(min_confidence=0.4, min_area=(min_area,) * 3, morph_kernel=morph)
    whole = postprocess(probs, cfg)
    class_map = np.zeros(probs.shape[1:], np.uint8)
    reads: list[tuple[int, int]] = []

    def read(a: int, b: int) -> np.ndarray:
        reads.append((a, b))
        assert b - a <= band_rows  # never more than a band at a time
        return probs[:, a:b]

    banded = postprocess_bands(read, cfg, class_map, band_rows=band_rows)
    assert banded.class_map is class_map
    np.testing.assert_array_equal(class_map, whole.class_map)
    assert banded.verdict == whole.verdict
    assert len(banded.defects) == len(whole.defects) > 20

    def exact(d: Defect) -> Defect:
        return dataclasses.replace(d, centroid=(0.0, 0.0), mean_score=0.0)

    assert [exact(d) for d in banded.defects] == [exact(d) for d in whole.defects]
    np.testing.assert_allclose(
        [(*d.centroid, d.mean_score) for d in banded.defects],
        [(*d.centroid, d.mean_score) for d in whole.defects],
        rtol=1e-6,
    )
    if activation == "sigmoid":
        # the tall bar, the U and the ring are single defects spanning bands
        spans = [
            d
            for d in banded.defects
            if d.bbox[1] // band_rows != (d.bbox[1] + d.bbox[3] - 1) // band_rows
        ]
        assert {(d.bbox[0], d.bbox[1]) for d in spans} >= {(80, 2), (10, 20), (116, 61)}


@pytest.mark.parametrize("min_area", [0, 6])
def test_irregular_noisy_masks_match_a_full_frame_reference_on_both_code_paths(
    min_area: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Thresholded blurred noise: hundreds of irregular components, holes, islands in holes.
    rng = np.random.default_rng(5)
    white = rng.standard_normal((2, 150, 170)).astype(np.float32)
    noise = np.stack([cv2.GaussianBlur(ch, (0, 0), 1.5) for ch in white])
    probs = 1.0 / (1.0 + np.exp(-8.0 * noise))
    cfg = _sigmoid_cfg(thresholds=(0.7, 0.75), min_area=(min_area, min_area))
    results = []
    # Few components are labelled per bbox, many in one pass: both must agree exactly.
    for many in (0, 10**9):
        monkeypatch.setattr(postprocess_module, "_MANY_COMPONENTS", many)
        results.append(postprocess(probs, cfg))
    a, b = (r.defects for r in results)
    # Identical but for the last bit of the centroid (offsets are added in another order).
    assert [dataclasses.replace(d, centroid=(0.0, 0.0)) for d in a] == [
        dataclasses.replace(d, centroid=(0.0, 0.0)) for d in b
    ]
    np.testing.assert_allclose([d.centroid for d in a], [d.centroid for d in b], rtol=1e-12)
    np.testing.assert_array_equal(results[0].class_map, results[1].class_map)
    post = results[0]
    expected_map = np.zeros(probs.shape[1:], np.uint8)
    for c, thr in enumerate(cfg.thresholds):
        mask = (probs[c] > thr).astype(np.uint8)
        n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        kept = [i for i in range(1, n) if stats[i, 4] >= min_area]
        assert n - 1 > 64  # enough components for the one-pass path to matter
        got = [d for d in post.defects if d.class_index == c + 1]
        assert sorted((d.area, d.bbox) for d in got) == sorted(
            (int(stats[i, 4]), tuple(int(v) for v in stats[i, :4])) for i in kept
        )
        np.testing.assert_allclose(
            sorted(d.centroid for d in got), sorted(tuple(centroids[i]) for i in kept), rtol=1e-9
        )
        for d in got:
            assert _inside_bbox(d)
            assert d.mean_score > thr
        keep = np.isin(labels, kept)
        over = expected_map == 0
        # Where both classes are kept, the likelier one shows (class 1 on ties).
        prior = probs[0] if c == 1 else np.full_like(probs[0], -1.0)
        expected_map[keep & (over | (probs[c] > prior))] = c + 1
    np.testing.assert_array_equal(post.class_map, expected_map)
    if min_area == 0:
        raw = np.where(probs[1] > 0.75, 2, 0)
        raw[(probs[0] > 0.7) & ~((probs[1] > 0.75) & (probs[1] > probs[0]))] = 1
        np.testing.assert_array_equal(post.class_map, raw)


def test_defects_are_sorted_by_class_then_position_and_serialise_to_json() -> None:
    probs = np.full((2, H, W), 0.1, np.float32)
    for y, x in ((40, 5), (5, 60), (5, 20)):
        probs[1, y : y + 3, x : x + 3] = 0.9
        probs[0, y + 10 : y + 13, x + 5 : x + 8] = 0.8
    post = postprocess(probs, _sigmoid_cfg())
    keys = [(d.class_index, d.bbox[1], d.bbox[0]) for d in post.defects]
    assert keys == sorted(keys)
    assert keys[0] == (1, 15, 25)
    assert keys[3] == (2, 5, 20)
    d = json.loads(json.dumps(post.defects[0].to_dict()))
    assert d == {
        "class": "scratch",
        "class_index": 1,
        "area": 9,
        "bbox": [25, 15, 3, 3],
        "centroid": [26.0, 16.0],
        "score": pytest.approx(0.8),  # the mean score, the one number a row shows
        "perimeter": pytest.approx(8.0),
        "polygon": [[25, 15], [25, 17], [27, 17], [27, 15]],
        "mean_score": pytest.approx(0.8),
        "max_score": pytest.approx(0.8),
    }


# --- verdict ----------------------------------------------------------------------------


def test_verdict_follows_the_per_class_rules() -> None:
    probs = np.full((2, H, W), 0.1, np.float32)
    probs[0, 10:15, 10:20] = 0.9  # 50 px scratch
    cfg = _sigmoid_cfg
    assert postprocess(np.full((2, H, W), 0.1, np.float32), cfg()).verdict == "pass"
    assert postprocess(probs, cfg()).verdict == "fail"  # None: any kept defect fails
    assert postprocess(probs, cfg(fail_area=(100, None))).verdict == "pass"  # too small
    assert postprocess(probs, cfg(fail_area=(50, None))).verdict == "fail"  # at the limit
    assert postprocess(probs, cfg(fail_area=(51, 1))).verdict == "pass"
    # A dropped defect cannot fail the part.
    assert postprocess(probs, cfg(min_area=(60, 0))).verdict == "pass"
    probs[1, 40:42, 40:42] = 0.9  # a 4 px dent
    assert postprocess(probs, cfg(fail_area=(100, 5))).verdict == "pass"
    assert postprocess(probs, cfg(fail_area=(100, 4))).verdict == "fail"


# --- configuration and validation -------------------------------------------------------


def test_config_from_spec_and_line_overrides() -> None:
    spec = ModelSpec(
        n_channels=3,
        activation="sigmoid",
        class_names=("scratch", "dent"),
        thresholds=(0.4, 0.6),
        min_area=(5, 7),
    )
    base = PostprocessConfig.from_spec(spec)
    assert base.thresholds == (0.4, 0.6)
    assert base.min_area == (5, 7)
    assert base.fail_area == (None, None)
    line = LineConfig(
        name="L1", thresholds={"dent": 0.8}, min_area={"scratch": 20}, fail_area={"dent": 100}
    )
    cfg = PostprocessConfig.from_spec(spec, line, morph_kernel=3)
    assert cfg.thresholds == (0.4, 0.8)
    assert cfg.min_area == (20, 7)
    assert cfg.fail_area == (None, 100)
    assert cfg.morph_kernel == 3
    with pytest.raises(ConfigError, match="unknown classes \\['crack'\\]"):
        PostprocessConfig.from_spec(spec, LineConfig(name="L2", min_area={"crack": 3}))
    with pytest.raises(ConfigError, match="unknown post-processing settings"):
        PostprocessConfig.from_spec(spec, morph=3)
    soft = ModelSpec(n_channels=3, activation="softmax", class_names=("a", "b"), min_confidence=0.6)
    assert PostprocessConfig.from_spec(soft).min_confidence == 0.6
    assert PostprocessConfig.from_spec(soft).n_channels == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"thresholds": (0.5,)}, "thresholds has 1 values"),
        ({"thresholds": (0.5, 1.5)}, "threshold for class 'dent'"),
        ({"min_area": (1, 2, 3)}, "min_area has 3 values"),
        ({"min_area": (-1, 0)}, "min_area for class 'scratch'"),
        ({"fail_area": (None, -2)}, "fail_area for class 'dent'"),
        ({"morph_kernel": -1}, "morph_kernel"),
        ({"min_confidence": 2.0}, "min_confidence"),
    ],
)
def test_invalid_configs_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _sigmoid_cfg(**kwargs)


def test_probability_shapes_are_validated() -> None:
    with pytest.raises(ValueError, match="sigmoid probabilities have 3 channels, expected 2"):
        postprocess(np.zeros((3, H, W), np.float32), _sigmoid_cfg())
    # A softmax model's output without its background channel is the classic mix-up.
    with pytest.raises(ValueError, match="softmax probabilities have 3 channels, expected 4"):
        postprocess(np.zeros((3, H, W), np.float32), _softmax_cfg())
    with pytest.raises(ValueError, match=r"\[K, H, W\]"):
        postprocess(np.zeros((H, W), np.float32), _sigmoid_cfg())
    with pytest.raises(ValueError, match="floating point"):
        postprocess(np.zeros((2, H, W), np.uint8), _sigmoid_cfg())
    with pytest.raises(ValueError, match="empty frame"):
        class_masks(np.zeros((2, 0, W), np.float32), _sigmoid_cfg())
