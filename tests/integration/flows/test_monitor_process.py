"""`defectscan monitor` is the long-lived process of its line, and leaves nothing behind.

Without a Prefect server the monitor reports its bounded runs to Prefect's ephemeral API, whose
temporary server (uvicorn, about 230 MB) Prefect starts as a child. Killed with SIGKILL, the
monitor cannot stop it: it must die with the monitor all the same, or each crash of a
supervised monitor leaks one. The monitor also owns its archive's retention: the first pass
is due at start (no pass ran before), removes what is past the policy, and is recorded.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from defectscan.archive import ImageArchive
from helpers.line import cli_env, count, oracle_checkpoint, rows, start_cli, wait_for, write_parts
from helpers.procs import alive, children, cmdline

pytestmark = pytest.mark.integration


def test_a_killed_monitor_takes_its_prefect_server_along_and_retention_ran(
    tmp_path: Path, sqlite_url: str
) -> None:
    camera = tmp_path / "camera"
    write_parts(camera, 3)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    env = cli_env(tmp_path, sqlite_url)
    for key in [k for k in env if k.startswith("PREFECT_")]:
        del env[key]  # no server: the ephemeral API
    # an image past the archive's 90 days: the first retention pass removes it
    archive = ImageArchive(tmp_path / "var" / "archive")
    stale = archive.put(b"an image from last year")
    old = time.time() - 100 * 86400
    os.utime(stale, (old, old))
    log = tmp_path / "monitor.log"
    proc = start_cli(
        ["monitor", "--source", f"folder:{camera}", "--model", str(model), "--line", "L1"],
        env,
        log,
    )
    servers: list[int] = []
    try:
        wait_for(lambda: count(sqlite_url) == 3, timeout=180, what="three rows")

        def prefect_servers() -> list[int]:
            return [
                p
                for p in children(proc.pid)
                if "prefect.server.api.server:create_app" in cmdline(p)
            ]

        # The first rows do not wait for Prefect: its server starts beside them.
        wait_for(lambda: len(prefect_servers()) == 1, timeout=120, what="Prefect's server")
        servers = prefect_servers()
        events = rows(
            sqlite_url,
            "SELECT line, details FROM events WHERE kind = 'archive_retention'",
        )
        assert len(events) == 1, events
        assert events[0][0] == "L1"
        assert not stale.exists()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_for(
            lambda: not alive(servers[0]),
            timeout=30,
            what="the ephemeral Prefect server to die with its monitor",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in servers:  # never leave one behind, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert "Traceback" not in log.read_text(), log.read_text()
