"""A restarted serve crashes the runs its own instance left, and never another serve's runs.

Two serve processes (two hosts, or two plants on one host) may serve deployments of the same
names. When one restarts, it marks crashed only the runs it left itself: a run records the serve
that executes it (labels), and a run not started yet the serve whose deployment created it
(tags). One live serve per instance is guaranteed by a lock, so a run of this instance that is
still Running was left by a serve that is gone.
"""

from __future__ import annotations

import os
from pathlib import Path
from uuid import UUID

import pytest

from defectscan.errors import ConfigError
from defectscan.orchestration import (
    OWNER_ENV,
    OWNER_LABEL,
    OWNER_PROCESS_LABEL,
    ServeIdentity,
    crash_orphaned_runs,
    retire_monitor_deployments,
    serve_lock,
)

pytestmark = pytest.mark.integration


def test_only_runs_of_this_serve_instance_are_marked_crashed(prefect_api: str) -> None:
    from flows.retrain import retrain
    from prefect.client.orchestration import get_client
    from prefect.states import Pending, Running

    deployment_id = retrain.to_deployment(name="orphans").apply()
    with get_client(sync_client=True) as client:

        def run(tags: list[str], labels: dict[str, str], *, running: bool = True) -> UUID:
            created = client.create_flow_run_from_deployment(
                deployment_id, tags=tags, labels=labels
            )
            client.set_flow_run_state(created.id, Running() if running else Pending(), force=True)
            return created.id

        mine = run(["serve:here"], {OWNER_LABEL: "here", OWNER_PROCESS_LABEL: "h:1:gone"})
        mine_not_started = run(["serve:here"], {}, running=False)
        # created from this instance's deployment, but executed by another serve process
        taken_by_other = run(["serve:here"], {OWNER_LABEL: "there"})
        others = run(["serve:there"], {}, running=False)
        unknown = run([], {})
    crashed = crash_orphaned_runs(["retrain/orphans"], instance="here")
    with get_client(sync_client=True) as client:
        states = {
            name: client.read_flow_run(fid).state_name
            for name, fid in {
                "mine": mine,
                "mine_not_started": mine_not_started,
                "taken_by_other": taken_by_other,
                "others": others,
                "unknown": unknown,
            }.items()
        }
    assert states == {
        "mine": "Crashed",
        "mine_not_started": "Crashed",
        "taken_by_other": "Running",
        "others": "Pending",
        "unknown": "Running",
    }
    assert len(crashed) == 2


def test_a_flow_run_started_by_serve_records_its_serve(prefect_api: str) -> None:
    from flows.retrain import retrain
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    from defectscan.orchestration import label_run_owner

    assert retrain is not None  # flows/ prepared Prefect's environment
    identity = ServeIdentity("here", "h:42:abc")

    @flow(name="owned")
    def owned() -> str:
        label_run_owner()
        return str(flow_run.get_id())

    os.environ[OWNER_ENV] = identity.encode()
    try:
        run_id = owned()
    finally:
        os.environ.pop(OWNER_ENV)
    with get_client(sync_client=True) as client:
        labels = client.read_flow_run(UUID(run_id)).labels
    assert labels[OWNER_LABEL] == "here"
    assert labels[OWNER_PROCESS_LABEL] == "h:42:abc"


def test_one_live_serve_per_instance(tmp_path: Path) -> None:
    first = ServeIdentity.current(tmp_path, "plant-a")
    with serve_lock(first, tmp_path):
        with (
            pytest.raises(ConfigError, match=r"already served by .*another --instance"),
            serve_lock(ServeIdentity.current(tmp_path, "plant-a"), tmp_path),
        ):
            pass
        with serve_lock(ServeIdentity.current(tmp_path, "plant-b"), tmp_path):
            pass  # another instance on the same host is its own serve
    with serve_lock(ServeIdentity.current(tmp_path, "plant-a"), tmp_path):
        pass  # the lock went with its holder
    # by default the instance is the host and the var folder: stable across restarts
    assert ServeIdentity.current(tmp_path).instance == ServeIdentity.current(tmp_path).instance
    assert ServeIdentity.current(tmp_path).process != ServeIdentity.current(tmp_path).process
    with pytest.raises(ConfigError, match="serve instance"):
        ServeIdentity.current(tmp_path, "bad name/../x")


def test_monitor_deployments_of_an_older_serve_are_paused(prefect_api: str) -> None:
    from datetime import timedelta

    from flows.line_monitor import line_monitor
    from prefect.client.orchestration import get_client

    old = line_monitor.to_deployment(name="monitor-Lx", interval=timedelta(seconds=300))
    deployment_id = old.apply()
    assert retire_monitor_deployments(["Lx", "Ly"]) == ["line-monitor/monitor-Lx"]
    with get_client(sync_client=True) as client:
        assert client.read_deployment(deployment_id).paused
    assert retire_monitor_deployments(["Lx"]) == []  # already paused: nothing to do
