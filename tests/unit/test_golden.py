"""Golden outputs: the model, the tiled pipeline and post-processing do not change silently.

The expected values were computed once by ``tests/helpers/golden_cases.py`` from a stored
checkpoint and fixed inputs. Tolerances: float32 results may differ in the last bits across
CPUs and oneDNN kernels (1e-5 absolute on probabilities of order 0.3); integer results (areas,
bounding boxes, class counts) and verdicts must match exactly.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from helpers.golden_cases import GOLDEN, compute


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return json.loads((GOLDEN / "expected.json").read_text())


@pytest.fixture(scope="module")
def actual() -> dict[str, Any]:
    return compute()


def _assert_defects(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g["class"], g["area"], g["bbox"]) == (w["class"], w["area"], w["bbox"])
        assert g["centroid"] == pytest.approx(w["centroid"], abs=1e-6)
        assert g["perimeter"] == pytest.approx(w["perimeter"], abs=1e-6)
        assert g["mean_score"] == pytest.approx(w["mean_score"], abs=1e-5)
        assert g["max_score"] == pytest.approx(w["max_score"], abs=1e-5)


def test_model_outputs_are_unchanged(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    got, want = actual["model"], expected["model"]
    assert got["features_shape"] == want["features_shape"]
    assert got["features_mean"] == pytest.approx(want["features_mean"], abs=1e-5)
    assert got["prob_mean"] == pytest.approx(want["prob_mean"], abs=1e-5)
    assert got["prob_std"] == pytest.approx(want["prob_std"], abs=1e-5)
    flat_got = [v for row in got["prob_pooled"] for px in row for v in px]
    flat_want = [v for row in want["prob_pooled"] for px in row for v in px]
    assert flat_got == pytest.approx(flat_want, abs=1e-5)


def test_tiled_pipeline_is_unchanged(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    got, want = actual["pipeline"], expected["pipeline"]
    assert got["class_counts"] == want["class_counts"]
    assert got["verdict"] == want["verdict"]
    _assert_defects(got["defects"], want["defects"])


@pytest.mark.parametrize("case", ["postprocess_sigmoid", "postprocess_softmax"])
def test_postprocess_is_unchanged(
    actual: dict[str, Any], expected: dict[str, Any], case: str
) -> None:
    assert actual[case]["verdict"] == expected[case]["verdict"]
    _assert_defects(actual[case]["defects"], expected[case]["defects"])
