"""serve's supervision of long-lived children: restarts with back-off, a clean stop, ports.

Real processes, no mocks: small Python children that record each start, one of which ignores
SIGTERM (a monitor stuck in a batch).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from defectscan.config import Settings
from defectscan.errors import ConfigError
from defectscan.supervisor import (
    Backoff,
    ChildExit,
    ChildSpec,
    MonitorSupervisor,
    metrics_ports,
    monitor_children,
)
from helpers.line import wait_for
from helpers.procs import alive

_CHILD = """
import os, signal, sys, time
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()} {time.monotonic()}\\n")
while True:
    time.sleep(0.05)
"""


def _starts(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    return [(int(p), float(t)) for p, t in (x.split() for x in path.read_text().splitlines())]


def test_children_restart_with_growing_back_off_and_stop_cleanly(tmp_path: Path) -> None:
    specs = [
        ChildSpec(name, name, (sys.executable, "-c", _CHILD, str(tmp_path / name), name))
        for name in ("calm", "stubborn")
    ]
    exits: list[ChildExit] = []
    supervisor = MonitorSupervisor(
        specs,
        backoff=Backoff(first_s=0.5, max_s=5.0, healthy_s=60.0),
        stop_grace_s=1.0,
        on_exit=exits.append,
        poll_s=0.05,
    )
    calm, stubborn = tmp_path / "calm", tmp_path / "stubborn"
    supervisor.start()
    try:
        wait_for(lambda: len(_starts(calm)) == 1 and len(_starts(stubborn)) == 1, timeout=30)
        for n in (1, 2):  # two crashes in a row: the second waits twice as long
            pid, _ = _starts(calm)[-1]
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda n=n: len(_starts(calm)) == n + 1, timeout=30, what=f"restart {n}")
            restarted_at = _starts(calm)[-1][1]
            assert restarted_at - killed_at >= 0.5 * 2 ** (n - 1), n
        assert [(e.spec.name, e.code, e.restarts, e.delay_s) for e in exits] == [
            ("calm", -signal.SIGKILL, 1, 0.5),
            ("calm", -signal.SIGKILL, 2, 1.0),
        ]
        assert len(_starts(stubborn)) == 1  # the other child was left alone
        running = [pid for pid in supervisor.pids().values() if pid is not None]
        assert len(running) == 2
    finally:
        started = time.monotonic()
        supervisor.stop()
        stopped_in = time.monotonic() - started
    # both gone: the calm one on SIGTERM, the stubborn one killed after the grace period
    assert not any(alive(pid) for pid in running)
    assert 1.0 <= stopped_in < 20
    assert len(exits) == 2  # a stop asked for is no exit to report
    assert supervisor.pids() == {"calm": None, "stubborn": None}


def test_each_supervised_monitor_gets_its_own_metrics_port(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path,
        metrics_port=9500,
        lines={
            "L1": {"source": f"folder:{tmp_path / 'a'}", "metrics_port": 9500},
            "L2": {"source": f"folder:{tmp_path / 'b'}"},
            "L3": {"source": f"folder:{tmp_path / 'c'}"},
            "L4": {},  # no source: no monitor
        },
    )
    assert metrics_ports(settings, ["L1", "L2", "L3"]) == {"L1": 9500, "L2": 9501, "L3": 9502}
    children = monitor_children(settings, python="python3")
    assert [c.name for c in children] == ["monitor-L1", "monitor-L2", "monitor-L3"]
    assert children[1].argv == (
        "python3", "-m", "defectscan.cli", "monitor", "--line", "L2", "--metrics-port", "9501",
    )  # fmt: skip
    assert all("DEFECTSCAN_SERVE_OWNER" not in (c.env or {}) for c in children)
    off = Settings(var_dir=tmp_path, metrics_port=0, lines=settings.lines)
    assert set(metrics_ports(off, ["L2", "L3"]).values()) == {0}
    clash = Settings(
        var_dir=tmp_path,
        lines={"L1": {"metrics_port": 9600}, "L2": {"metrics_port": 9600}},
    )
    with pytest.raises(ConfigError, match="both serve /metrics on port 9600"):
        metrics_ports(clash, ["L1", "L2"])
