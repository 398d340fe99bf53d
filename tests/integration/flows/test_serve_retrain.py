"""`defectscan serve` against a real Prefect server, with a line monitor running beside it.

One plant, one story (they share a serve process, so this is one test):

- serve registers every scheduled deployment with its schedule and concurrency limit, and no
  monitor deployment: the line's monitor is a child process serve supervises, and it really
  runs (its camera folder's parts get their rows);
- ``run_deployment`` of the batch flow writes the lot's rows and its artifacts;
- an operator retrain through the CLI records who asked and why; the candidate beats the blind
  champion and is promoted (exit 0), and the line monitor switches to it between batches
  without dropping or doubling an image;
- against a perfect champion the next candidate loses the gate and stays a candidate (exit 3);
- a double-submitted retrain starts one flow run;
- a serve killed while that run is Running leaves it Running; the next serve marks it Crashed
  (it is a run of this serve instance), and the killed serve's monitor does not outlive it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from defectscan.store.db import make_engine, session_factory, upgrade_to_head
from helpers.line import REPO, cli_env, oracle_checkpoint, rows, start_cli, wait_for, write_parts
from helpers.procs import alive, monitors_of
from helpers.retrain import FAST_RECIPE, blind_checkpoint, write_base_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cli(
    args: list[str], env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "defectscan.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=60)


def _client_call(fn: Any) -> Any:
    from prefect.client.orchestration import get_client

    async def go() -> Any:
        async with get_client() as client:
            return await fn(client)

    return asyncio.run(go())


def _champion(url: str) -> str:
    return str(rows(url, "SELECT version FROM model_versions WHERE status = 'champion'")[0][0])


def test_serve_batch_retrain_monitor_switch_and_crash_recovery(
    tmp_path: Path, pg_url: str, prefect_api: str
) -> None:
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        DeploymentFilter,
        DeploymentFilterName,
    )
    from prefect.deployments import run_deployment

    from defectscan.training.registry import promote, register_checkpoint

    upgrade_to_head(pg_url)  # the operator's `defectscan db upgrade`
    base = write_base_dataset(tmp_path / "base")
    blind = blind_checkpoint(tmp_path / "blind.safetensors")
    oracle = oracle_checkpoint(tmp_path / "oracle.safetensors")
    engine = make_engine(pg_url)
    with session_factory(engine, write=True).begin() as session:
        blind_version = register_checkpoint(blind, session=session).version
        promote(blind_version, session=session, force=True)
        oracle_version = register_checkpoint(oracle, session=session).version
    engine.dispose()
    plant = tmp_path / "plant.yaml"
    plant.write_text(
        yaml.safe_dump(
            {
                "retrain_schedule": "0 3 * * 0",
                "retrain_data": str(base),
                "retrain_recipe": FAST_RECIPE,
                "backend": "torch",
                "device": "cpu",
                "lines": {
                    "L1": {
                        "source": f"folder:{tmp_path / 'served-camera'}",
                        "batch_schedule": "0 6 * * *",
                    }
                },
            }
        )
    )
    env = cli_env(
        tmp_path,
        pg_url,
        PREFECT_API_URL=prefect_api,
        DEFECTSCAN_CONFIG=str(plant),
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        DEFECTSCAN_BATCH_ROOTS=f'["{tmp_path}"]',  # the lot below may be batch-inspected
    )
    served = tmp_path / "served-camera"  # the line's own source: serve's monitor watches it
    write_parts(served, 3, start=700)
    serve_log = tmp_path / "serve.log"
    serve = start_cli(["serve"], env, serve_log)
    camera = tmp_path / "camera"
    write_parts(camera, 4)
    monitor_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    monitor = start_cli(
        [
            "monitor",
            "--source",
            f"folder:{camera}",
            "--model",
            "champion",
            "--line",
            "L1",
            "--no-prefect",
            "--batch-size",
            "2",
        ],
        monitor_env,
        tmp_path / "monitor.log",
    )
    written = [4]
    feeding = threading.Event()

    def feed() -> None:  # a part every half second while the retrains run
        while not feeding.wait(0.5):
            write_parts(camera, 1, start=written[0])
            written[0] += 1

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        # -- serve registered every scheduled deployment with its schedule and concurrency
        # limit, and no monitor deployment
        names = ["batch-inspection/batch-L1", "retrain/retrain"]

        def registered() -> bool:
            async def read(client: Any) -> list[tuple[str, bool]]:
                found = await client.read_deployments(
                    deployment_filter=DeploymentFilter(
                        name=DeploymentFilterName(any_=["monitor-L1", "batch-L1", "retrain"])
                    )
                )
                # scheduled as this plant says (the test server outlives other tests' serves)
                return sorted((d.name, bool(d.schedules)) for d in found)

            return bool(_client_call(read) == [("batch-L1", True), ("retrain", True)])

        wait_for(registered, timeout=180, interval=1, what=f"deployments {names}")
        deps = {n: _client_call(lambda c, n=n: c.read_deployment_by_name(n)) for n in names}
        schedules = {n: d.schedules[0].schedule for n, d in deps.items()}
        assert schedules["retrain/retrain"].cron == "0 3 * * 0"
        assert schedules["batch-inspection/batch-L1"].cron == "0 6 * * *"
        assert all(d.global_concurrency_limit.limit == 1 for d in deps.values())
        assert all(not d.paused for d in deps.values())
        assert deps["retrain/retrain"].concurrency_options.collision_strategy == "ENQUEUE"

        # -- the served monitor really runs: its camera folder's parts get their rows
        wait_for(
            lambda: (
                rows(pg_url, "SELECT count(*) FROM inspections WHERE uri LIKE '%/served-camera/%'")
                == [(3,)]
            ),
            timeout=180,
            interval=0.5,
            what="the served monitor's rows",
        )
        assert list(monitors_of(serve.pid)) == ["L1"]

        # -- a batch through run_deployment: rows and artifacts
        lot = tmp_path / "lot"
        write_parts(lot, 5, start=500)
        run = run_deployment(
            "batch-inspection/batch-L1",
            parameters={"paths": [str(lot)], "query_line": None, "since": None, "until": None},
            timeout=300,
            poll_interval=1,
        )
        assert run.state is not None
        assert run.state.name == "Completed", serve_log.read_text()[-3000:]
        lot_rows = rows(pg_url, "SELECT count(*) FROM inspections WHERE uri LIKE '%/lot/%'")
        assert lot_rows == [(5,)]
        artifacts = _client_call(
            lambda c: c.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
        )
        by_key = {a.key: a for a in artifacts}
        assert set(by_key) == {"batch-classes-l1", "batch-summary-l1", "batch-report-l1"}
        assert by_key["batch-classes-l1"].type == "table"
        assert "Worst parts" in str(by_key["batch-summary-l1"].data)
        link = re.search(r"\((file://[^)]+report\.html)\)", str(by_key["batch-report-l1"].data))
        assert link, by_key["batch-report-l1"].data
        assert Path(link.group(1).removeprefix("file://")).is_file()

        # -- operator retrain via the CLI: beats the blind champion, promoted (exit 0)
        feeder.start()
        first = _cli(
            ["retrain", "--reason", "misses dark spots", "--requested-by", "alice", "--wait"], env
        )
        assert first.returncode == 0, first.stdout + first.stderr + serve_log.read_text()[-3000:]
        assert "is the new champion" in first.stdout
        trained = _champion(pg_url)
        assert trained not in (blind_version, oracle_version)
        run_row = rows(
            pg_url,
            "SELECT trigger, requested_by, reason, status, started_at IS NOT NULL, "
            "finished_at IS NOT NULL, dataset_stats->'holdout'->>'fingerprint' IS NOT NULL "
            "FROM training_runs ORDER BY id",
        )
        assert run_row == [
            ("operator", "alice", "misses dark spots", "succeeded", True, True, True)
        ]
        listed = _cli(["models", "list", "--json"], env)
        mine = next(m for m in yaml.safe_load(listed.stdout) if m["version"] == trained)
        assert (mine["trigger"], mine["requested_by"], mine["reason"]) == (
            "operator",
            "alice",
            "misses dark spots",
        )
        assert mine["parent"] == blind_version
        # both monitors (the served one and the one beside it) switched to it, once each
        wait_for(
            lambda: (
                rows(
                    pg_url,
                    f"SELECT count(*) FROM events WHERE kind = 'model_switch' "
                    f"AND model_version = '{trained}'",
                )
                == [(2,)]
            ),
            timeout=60,
            what="the monitors' switch to the new champion",
        )

        # -- an operator reviews a failed part whose file is then gone from the camera folder
        def failed_under_trained() -> list[tuple[object, ...]]:
            return rows(
                pg_url,
                "SELECT i.id, i.uri FROM inspections i JOIN model_versions mv "
                f"ON i.model_version_id = mv.id WHERE mv.version = '{trained}' "
                "AND i.verdict = 'fail' ORDER BY i.id",
            )

        wait_for(lambda: bool(failed_under_trained()), timeout=60, what="a failed part")
        inspection_id, uri = failed_under_trained()[0]
        for done in (camera / "done").rglob(Path(str(uri)).name):
            done.unlink()
        reviewed = _cli(["review", str(inspection_id), "--verdict", "confirm", "--by", "dave"], env)
        assert reviewed.returncode == 0, reviewed.stdout + reviewed.stderr

        # -- a perfect champion: the next candidate loses the gate (exit 3)
        engine = make_engine(pg_url)
        with session_factory(engine, write=True).begin() as session:
            promote(oracle_version, session=session, force=True)
        engine.dispose()
        second = _cli(
            ["retrain", "--reason", "weekly check", "--requested-by", "bob", "--wait"], env
        )
        assert second.returncode == 3, second.stdout + second.stderr
        assert "stays a candidate" in second.stdout
        assert _champion(pg_url) == oracle_version
        statuses = rows(
            pg_url,
            "SELECT mv.status FROM model_versions mv JOIN training_runs tr "
            "ON mv.training_run_id = tr.id WHERE tr.requested_by = 'bob'",
        )
        assert statuses == [("candidate",)]
        # the review reached this run's data (from the archive) and is marked used by it
        used = rows(
            pg_url,
            "SELECT tr.dataset_stats->>'n_reviews', r.used_in_training_run_id = tr.id "
            "FROM reviews r, training_runs tr WHERE tr.requested_by = 'bob'",
        )
        assert used == [("1", True)]
        feeding.set()
        feeder.join()

        # -- two requests at once (a double click): one flow run
        both = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "defectscan.cli",
                    "retrain",
                    "--reason",
                    "double click",
                    "--requested-by",
                    "carol",
                ],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=120)[0] for p in both]
        assert [p.returncode for p in both] == [0, 0], outputs
        ids = {i for o in outputs for i in re.findall(r"\(([0-9a-f-]{36})\)", o)}
        assert len(ids) == 1, outputs
        (run_id,) = ids
        retrain_runs = _client_call(
            lambda c: c.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["retrain"]))
            )
        )
        assert len(retrain_runs) == 3  # alice's, bob's and one for the double click

        # -- kill serve while that run is Running: the next serve marks it Crashed
        def state_of(fid: str) -> str:
            return str(_client_call(lambda c: c.read_flow_run(fid)).state_name)

        wait_for(
            lambda: state_of(run_id) == "Running",
            timeout=120,
            interval=0.5,
            what="the double-click retrain to run",
        )
        orphans = monitors_of(serve.pid)
        _kill_group(serve, signal.SIGKILL)
        time.sleep(1)
        assert state_of(run_id) == "Running"
        for pid in orphans.values():  # the killed serve's monitor stops too (parent death)
            wait_for(lambda pid=pid: not alive(pid), timeout=90, what="the orphaned monitor")
        serve = start_cli(["serve"], env, serve_log)
        wait_for(
            lambda: state_of(run_id) == "Crashed",
            timeout=120,
            interval=1,
            what="the orphaned run marked crashed",
        )
    finally:
        feeding.set()
        served_monitors = monitors_of(serve.pid)
        _kill_group(serve, signal.SIGKILL)
        if monitor.poll() is None:
            monitor.send_signal(signal.SIGTERM)
        for pid in served_monitors.values():
            wait_for(lambda pid=pid: not alive(pid), timeout=90, what="the served monitor")
    assert monitor.wait(timeout=120) == 0
    # -- the monitor: every part exactly once, under whichever champion was serving
    total = written[0]
    assert rows(
        pg_url,
        "SELECT count(*), count(DISTINCT sha256) FROM inspections WHERE uri LIKE '%/camera/%'",
    ) == [(total, total)]
    versions = {
        r[0]
        for r in rows(
            pg_url,
            "SELECT mv.version FROM inspections i JOIN model_versions mv "
            "ON i.model_version_id = mv.id WHERE i.uri LIKE '%/camera/%'",
        )
    }
    assert {blind_version, trained} <= versions
    # every part settled at the source (less the one the test deleted after its review)
    assert len(list((camera / "done").rglob("*.png"))) == total - 1
