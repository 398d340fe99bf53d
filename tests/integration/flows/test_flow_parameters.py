"""Every flow parameter is checked before the flow does anything, with an error that says why.

A flow run can come from anyone who reaches the Prefect UI: a retrain with a negative margin
would promote any candidate to every monitor that follows ``champion``; a batch could read any
file on the host and write its report anywhere. Prefect refuses out-of-range values (the
ranges are in the flows' signatures, hence in the deployments' schemas), and the flows refuse
inputs and report folders outside the allowed roots, lines the plant does not have, and
recipes that are not training options.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.line import count, oracle_checkpoint, write_parts

pytestmark = pytest.mark.integration


def test_retrain_refuses_a_negative_margin_and_bad_recipes_before_training(
    tmp_path: Path, sqlite_url: str, prefect_api: str, flow_settings: Callable[..., Path]
) -> None:
    from flows.retrain import retrain
    from prefect.exceptions import ParameterTypeError

    from defectscan.flow_params import FlowParameterError, check_retrain

    flow_settings(tmp_path, sqlite_url)
    with pytest.raises(ParameterTypeError, match="margin"):
        retrain(reason="r", requested_by="ana", margin=-1.0)
    with pytest.raises(ParameterTypeError, match="metric"):
        retrain(reason="r", requested_by="ana", metric="mean_iou; DROP")
    with pytest.raises(FlowParameterError, match="not TrainConfig fields"):
        retrain(reason="r", requested_by="ana", recipe={"epochz": 3})
    with pytest.raises(FlowParameterError, match="the retrain chooses these itself"):
        retrain(reason="r", requested_by="ana", recipe={"out": "/etc/passwd"})
    with pytest.raises(FlowParameterError, match="epochs"):
        retrain(reason="r", requested_by="ana", recipe={"epochs": 0})
    # the library check says the same to callers outside Prefect
    with pytest.raises(FlowParameterError, match=r"margin -0.5: .* must be in \[0, 1\]"):
        check_retrain(
            reason=None, requested_by=None, data=None, recipe={}, metric="mean_iou", margin=-0.5
        )
    # nothing started: no training run was recorded
    assert count(sqlite_url, "training_runs") == 0


def test_a_retrain_deployment_refuses_a_negative_margin_at_submission(prefect_api: str) -> None:
    from flows.retrain import retrain
    from prefect.deployments import run_deployment

    deployment = retrain.to_deployment(name="margin-check")
    deployment.apply()
    with pytest.raises(Exception, match="margin"):
        run_deployment("retrain/margin-check", parameters={"margin": -1.0}, timeout=0)


def test_batch_refuses_inputs_and_reports_outside_the_allowed_roots(
    tmp_path: Path, sqlite_url: str, prefect_api: str, flow_settings: Callable[..., Path]
) -> None:
    from flows.batch_inspection import batch_inspection

    from defectscan.flow_params import FlowParameterError

    allowed = tmp_path / "allowed"
    lot = allowed / "lot"
    write_parts(lot, 2)
    elsewhere = tmp_path / "elsewhere"
    write_parts(elsewhere, 1)
    (lot / "escape.png").symlink_to(elsewhere / "part00000.png")
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    flow_settings(
        tmp_path,
        sqlite_url,
        plant={"lines": {"L1": {}}},
        DEFECTSCAN_BATCH_ROOTS=f'["{allowed}"]',
        DEFECTSCAN_VAR_DIR=str(tmp_path / "var"),
    )
    base = {"model": str(model), "line": "L1"}
    cases = {
        "outside the allowed roots": {"paths": [str(elsewhere)]},
        "the pattern": {"paths": [f"{allowed}/../elsewhere/*.png"]},
        "leads to": {"paths": [str(lot)]},  # a symlink inside the root that points out
        "report folder": {
            "paths": [str(lot / "part00000.png")],
            "report_dir": str(tmp_path / "reports"),
        },
        "not a line of the plant file": {"paths": [str(lot / "part00000.png")], "line": "L2"},
    }
    for words, params in cases.items():
        with pytest.raises(FlowParameterError, match=words):
            batch_inspection(**{**base, **params})
    (lot / "escape.png").unlink()
    assert count(sqlite_url) == 0
    # inside the roots it runs (the report under var/, an allowed root)
    summary = batch_inspection(
        **base, paths=[str(lot)], report_dir=str(tmp_path / "var" / "reports" / "lot")
    )
    assert (summary["parts"], summary["inserted"]) == (2, 2)


def test_monitor_flow_refuses_out_of_range_bounds(
    tmp_path: Path, sqlite_url: str, prefect_api: str, flow_settings: Callable[..., Path]
) -> None:
    from flows.line_monitor import line_monitor
    from prefect.exceptions import ParameterTypeError

    flow_settings(tmp_path, sqlite_url)
    source = f"folder:{tmp_path / 'camera'}"
    for bad in ({"batch_size": 0}, {"max_seconds": 0.0}, {"retention_every_s": -1.0}):
        with pytest.raises(ParameterTypeError):
            line_monitor(source=source, **bad)
