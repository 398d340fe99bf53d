"""Crash a real `defectscan monitor` in each window of the reliability contract, promote a new
champion while it is down, restart it: every image has exactly one row (PostgreSQL), whatever
model stored it, and nothing is left unsettled. Folder and Redis sources.

The crashes are deterministic: ``DEFECTSCAN_FAULT=POINT:N`` kills the process with SIGKILL the
N-th time it reaches ``POINT`` (see :mod:`defectscan.service`):

- ``before_inspect:2``: the first batch is stored and settled under v1, the second is claimed
  and not inspected. After the restart it is inspected under v2.
- ``after_commit:2``: the second batch's rows are committed under v1 and not acknowledged. After
  the restart (on v2) those images come back and are settled, not inspected again.
- ``mid_swap``: v2 is promoted while the monitor runs; it loads v2 and dies before swapping it
  in. The restarted monitor starts on v2.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from defectscan.sources.redis_stream import enqueue
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

BATCH = 4


@pytest.fixture
def stream(redis_url: str) -> Iterator[str]:
    name = f"test:crash:{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    client.delete(name, f"{name}:dead", *client.keys(f"{name}:*"))
    client.close()


def _promote(url: str, checkpoint: Path) -> str:
    from defectscan.store.db import make_engine, session_factory
    from defectscan.store.model_versions import set_model_status
    from defectscan.training.registry import register_checkpoint

    engine = make_engine(url)
    try:
        with session_factory(engine, write=True).begin() as session:
            version = register_checkpoint(checkpoint, session=session).version
            set_model_status(version, "champion", session=session)
    finally:
        engine.dispose()
    return version


class Line:
    """Parts arriving on a folder or a stream, and the monitor command that takes them."""

    def __init__(self, kind: str, tmp_path: Path, redis_url: str, stream: str) -> None:
        self.kind = kind
        self.tmp = tmp_path
        self.redis_url = redis_url
        self.stream = stream
        self.camera = tmp_path / "camera"
        self.camera.mkdir()
        self.written = 0

    def add(self, n: int) -> None:
        if self.kind == "folder":
            write_parts(self.camera, n, start=self.written)
        else:
            parts = write_parts(self.tmp / "parts", n, start=self.written)
            client = redis.Redis.from_url(self.redis_url)
            enqueue(client, self.stream, parts)
            client.close()
        self.written += n

    @property
    def source(self) -> str:
        if self.kind == "folder":
            return f"folder:{self.camera}"
        return f"{self.redis_url}?stream={self.stream}&block_ms=200"

    def settled(self) -> bool:
        if self.kind == "folder":
            processing = self.camera / "processing"
            return not list(self.camera.glob("*.png")) and not list(processing.glob("*.png"))
        client = redis.Redis.from_url(self.redis_url)
        try:
            return int(client.xpending(self.stream, "defectscan")["pending"]) == 0
        finally:
            client.close()


@pytest.mark.parametrize("kind", ["folder", "redis"])
@pytest.mark.parametrize("window", ["before_inspect", "after_commit", "mid_swap"])
def test_crash_in_a_window_then_a_model_switch_one_row_per_image(
    tmp_path: Path, pg_url: str, redis_url: str, stream: str, window: str, kind: str
) -> None:
    from defectscan.store.db import upgrade_to_head

    upgrade_to_head(pg_url)  # the operator's `defectscan db upgrade`
    v1 = _promote(pg_url, oracle_checkpoint(tmp_path / "v1.safetensors", gain=60.0))
    v2_file = oracle_checkpoint(tmp_path / "v2.safetensors", gain=61.0)
    line = Line(kind, tmp_path, redis_url, stream)
    line.add(3 * BATCH)
    args = ["monitor", "--source", line.source, "--model", "champion", "--line", "L1"]
    args += ["--batch-size", str(BATCH), "--no-prefect"]
    log = tmp_path / "monitor.log"

    fault = {"before_inspect": "before_inspect:2", "after_commit": "after_commit:2"}
    env = cli_env(tmp_path, pg_url, DEFECTSCAN_FAULT=fault.get(window, window))
    first = start_cli(args, env, log)
    try:
        if window == "mid_swap":
            wait_for(lambda: count(pg_url) == 3 * BATCH, timeout=120, what="the first parts")
            v2 = _promote(pg_url, v2_file)  # the monitor's next poll loads it, and dies
        assert first.wait(timeout=120) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        stop(first)
    assert f"at {window}" in log.read_text()
    # The monitor commits each row as soon as its image is inspected: the second commit is
    # the second row (before_inspect fires once per batch).
    stored = {"before_inspect": BATCH, "after_commit": 2, "mid_swap": 3 * BATCH}[window]
    assert count(pg_url) == stored
    if window != "mid_swap":
        assert not line.settled()  # the crash left a batch in hand

    if window != "mid_swap":
        v2 = _promote(pg_url, v2_file)
    line.add(BATCH)  # parts that arrive while the monitor is down
    second = start_cli([*args, "--idle-exit", "2"], cli_env(tmp_path, pg_url), log)
    try:
        assert second.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        stop(second)

    total = 4 * BATCH
    assert rows(pg_url) == [(total,)]
    assert rows(pg_url, "SELECT count(DISTINCT source_key) FROM inspections") == [(total,)]
    assert rows(pg_url, "SELECT count(DISTINCT sha256) FROM inspections") == [(total,)]
    by_version = dict(
        rows(
            pg_url,
            "SELECT m.version, count(*) FROM inspections i JOIN model_versions m "
            "ON m.id = i.model_version_id GROUP BY m.version",
        )
    )
    # what was committed before the crash stays under v1; nothing is stored twice
    assert by_version == {v1: stored, v2: total - stored}
    assert line.settled()
