"""SQLite engine behaviour (WAL, locks, retries) and the store's pure helpers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from defectscan import store as repo
from defectscan.config import get_settings
from defectscan.errors import StoreError
from defectscan.store import db
from defectscan.store.inspection_queries import _check_shifts, _percentile_cont
from defectscan.store.records import InspectionRecord
from defectscan.store.schema import Inspection

MakeRecord = Callable[..., InspectionRecord]


def _migrated(url: str, **kwargs: int) -> sa.Engine:
    engine = db.make_engine(url, **kwargs)
    db.upgrade_to_head(engine)
    return engine


def _register(engine: sa.Engine) -> None:
    with db.session_factory(engine).begin() as session:
        repo.ensure_model_version(
            session=session,
            version="unet-test-0123456789ab",  # the make_record default
            sha256="0123456789ab" + "0" * 52,
            name="unet-test",
            checkpoint_path=None,
            spec={},
            activation="sigmoid",
            class_names=["scratch", "dent"],
        )


def _count(engine: sa.Engine) -> int:
    with db.session_factory(engine)() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(Inspection)) or 0)


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url, sqlite_busy_timeout_ms=1234)
    try:
        with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA busy_timeout").scalar() == 1234
            assert pragma("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_default_url_is_a_sqlite_file_under_var_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEFECTSCAN_DATABASE_URL", raising=False)
    monkeypatch.setenv("DEFECTSCAN_VAR_DIR", str(tmp_path / "not" / "yet" / "var"))
    get_settings.cache_clear()
    try:
        engine = db.make_engine()
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        engine.dispose()
    finally:
        get_settings.cache_clear()
    assert (tmp_path / "not" / "yet" / "var" / "defectscan.db").is_file()


def test_open_reader_does_not_block_the_writer(sqlite_url: str, make_record: MakeRecord) -> None:
    engine = _migrated(sqlite_url, sqlite_busy_timeout_ms=100)
    _register(engine)
    try:
        with db.session_factory(engine)() as reader:
            assert reader.scalar(sa.select(sa.func.count()).select_from(Inspection)) == 0
            # the reader's transaction (and its snapshot) stays open while the writer commits
            started = time.perf_counter()
            with db.session_factory(engine, write=True).begin() as writer:
                repo.save_inspections([make_record(1)], session=writer)
            assert time.perf_counter() - started < 1.0
            assert reader.scalar(sa.select(sa.func.count()).select_from(Inspection)) == 0
        assert _count(engine) == 1
    finally:
        engine.dispose()


def _hold_write_lock(engine: sa.Engine, seconds: float) -> threading.Thread:
    locked = threading.Event()

    def hold() -> None:
        with engine.connect() as connection:
            connection.execution_options(defectscan_sqlite_begin="IMMEDIATE").begin()
            connection.exec_driver_sql("UPDATE model_versions SET metrics = NULL")
            locked.set()
            time.sleep(seconds)
            connection.commit()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(5)
    return thread


def test_writer_waits_for_another_writer_instead_of_failing(
    sqlite_url: str, make_record: MakeRecord
) -> None:
    engine = _migrated(sqlite_url)  # default busy timeout: 30 s
    _register(engine)
    try:
        holder = _hold_write_lock(engine, 0.3)
        with db.session_factory(engine, write=True).begin() as session:
            repo.save_inspections([make_record(1)], session=session)
        holder.join()
        assert _count(engine) == 1
    finally:
        engine.dispose()


def test_retrying_reruns_the_unit_of_work_while_the_database_is_locked(
    sqlite_url: str, make_record: MakeRecord
) -> None:
    engine = _migrated(sqlite_url, sqlite_busy_timeout_ms=20)
    _register(engine)
    calls = 0

    def unit(*, session: Session) -> repo.SaveResult:
        nonlocal calls
        calls += 1
        return repo.save_inspections([make_record(1), make_record(2)], session=session)

    try:
        holder = _hold_write_lock(engine, 0.4)
        sessions = db.session_factory(engine, write=True)
        result = db.retrying(unit, sessions=sessions, attempts=20, base_delay=0.05, max_delay=0.1)
        holder.join()
        assert calls > 1
        assert result.inserted == 2
        assert _count(engine) == 2
    finally:
        engine.dispose()


def test_retrying_gives_up_after_the_last_attempt(sqlite_url: str) -> None:
    engine = _migrated(sqlite_url, sqlite_busy_timeout_ms=10)
    calls = 0

    @db.with_retries(db.session_factory(engine, write=True), attempts=3, base_delay=0.01)
    def touch(*, session: Session) -> None:
        nonlocal calls
        calls += 1
        session.execute(sa.text("UPDATE model_versions SET metrics = NULL"))

    try:
        holder = _hold_write_lock(engine, 0.5)
        with pytest.raises(sa.exc.OperationalError, match="locked"):
            touch()
        holder.join()
        assert calls == 3
    finally:
        engine.dispose()


def test_retrying_does_not_repeat_errors_that_would_fail_again(
    sqlite_url: str, make_record: MakeRecord
) -> None:
    engine = _migrated(sqlite_url)
    calls = 0

    def bad(*, session: Session) -> None:
        nonlocal calls
        calls += 1
        session.execute(
            sa.text(
                "INSERT INTO training_runs (trigger, status, created_at) "
                "VALUES ('whim', 'queued', '2026-01-01')"
            )
        )

    try:
        with pytest.raises(sa.exc.IntegrityError):
            db.retrying(bad, sessions=db.session_factory(engine), base_delay=0.01)
        assert calls == 1
        with db.session_factory(engine)() as session:
            with pytest.raises(sa.exc.OperationalError) as missing:
                session.execute(sa.text("SELECT * FROM no_such_table"))
            assert not db.is_retryable(missing.value)
    finally:
        engine.dispose()


def test_missing_migrations_directory_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "REPO_ROOT", tmp_path)
    with pytest.raises(StoreError, match="pip install -e"):
        db.upgrade_to_head("sqlite://")


def test_records_module_imports_no_sqlalchemy() -> None:
    code = (
        "import sys, defectscan.store.records\n"
        "bad = [m for m in ('sqlalchemy', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(("q", "expected"), [(0.0, 1.0), (0.5, 2.5), (0.95, 3.85), (1.0, 4.0)])
def test_percentiles_interpolate_like_postgresql(q: float, expected: float) -> None:
    assert _percentile_cont([1.0, 2.0, 3.0, 4.0], q) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("shifts", "message"),
    [
        (((6, 14), (14, 22)), "uncovered"),
        (((6, 14), (12, 6)), "overlap"),
        (((0, 24),), "0-23"),
    ],
)
def test_shifts_must_cover_the_day_exactly_once(
    shifts: tuple[tuple[int, int], ...], message: str
) -> None:
    with pytest.raises(StoreError, match=message):
        _check_shifts(shifts)
