"""The monitor as operators run it (a `defectscan monitor` process): kill -9, half-written files.

Each test starts the real CLI in a subprocess on SQLite and PostgreSQL, kills it with SIGKILL
in the middle of a batch, starts it again, and counts rows and files.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from helpers.line import (
    cli_env,
    count,
    oracle_checkpoint,
    part_bytes,
    rows,
    start_cli,
    stop,
    wait_for,
)

pytestmark = pytest.mark.integration


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []


def _big_parts(folder: Path, n: int) -> None:
    """Parts of 384x512: a batch takes long enough to be killed half-way through."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = cv2.imdecode(np.frombuffer(part_bytes(i, fail=i % 3 == 0), np.uint8), 0)
        big = cv2.resize(small, (512, 384), interpolation=cv2.INTER_NEAREST)
        ok, buf = cv2.imencode(".png", big)
        assert ok
        tmp = folder / f"part{i:04d}.png.tmp"
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, folder / f"part{i:04d}.png")


def test_kill_9_mid_batch_then_restart_one_row_per_image(tmp_path: Path, db_url: str) -> None:
    n = 40
    camera = tmp_path / "camera"
    _big_parts(camera, n)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    env = cli_env(tmp_path, db_url)
    if db_url.startswith("postgresql"):
        from defectscan.store.db import upgrade_to_head

        upgrade_to_head(db_url)  # an operator's `defectscan db upgrade`
    args = ["monitor", "--source", f"folder:{camera}", "--model", str(model), "--line", "L1"]
    args += ["--batch-size", "4", "--no-prefect"]
    log = tmp_path / "monitor.log"
    first = start_cli(args, env, log)
    try:
        # kill while a batch is in hand: rows committed already, files claimed and not settled
        wait_for(
            lambda: count(db_url) >= 4 and bool(_files(camera / "processing")),
            timeout=120,
            interval=0.02,
            what="a committed batch and a claimed one",
        )
    finally:
        assert stop(first, signal.SIGKILL) == -signal.SIGKILL
    claimed = len(_files(camera / "processing"))
    stored = rows(db_url)[0][0]
    assert claimed > 0, "the kill should have caught a batch in hand"
    assert stored < n

    second = start_cli([*args, "--idle-exit", "3"], env, log)
    assert second.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert rows(db_url) == [(n,)]
    assert rows(db_url, "SELECT count(DISTINCT sha256) FROM inspections") == [(n,)]
    assert len(list((camera / "done").rglob("*.png"))) == n
    assert _files(camera / "processing") == []
    assert not list(camera.glob("*.png"))


def test_a_file_being_written_is_not_claimed_until_complete(
    tmp_path: Path, sqlite_url: str
) -> None:
    camera = tmp_path / "camera"
    camera.mkdir()
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    env = cli_env(tmp_path, sqlite_url)
    data = part_bytes(7, fail=True)
    log = tmp_path / "monitor.log"
    proc = start_cli(
        [
            "monitor",
            "--source",
            f"folder:{camera}",
            "--model",
            str(model),
            "--no-prefect",
            "--idle-exit",
            "6",
        ],
        env,
        log,
    )
    try:
        target = camera / "slow.png"
        # A camera that writes in place, slowly: a third now, the rest over ~3 s.
        with target.open("wb") as fh:
            fh.write(data[: len(data) // 3])
            fh.flush()
            for k in range(6):
                time.sleep(0.5)
                assert target.exists(), "claimed while still being written"
                end = len(data) // 3 + (k + 1) * (len(data) - len(data) // 3) // 6
                fh.write(data[fh.tell() : end])
                fh.flush()
            fh.write(data[fh.tell() :])
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        stop(proc)
    result = rows(sqlite_url, "SELECT status, verdict, error_kind FROM inspections")
    assert result == [("ok", "fail", None)]
