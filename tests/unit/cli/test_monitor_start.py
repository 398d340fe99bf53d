"""``defectscan monitor`` inspects before Prefect has started: its start-up holds nothing back.

The Prefect API here is a real socket that accepts connections and never answers (a Prefect
server still starting, or a slow one): the monitor must commit rows while it hangs. Before,
every image waited for the first flow run, which waited for the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.line import (
    HeldApi,
    cli_env,
    count,
    oracle_checkpoint,
    start_cli,
    stop,
    wait_for,
    write_parts,
)

__all__: list[str] = []


@pytest.fixture
def hung_api() -> Iterator[str]:
    """An HTTP address that accepts connections and never answers while the test runs."""
    api = HeldApi()
    try:
        yield api.url
    finally:
        api.close()


def test_the_first_rows_do_not_wait_for_prefect(
    tmp_path: Path, sqlite_url: str, hung_api: str
) -> None:
    camera = tmp_path / "camera"
    write_parts(camera, 4)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    env = cli_env(
        tmp_path,
        sqlite_url,
        PREFECT_API_URL=hung_api,
        DEFECTSCAN_BACKEND="torch",  # the engine is not what this test is about
    )
    proc = start_cli(
        ["monitor", "--source", f"folder:{camera}", "--model", str(model), "--prefect"],
        env,
        tmp_path / "monitor.log",
    )
    try:
        wait_for(lambda: count(sqlite_url) == 4, timeout=90, what="4 rows while Prefect hangs")
        assert proc.poll() is None
    finally:
        import signal

        code = stop(proc, signal.SIGTERM)
    log = (tmp_path / "monitor.log").read_text()
    assert code == 0, log[-3000:]
    assert "4 images" in log  # the first run's summary: it ended on the stop request
