"""`defectscan serve` supervises the line monitors as long-lived child processes.

Two lines with camera folders on one host, served against a real Prefect server and PostgreSQL:

- each line's monitor is one child process that really runs: the parts its folder receives get
  their rows, it reports its bounded runs to Prefect from inside itself (flow runs without a
  deployment: no monitor is a scheduled deployment), ran its archive retention at start, and
  serves /metrics on a port of its own;
- a monitor killed with SIGKILL is started again after the back-off, recorded as an event, and
  the new one takes the parts that came meanwhile;
- serve stopped with SIGTERM stops its monitors first (each finishes its batch and exits).
  (serve killed with SIGKILL takes them along too: test_serve_retrain.py.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from defectscan.store.db import upgrade_to_head
from helpers.line import cli_env, oracle_checkpoint, rows, start_cli, wait_for, write_parts
from helpers.procs import alive, monitors_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no two free ports in a row")


def _client_call(fn: Any) -> Any:
    from prefect.client.orchestration import get_client

    async def go() -> Any:
        async with get_client() as client:
            return await fn(client)

    return asyncio.run(go())


def _rows_of(url: str, folder: str) -> int:
    return int(rows(url, f"SELECT count(*) FROM inspections WHERE uri LIKE '%/{folder}/%'")[0][0])


def test_serve_runs_each_line_monitor_as_a_supervised_long_lived_child(
    tmp_path: Path, pg_url: str, prefect_api: str
) -> None:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowFilter,
        FlowFilterName,
    )

    upgrade_to_head(pg_url)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    first, second = tmp_path / "served-l1", tmp_path / "served-l2"
    write_parts(first, 3)
    write_parts(second, 2, start=100)
    port = _free_port_pair()
    plant = tmp_path / "plant.yaml"
    plant.write_text(
        yaml.safe_dump(
            {
                "backend": "torch",
                "device": "cpu",
                "lines": {
                    "S1": {
                        "source": f"folder:{first}",
                        "model": str(model),
                        "batch_schedule": "0 6 * * *",
                    },
                    "S2": {"source": f"folder:{second}", "model": str(model)},
                },
            }
        )
    )
    env = cli_env(
        tmp_path,
        pg_url,
        PREFECT_API_URL=prefect_api,
        DEFECTSCAN_CONFIG=str(plant),
        DEFECTSCAN_METRICS_PORT=str(port),
    )
    log = tmp_path / "serve.log"
    serve = start_cli(["serve", "--restart-backoff", "1", "--stop-grace", "30"], env, log)
    monitors: dict[str, int] = {}
    try:
        # -- one child per line, each really running: its folder's parts get their rows
        wait_for(
            lambda: _rows_of(pg_url, "served-l1") == 3 and _rows_of(pg_url, "served-l2") == 2,
            timeout=240,
            interval=0.5,
            what="the served monitors' rows",
        )
        monitors = monitors_of(serve.pid)
        assert sorted(monitors) == ["S1", "S2"], log.read_text()[-3000:]
        # -- no monitor is a deployment; the monitors' runs are reported from inside them
        deployments = _client_call(
            lambda c: c.read_deployments(
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=["monitor-S1", "monitor-S2"])
                )
            )
        )
        assert deployments == []

        def mine() -> list[Any]:
            runs = _client_call(
                lambda c: c.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=["line-monitor"]))
                )
            )
            return [r for r in runs if r.parameters.get("line") in ("S1", "S2")]

        # The first rows do not wait for Prefect: the flow runs follow them.
        wait_for(
            lambda: {r.parameters["line"] for r in mine()} == {"S1", "S2"},
            timeout=120,
            interval=0.5,
            what="both monitors' flow runs",
        )
        assert all(r.deployment_id is None for r in mine())
        # -- each monitor ran its archive retention at start
        retained = rows(pg_url, "SELECT DISTINCT line FROM events WHERE kind='archive_retention'")
        assert sorted(r[0] for r in retained) == ["S1", "S2"]
        # -- and serves /metrics on a port of its own
        for line, p in (("S1", port), ("S2", port + 1)):
            body = urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=10).read()
            assert b"defectscan_" in body, line

        # -- a monitor killed with SIGKILL is started again and takes what came meanwhile
        os.kill(monitors["S1"], signal.SIGKILL)
        write_parts(first, 2, start=3)
        wait_for(
            lambda: monitors_of(serve.pid).get("S1") not in (None, monitors["S1"]),
            timeout=60,
            what="the S1 monitor started again",
        )
        wait_for(lambda: _rows_of(pg_url, "served-l1") == 5, timeout=180, what="five S1 rows")
        exited = rows(
            pg_url,
            "SELECT line, details->>'exit_code' FROM events WHERE kind = 'monitor_exited'",
        )
        assert exited == [("S1", str(-signal.SIGKILL))]
        assert monitors_of(serve.pid)["S2"] == monitors["S2"]  # the other line untouched
        monitors = monitors_of(serve.pid)

        # -- serve stopped with SIGTERM: it stops its monitors (each finishes its batch) first
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=120) == 0, log.read_text()[-3000:]
        assert not any(alive(pid) for pid in monitors.values())
        assert "did not stop within" not in log.read_text()  # none needed a SIGKILL
    finally:
        if serve.poll() is None:
            serve.kill()
        for pid in monitors.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    # every part exactly once, across the restart
    assert rows(
        pg_url, "SELECT count(*), count(DISTINCT sha256) FROM inspections WHERE uri LIKE '%served%'"
    ) == [(7, 7)]
