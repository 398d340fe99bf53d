"""``defectscan monitor --source`` with a password: refused before any run, so it never reaches
Prefect's flow-run record (the parameters a run is created with) or a process listing."""

from __future__ import annotations

from typing import Any

import pytest

from helpers.cli import run_cli

SUMMARY = {
    "run_id": "0" * 32,
    "images": 0,
    "inspected": 0,
    "rejected": 0,
    "failed_parts": 0,
    "seconds": 0.0,
    "stopped_by": "idle",
}


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The parameters of each bounded run the command starts (none really runs)."""
    import defectscan.cli.monitor as monitor_cli

    started: list[dict[str, Any]] = []

    def runner(**params: Any) -> dict[str, Any]:
        started.append(params)
        return dict(SUMMARY)

    monkeypatch.setattr(monitor_cli, "_prefect_runner", runner)
    monkeypatch.setattr(monitor_cli, "_local_runner", runner)
    return started


@pytest.mark.parametrize(
    "source",
    [
        "redis://:hunter2@redis:6379/0?stream=parts",
        "redis://redis:6379/0?stream=parts&password=hunter2",
    ],
)
@pytest.mark.parametrize("prefect", ["--prefect", "--no-prefect"])
def test_a_password_in_the_source_is_a_usage_error_before_any_run(
    source: str, prefect: str, runs: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        ["monitor", "--source", source, "--idle-exit", "0", "--metrics-port", "0", prefect],
        capsys,
    )
    assert code == 1
    assert runs == []  # no flow run was created with the password among its parameters
    text = " ".join(err.split())
    assert "usage error" in text
    assert "DEFECTSCAN_REDIS_URL" in text
    assert "hunter2" not in err


def test_a_source_without_a_password_goes_to_the_run(
    runs: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    source = "redis://redis:6379/0?stream=parts"
    code, _, _ = run_cli(
        ["monitor", "--source", source, "--idle-exit", "0", "--metrics-port", "0"], capsys
    )
    assert code == 0
    assert [r["source"] for r in runs] == [source]
