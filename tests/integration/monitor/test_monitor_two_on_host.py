"""Two `defectscan monitor` processes on one host with the same (default) metrics port: the
second logs a clear error and an events row and inspects its line; it does not die at start."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from helpers.line import (
    cli_env,
    count,
    oracle_checkpoint,
    rows,
    start_cli,
    stop,
    wait_for,
    write_parts,
)

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serves(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return False
    return True


def test_two_monitors_one_metrics_port_both_inspect(tmp_path: Path, pg_url: str) -> None:
    from defectscan.store.db import upgrade_to_head

    upgrade_to_head(pg_url)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    write_parts(tmp_path / "cam1", 4)
    write_parts(tmp_path / "cam2", 3, start=10)
    port = _free_port()  # the setting both monitors share, as 9464 is by default
    env = cli_env(tmp_path, pg_url, DEFECTSCAN_METRICS_PORT=str(port))

    def args(camera: str, line: str) -> list[str]:
        folder = f"folder:{tmp_path / camera}"
        return ["monitor", "--source", folder, "--model", str(model), "--line", line]

    log1, log2 = tmp_path / "monitor1.log", tmp_path / "monitor2.log"
    first = start_cli([*args("cam1", "L1"), "--no-prefect", "--idle-exit", "20"], env, log1)
    second = None
    try:
        wait_for(lambda: _serves(port), timeout=120, what="the first monitor's /metrics")
        second = start_cli([*args("cam2", "L2"), "--no-prefect", "--idle-exit", "2"], env, log2)
        assert second.wait(timeout=120) == 0, log2.read_text()[-3000:]
        wait_for(lambda: count(pg_url) == 7, timeout=60, what="rows of both lines")
        assert _serves(port)  # the first monitor still owns its endpoint
    finally:
        stop(first)
        if second is not None:
            stop(second)
    by_line = dict(rows(pg_url, "SELECT line, count(*) FROM inspections GROUP BY line"))
    assert by_line == {"L1": 4, "L2": 3}
    text = log2.read_text()
    assert f"cannot serve Prometheus /metrics on 127.0.0.1:{port}" in text
    assert "Traceback" not in text
    events = rows(pg_url, "SELECT kind, line, message FROM events WHERE kind='metrics_unavailable'")
    assert [(k, line) for k, line, _ in events] == [("metrics_unavailable", "L2")]
    assert "metrics_port" in str(events[0][2])
