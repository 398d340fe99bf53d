"""Prometheus /metrics of a running monitor that processed images: the counts are exact."""

from __future__ import annotations

import signal
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from defectscan.tiling import make_grid
from helpers.line import cli_env, count, oracle_checkpoint, start_cli, stop, wait_for, write_parts

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_scrape_a_running_monitor(tmp_path: Path, sqlite_url: str) -> None:
    camera = tmp_path / "camera"
    write_parts(camera, 6)  # parts 0 and 3 fail
    (camera / "junk.png").write_bytes(b"not an image")
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    port = _free_port()
    env = cli_env(tmp_path, sqlite_url)
    log = tmp_path / "monitor.log"
    proc = start_cli(
        [
            "monitor",
            "--source",
            f"folder:{camera}",
            "--model",
            str(model),
            "--line",
            "L1",
            "--camera",
            "cam7",
            "--no-prefect",
            "--metrics-port",
            str(port),
        ],
        env,
        log,
    )
    try:
        wait_for(lambda: count(sqlite_url) == 7, timeout=120, what="seven rows")
        wait_for(lambda: _scrapes(port), timeout=30, what="/metrics answering")
        # the queue gauge refreshes every few seconds, between batches
        waiting = ("defectscan_queue_waiting", (("line", "L1"),))
        wait_for(lambda: _samples(port).get(waiting) == 0, timeout=30, what="an empty queue")
        archived = ("defectscan_archive_files", ())
        wait_for(lambda: _samples(port).get(archived, 0) >= 3, timeout=30, what="archive size")
        m = _samples(port)
    finally:
        stop(proc, signal.SIGTERM)
    base = (("camera", "cam7"), ("line", "L1"))
    assert m[("defectscan_images_total", (*base, ("status", "ok"), ("verdict", "fail")))] == 2
    assert m[("defectscan_images_total", (*base, ("status", "ok"), ("verdict", "pass")))] == 4
    rejected = ("defectscan_images_total", (*base, ("status", "rejected"), ("verdict", "none")))
    assert m[rejected] == 1
    reason = ("defectscan_rejected_total", (("line", "L1"), ("reason", "not_an_image")))
    assert m[reason] == 1
    tiles_each = make_grid(72, 96, tile=64, overlap=16).n_tiles
    assert m[("defectscan_tiles_total", (("line", "L1"),))] == 6 * tiles_each
    assert m[("defectscan_defects_total", (("class", "dark"), ("line", "L1")))] == 2
    assert m[("defectscan_capture_to_commit_seconds_count", (("line", "L1"),))] == 7
    infer = ("defectscan_stage_seconds_count", (("line", "L1"), ("stage", "infer")))
    assert m[infer] == 6
    info = [k for k in m if k[0] == "defectscan_model_info"]
    assert len(info) == 1
    assert dict(info[0][1])["version"].startswith("oracle-")
    assert m[("defectscan_archive_files", ())] >= 3  # two failed parts and the junk file


def _scrapes(port: int) -> bool:
    try:
        _samples(port)
    except OSError:
        return False
    return True
