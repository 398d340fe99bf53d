"""A non-editable install (a wheel, no source tree on sys.path) can migrate a new database."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with defectscan pip-installed (not editable) from a copy of the tree.

    Dependencies come from the test venv through a ``.pth`` file, so nothing is downloaded;
    the project itself is built and installed like a user's ``pip install .``.
    """
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "var", "*.egg-info", "build", "__pycache__", ".*_cache", "tests"
        ),
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # Dependencies come from the test venv's site-packages (a plain path entry: its .pth files,
    # such as the editable install's finder, are not processed).
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--disable-pip-version-check",
            str(src),
        ],
        check=True,
        cwd=root,
    )
    shutil.rmtree(src)  # nothing of the source tree may help the installed copy
    return venv


def _run(venv: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "defectscan"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=venv,
        timeout=300,
        check=False,
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEFECTSCAN_", "PYTHON"))}
    env.update({"DEFECTSCAN_VAR_DIR": str(tmp_path / "var"), "OMP_WAIT_POLICY": "PASSIVE"})
    env.update(extra)
    return env


def test_installed_package_is_not_the_source_tree(installed: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import defectscan, defectscan.store.db as db; "
            "print(defectscan.__file__); print(db.migrations_dir())",
        ],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
        check=True,
    ).stdout.split()
    assert str(installed) in out[0]
    assert out[1].startswith(str(installed))
    assert out[1].endswith("defectscan/_migrations")


def test_db_upgrade_on_new_sqlite_database(installed: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    result = _run(installed, "db", "upgrade", "--url", url, env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(url)
    try:
        assert "inspections" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    health = _run(
        installed, "health", "--check", "database", env=_env(tmp_path, DEFECTSCAN_DATABASE_URL=url)
    )
    assert health.returncode == 0, health.stdout + health.stderr
    assert "schema at head" in health.stdout


def test_db_upgrade_on_new_postgresql_database(
    installed: Path, tmp_path: Path, pg_url: str
) -> None:
    result = _run(installed, "db", "upgrade", env=_env(tmp_path, DEFECTSCAN_DATABASE_URL=pg_url))
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(pg_url)
    try:
        assert "inspections" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
