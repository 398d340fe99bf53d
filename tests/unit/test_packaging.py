"""The wheel's package list is complete and ships the Alembic migrations."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _setuptools() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return dict(tomllib.load(f)["tool"]["setuptools"])


def test_every_subpackage_is_listed_for_the_wheel() -> None:
    listed = set(_setuptools()["packages"])  # type: ignore[call-overload]
    on_disk = {
        ".".join(p.parent.relative_to(REPO / "inspect").parts)
        for p in (REPO / "inspect" / "defectscan").rglob("__init__.py")
    }
    missing = sorted(on_disk - listed)
    assert not missing, (
        f"add {missing} to [tool.setuptools] packages in pyproject.toml, or a non-editable "
        "install will not contain them"
    )


def test_migrations_are_mapped_into_the_package() -> None:
    config = _setuptools()
    assert config["package-dir"] == {
        "": "inspect",
        "defectscan._migrations": "migrations",
        "flows": "flows",
    }
    assert (REPO / "migrations" / "env.py").is_file()
    assert "defectscan._migrations.versions" in config["packages"]  # type: ignore[operator]


def test_migrations_dir_finds_env_py() -> None:
    from defectscan.store.db import migrations_dir

    assert (migrations_dir() / "env.py").is_file()
    assert any((migrations_dir() / "versions").glob("*.py"))
