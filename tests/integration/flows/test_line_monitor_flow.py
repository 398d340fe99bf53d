"""The line monitor as Prefect runs it: real flow runs, on a test server and the ephemeral API."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.line import (
    HeldApi,
    cli_env,
    count,
    oracle_checkpoint,
    rows,
    start_cli,
    wait_for,
    write_parts,
)

pytestmark = pytest.mark.integration


def test_flow_runs_are_bounded_and_write_one_row_per_image(
    tmp_path: Path, sqlite_url: str, prefect_api: str
) -> None:
    from flows.line_monitor import close_monitors, line_monitor
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    camera = tmp_path / "camera"
    write_parts(camera, 14)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    import os

    os.environ["DEFECTSCAN_DATABASE_URL"] = sqlite_url
    from defectscan.config import get_settings

    get_settings.cache_clear()
    try:
        params = {"source": f"folder:{camera}", "model": str(model), "line": "L1", "batch_size": 4}
        first = line_monitor(**params, max_images=8, idle_exit=2.0)
        second = line_monitor(**params, max_images=100, idle_exit=2.0)
    finally:
        close_monitors()
        os.environ.pop("DEFECTSCAN_DATABASE_URL")
        get_settings.cache_clear()
    # the first run stopped at its bound after the batch in hand; the second took the rest
    assert (first["stopped_by"], first["images"]) == ("max_images", 8)
    assert (second["stopped_by"], second["images"]) == ("idle", 6)
    assert rows(sqlite_url) == [(14,)]
    assert len(list((camera / "done").rglob("*.png"))) == 14
    # each run left its metrics under its Prefect flow run id, and Prefect saw it complete
    run_ids = {first["run_id"], second["run_id"]}
    stored = {r[0] for r in rows(sqlite_url, "SELECT flow_run_id FROM run_metrics")}
    assert {f"{i}:run" for i in run_ids} <= stored

    import asyncio

    async def states() -> list[str]:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(run_ids)))
            )
            return sorted(r.state_name or "" for r in runs)

    assert asyncio.run(states()) == ["Completed", "Completed"]


def test_cli_monitor_on_the_ephemeral_api_is_quiet_and_stops_cleanly_on_sigterm(
    tmp_path: Path, sqlite_url: str
) -> None:
    camera = tmp_path / "camera"
    write_parts(camera, 6)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    env = cli_env(tmp_path, sqlite_url)
    for key in [k for k in env if k.startswith("PREFECT_")]:
        del env[key]
    log = tmp_path / "monitor.log"
    proc = start_cli(
        ["monitor", "--source", f"folder:{camera}", "--model", str(model), "--line", "L1"],
        env,
        log,
    )
    try:
        wait_for(lambda: count(sqlite_url) == 6, timeout=180, what="six rows")
        write_parts(camera, 3, start=6)
        wait_for(lambda: count(sqlite_url) == 9, timeout=60, what="nine rows")
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=120)
        assert status == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert "Traceback" not in output, output
    assert "WARNING" not in output, output
    assert "SIGTERM: finishing the batch in hand" in output, output
    assert "ERROR" not in output, output
    assert "monitor stopped: 9 images" in output, output
    # Prefect's state went under var/, not the user's home
    assert (tmp_path / "var" / "prefect").is_dir()


def test_a_stop_while_prefect_is_starting_waits_for_it_and_exits_cleanly(
    tmp_path: Path, sqlite_url: str
) -> None:
    """SIGTERM during Prefect's start: the monitor lets the start end, then exits with 0.

    Ending the interpreter under a thread still busy starting Prefect aborted the process
    (SIGABRT, exit -6) on a loaded CI machine; here the start is held open on purpose.
    """
    camera = tmp_path / "camera"
    write_parts(camera, 6)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    api = HeldApi()
    env = cli_env(tmp_path, sqlite_url, PREFECT_API_URL=api.url, PREFECT_CLIENT_MAX_RETRIES="0")
    log = tmp_path / "monitor.log"
    proc = start_cli(
        ["monitor", "--source", f"folder:{camera}", "--model", str(model), "--line", "L1"],
        env,
        log,
    )
    try:
        # until Prefect answers, the monitor inspects on its own
        wait_for(lambda: count(sqlite_url) == 6, timeout=180, what="six rows")
        assert api.asked.wait(60), log.read_text()
        proc.send_signal(signal.SIGTERM)
        time.sleep(3)
        assert proc.poll() is None, "the monitor ended while Prefect was still starting"
        api.release.set()
        status = proc.wait(timeout=60)
        assert status == 0, log.read_text()
    finally:
        api.close()
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    for word in ("Traceback", "Fatal Python error", "WARNING", "ERROR"):
        assert word not in output, output
    assert "monitor stopped: 6 images" in output, output


def test_a_run_with_idle_exit_does_not_end_while_the_line_is_paused(
    tmp_path: Path,
    sqlite_url: str,
    prefect_api: str,
    flow_settings: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plant fault (here an unusable ``done/``) pauses the line: the flow run waits it out
    up to its time bound instead of ending as if the camera were idle, and once the fault has
    cleared the next run settles the images and ends idle."""
    import flows.line_monitor as flow

    from defectscan.monitor import LineMonitor, ModelProvider
    from defectscan.pipeline import Inspector
    from defectscan.sources.folder import FolderSource
    from defectscan.store.db import make_engine, session_factory, upgrade_to_head

    flow_settings(tmp_path, sqlite_url)
    camera = tmp_path / "camera"
    write_parts(camera, 4)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    monitor = LineMonitor(
        FolderSource(camera, line="L1", stable_polls=1, watch=False),
        ModelProvider(
            str(model),
            load=lambda path: Inspector.from_checkpoint(path, backend="torch", device="cpu"),
            sessions=session_factory(engine, write=True),
            line="L1",
        ),
        engine,
        line="L1",
        batch_size=4,
        claim_timeout=0.2,
        pause_min_s=0.2,
        pause_max_s=0.2,
    )
    monkeypatch.setattr(flow, "build_monitor", lambda *_args, **_kw: monitor)
    (camera / "done").rmdir()
    (camera / "done").write_text("not a folder: the settle step cannot move files into it")
    params = {"source": f"folder:{camera}", "model": str(model), "line": "L1", "batch_size": 4}
    try:
        paused = flow.line_monitor(**params, max_images=100, max_seconds=4.0, idle_exit=1.0)
        fault = monitor.plant_fault
        (camera / "done").unlink()  # the operator fixes the folder: the line resumes by itself
        resumed = flow.line_monitor(**params, max_images=100, max_seconds=60.0, idle_exit=1.0)
    finally:
        flow.close_monitors()
    assert fault is not None
    assert paused["stopped_by"] == "max_seconds", paused  # paused is not idle
    assert monitor.plant_faults >= 2
    assert (resumed["stopped_by"], resumed["duplicates"]) == ("idle", 4)
    assert monitor.plant_fault is None
    assert rows(sqlite_url) == [(4,)]
    assert len(list((camera / "done").rglob("*.png"))) == 4
