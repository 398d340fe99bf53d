"""``defectscan models list`` in an 80-column terminal: versions whole, every field reachable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defectscan.cli.common import console
from defectscan.store import ensure_model_version, make_engine, session_factory, upgrade_to_head
from helpers.cli import run_cli

VERSIONS = ["unet-magnetic-tile-cpu-0f3a9c2b7d41", "unet-magnetic-tile-cpu-a81c44e0b9f2"]


@pytest.fixture
def registry(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    with session_factory(engine)() as session, session.begin():
        for i, version in enumerate(VERSIONS):
            ensure_model_version(
                session=session,
                version=version,
                sha256=f"{i:064x}",
                name="unet-magnetic-tile-cpu",
                checkpoint_path=f"/var/lib/defectscan/models/{version}.safetensors",
                spec={},
                activation="sigmoid",
                class_names=["blowhole", "break", "crack", "fray", "uneven"],
                metrics={"mean_iou": 0.5123 + i / 100},
                parent_version=VERSIONS[0] if i else None,
            )
    engine.dispose()
    return url


@pytest.fixture
def terminal_80(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 80)


@pytest.mark.usefixtures("terminal_80")
def test_the_table_keeps_versions_whole_at_80_columns(
    registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["models", "list", "--db", registry], capsys)
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    for version in VERSIONS:
        # whole, on one line, so it can be copied into `models promote`
        assert any(version in line for line in lines), out
    assert "…" not in out


@pytest.mark.usefixtures("terminal_80")
def test_long_shows_every_field_whole(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["models", "list", "--long", "--db", registry], capsys)
    assert code == 0
    assert "…" not in out
    for version in VERSIONS:
        assert f"/var/lib/defectscan/models/{version}.safetensors" in out.replace("\n", "")
    assert f"parent        {VERSIONS[0]}" in out
    assert "blowhole, break, crack, fray, uneven" in out


def test_json_has_every_field(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["models", "list", "--json", "--db", registry], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [r["version"] for r in rows] == VERSIONS[::-1]
    assert rows[0]["parent"] == VERSIONS[0]
    assert rows[0]["checkpoint"].endswith(".safetensors")
