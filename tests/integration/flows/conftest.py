"""Fixtures of the flow tests: the settings a flow run in this process reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml


@pytest.fixture
def flow_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """``flow_settings(tmp, database_url, plant={...}, **env)``: settings for in-process flows.

    Writes the plant file, points ``DEFECTSCAN_*`` at it and at the database, and clears the
    cached settings (again afterwards), so a flow called in this process reads them.
    """
    from defectscan.config import get_settings

    def apply(
        folder: Path, database_url: str, *, plant: dict[str, Any] | None = None, **env: str
    ) -> Path:
        path = folder / "plant.yaml"
        path.write_text(yaml.safe_dump(plant or {}))
        monkeypatch.setenv("DEFECTSCAN_CONFIG", str(path))
        monkeypatch.setenv("DEFECTSCAN_DATABASE_URL", database_url)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        return path

    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()
