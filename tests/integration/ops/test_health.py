"""`defectscan health` with each dependency up and down: real PostgreSQL, Redis and Prefect.

The Prefect checks run against the session's real Prefect server (``prefect_api`` in
``tests/conftest.py``, ``prefect_test_harness``), never a stand-in that always answers yes.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from defectscan.config import ModelRef, ResolvedEngine, Settings, get_settings
from defectscan.health import (
    check_archive,
    check_database,
    check_model,
    check_prefect,
    check_redis,
    run_checks,
)
from defectscan.model.checkpoint import save_checkpoint
from helpers.cli import run_cli
from helpers.oracle import oracle_unet
from helpers.redis_server import PrivateRedis

pytestmark = pytest.mark.integration

CPU = ResolvedEngine(backend="torch", device="cpu", precision="fp32", batch_size=1)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def migrated_pg(pg_url: str) -> str:
    from defectscan.store.db import upgrade_to_head

    upgrade_to_head(pg_url)
    return pg_url


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    net, spec = oracle_unet("sigmoid", tile=64, overlap=16)
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(net, spec, path)
    return path


# --------------------------------------------------------------------------- database


def test_database_up_and_at_head(migrated_pg: str) -> None:
    result = check_database(migrated_pg)
    assert result.ok, result.detail
    assert "schema at head" in result.detail


def test_database_up_but_not_migrated(pg_url: str) -> None:
    result = check_database(pg_url)
    assert not result.ok
    assert "run `defectscan db upgrade`" in result.detail
    assert "none (empty)" in result.detail


def test_database_that_does_not_exist(pg_url: str) -> None:
    url = make_url(pg_url).set(database="defectscan_no_such_db").render_as_string(False)
    result = check_database(url)
    assert not result.ok
    assert "cannot connect" in result.detail
    assert "defectscan_no_such_db" in result.detail


def test_database_server_down() -> None:
    url = f"postgresql+psycopg://app:s3cret@127.0.0.1:{_closed_port()}/x"
    result = check_database(url, timeout_s=2)
    assert not result.ok
    assert "cannot connect" in result.detail
    assert "s3cret" not in result.detail
    assert "app:***@" in result.detail


def test_sqlite_file_missing_is_reported_not_created(tmp_path: Path) -> None:
    db = tmp_path / "none.db"
    result = check_database(f"sqlite:///{db}")
    assert not result.ok
    assert "defectscan db upgrade" in result.detail
    assert not db.exists()


# --------------------------------------------------------------------------- redis


def test_redis_up(redis_url: str) -> None:
    result = check_redis(redis_url)
    assert result.ok, result.detail


def test_redis_down() -> None:
    result = check_redis(f"redis://:hunter2@127.0.0.1:{_closed_port()}/0", timeout_s=2)
    assert not result.ok
    assert "no answer to PING" in result.detail
    assert "hunter2" not in result.detail


def test_redis_warns_before_it_is_full(tmp_path: Path) -> None:
    """At redis_memory_warn_share of maxmemory, without one, or with an evicting policy."""
    server = PrivateRedis(tmp_path, "--maxmemory", "64mb", "--maxmemory-policy", "noeviction")
    server.start()
    client = server.client()
    try:
        roomy = check_redis(server.url, memory_warn_share=0.8)
        assert (roomy.ok, roomy.warning) == (True, False), roomy.detail
        assert "of 64 MB maxmemory" in roomy.detail
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", int(used / 0.85))  # about 85% used
        near = check_redis(server.url, memory_warn_share=0.8)
        assert (near.ok, near.warning) == (True, True), near.detail
        assert "redis_memory_warn_share=0.8" in near.detail
        assert near.line().startswith("warn redis")
        assert not check_redis(server.url, memory_warn_share=0.95).warning
        client.config_set("maxmemory", 0)
        unlimited = check_redis(server.url)
        assert unlimited.warning
        assert "no maxmemory" in unlimited.detail
        client.config_set("maxmemory", 64 * 1024 * 1024)
        client.config_set("maxmemory-policy", "allkeys-lru")
        evicting = check_redis(server.url)
        assert evicting.warning
        assert "evicts keys" in evicting.detail
    finally:
        client.close()
        server.crash()


def test_redis_is_checked_with_the_credentials_of_defectscan_redis_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = PrivateRedis(tmp_path, "--maxmemory", "64mb", password="s3cret-pw")
    server.start()
    try:
        monkeypatch.setenv("DEFECTSCAN_REDIS_URL", server.auth_url)
        assert check_redis(server.url).ok  # a line's URL without a password borrows it
        monkeypatch.setenv("DEFECTSCAN_REDIS_URL", f"redis://:wrong@127.0.0.1:{server.port}/0")
        refused = check_redis(server.url)
        assert not refused.ok
        assert "refused our credentials" in refused.detail
        assert "wrong" not in refused.detail
    finally:
        server.crash()


# --------------------------------------------------------------------------- model


def test_model_file_loads_and_runs(model_file: Path) -> None:
    result = check_model(ModelRef(kind="file", path=model_file), engine=CPU)
    assert result.ok, result.detail
    assert "runs on torch" in result.detail


def test_model_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "gone.safetensors"
    result = check_model(ModelRef(kind="file", path=path), engine=CPU)
    assert not result.ok
    assert "no such checkpoint file" in result.detail


def test_model_file_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"not a checkpoint")
    result = check_model(ModelRef(kind="file", path=path), engine=CPU)
    assert not result.ok


def test_champion_from_the_registry(migrated_pg: str, model_file: Path) -> None:
    from defectscan.store.db import make_engine, session_factory
    from defectscan.training.registry import promote, register_checkpoint

    champion = ModelRef(kind="champion")
    missing = check_model(champion, engine=CPU, database_url=migrated_pg)
    assert not missing.ok
    assert "no champion in the registry" in missing.detail

    engine = make_engine(migrated_pg)
    try:
        with session_factory(engine)() as session, session.begin():
            version = register_checkpoint(model_file, session=session).version
            promote(version, session=session, force=True)
    finally:
        engine.dispose()
    result = check_model(champion, engine=CPU, database_url=migrated_pg)
    assert result.ok, result.detail
    assert version in result.detail


# --------------------------------------------------------------------------- archive, prefect


def test_archive_writable_and_free_space(tmp_path: Path) -> None:
    assert check_archive(tmp_path / "archive", min_free_gb=0).ok
    assert (tmp_path / "archive").is_dir()
    assert list((tmp_path / "archive").iterdir()) == []  # the probe file is gone again


def test_archive_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the archive folder should be")
    result = check_archive(blocker / "archive", min_free_gb=0)
    assert not result.ok
    assert "not writable" in result.detail


def test_archive_short_of_space(tmp_path: Path) -> None:
    result = check_archive(tmp_path, min_free_gb=1e9)
    assert not result.ok
    assert "below archive_min_free_gb" in result.detail


def test_prefect_up_and_down(prefect_api: str) -> None:
    assert check_prefect(prefect_api).ok
    down = check_prefect(f"http://127.0.0.1:{_closed_port()}/api", timeout_s=2)
    assert not down.ok
    assert "no answer" in down.detail
    wrong = check_prefect(prefect_api.removesuffix("/api"))
    assert not wrong.ok
    assert "HTTP 404" in wrong.detail


def test_prefect_behind_its_basic_authentication(prefect_api: str, tmp_path: Path) -> None:
    """The README's advice: PREFECT_SERVER_API_AUTH_STRING on the server, PREFECT_API_AUTH_STRING
    for the clients. The health probe answers anyone; the check proves the credentials."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_SERVER_API_AUTH_STRING,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )

    database = f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"
    with temporary_settings(
        updates={
            PREFECT_SERVER_API_AUTH_STRING: "ops:s3cret",
            PREFECT_SERVER_DATABASE_CONNECTION_URL: database,
        }
    ):
        server = SubprocessASGIServer(port=_closed_port())
        server.start(timeout=120)
    try:
        api = server.api_url
        assert check_prefect(api, auth_string="ops:s3cret").ok
        missing = check_prefect(api, auth_string="")
        assert not missing.ok
        assert "refuses our missing credentials (HTTP 401)" in missing.detail
        wrong = check_prefect(api, auth_string="ops:guess")
        assert not wrong.ok
        assert "PREFECT_API_AUTH_STRING" in wrong.detail
        assert "guess" not in wrong.detail
    finally:
        server.stop()


# --------------------------------------------------------------------------- run_checks, CLI


def test_run_checks_selects_what_is_configured(
    migrated_pg: str, redis_url: str, tmp_path: Path, model_file: Path
) -> None:
    settings = Settings(
        database_url=migrated_pg,
        archive_dir=tmp_path / "archive",
        archive_min_free_gb=0,
        model_path=model_file,
        device="cpu",
        backend="torch",
        lines={"l1": {"name": "l1", "source": f"{redis_url}?stream=s"}},  # type: ignore[dict-item]
    )
    results = run_checks(settings, prefect_api_url=None)
    assert [r.name for r in results] == ["database", "redis", "model[l1]", "archive"]
    assert all(r.ok for r in results), [r.line() for r in results]
    # no Redis configured: no Redis check
    bare = Settings(database_url=migrated_pg, archive_dir=tmp_path, archive_min_free_gb=0)
    names = [r.name for r in run_checks(bare, only=["database", "redis", "archive"])]
    assert names == ["database", "archive"]


def test_cli_health_up_then_down(
    migrated_pg: str,
    redis_url: str,
    prefect_api: str,
    model_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plant = tmp_path / "plant.yaml"
    plant.write_text(
        f"archive_dir: {tmp_path / 'archive'}\narchive_min_free_gb: 0\n"
        f"lines:\n  l1:\n    model: {model_file}\n    engine: {{backend: torch, device: cpu}}\n"
    )
    monkeypatch.setenv("DEFECTSCAN_DATABASE_URL", migrated_pg)
    monkeypatch.setenv("DEFECTSCAN_REDIS_URL", redis_url)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    get_settings.cache_clear()
    code, out, _ = run_cli(["health", "--config", str(plant)], capsys)
    assert code == 0, out
    lines = out.strip().splitlines()
    # the shared test Redis may run without maxmemory: a warning, which passes
    lines[1] = lines[1].replace("warn redis", "ok   redis", 1)
    assert [ln.split()[:2] for ln in lines] == [
        ["ok", "database"],
        ["ok", "redis"],
        ["ok", "model[l1]"],
        ["ok", "archive"],
        ["ok", "prefect"],
    ]

    monkeypatch.setenv("DEFECTSCAN_REDIS_URL", f"redis://127.0.0.1:{_closed_port()}/0")
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{_closed_port()}/api")
    code, out, _ = run_cli(["health", "--config", str(plant), "--timeout", "2", "--json"], capsys)
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    failed = {c["name"]: c["detail"] for c in doc["checks"] if not c["ok"]}
    assert set(failed) == {"redis", "prefect"}
    assert all("\n" not in detail for detail in failed.values())

    code, out, _ = run_cli(
        ["health", "--check", "database", "--check", "archive", "--config", str(plant)], capsys
    )
    assert code == 0
    assert len(out.strip().splitlines()) == 2
