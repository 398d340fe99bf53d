"""A monitor's engine improves by itself: fast start, INT8 from the line, parity failures, off.

Real pieces throughout: an oracle checkpoint (a known per-pixel function, tiny), a camera
folder, SQLite or PostgreSQL, the background process (``python -m defectscan.model.quantise``)
exporting with OpenVINO and quantising with NNCF, parity checked on other images of the line.
A parity failure is forced through the plant's own tolerance (``int8_parity_mean_abs``): the
export and the check run for real, the oracle's INT8 engine differs from torch by about 4e-4
on average, which a tolerance of 1e-6 refuses.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from sqlalchemy.orm import Session

from defectscan.archive import ArchivePolicy, ImageArchive
from defectscan.config import Settings, get_settings
from defectscan.engine_upgrade import CalibrationPool, EngineOptions
from defectscan.metrics import MonitorMetrics
from defectscan.model.engines import engine_label
from defectscan.model.export import ENGINE_META, auto_int8_key, engine_cache_dir
from defectscan.model.quantise import export_fp32, failure_marker
from defectscan.monitor import LineMonitor, ModelProvider
from defectscan.pipeline import Inspector
from defectscan.sources.folder import FolderSource
from defectscan.store.db import make_engine, session_factory, upgrade_to_head
from defectscan.store.operations import recent_events
from helpers.line import oracle_checkpoint, part_bytes, rows, write_parts

pytest.importorskip("openvino")
pytest.importorskip("nncf")

__all__: list[str] = []

# Small on purpose: 72x96 parts are 4 tiles of 64 px; 6 + 3 images calibrate and check.
SMALL = {"calibration_images": 6, "parity_images": 3}


@pytest.fixture(autouse=True)
def _var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Engines are cached under this test's own var/."""
    var = tmp_path / "var"
    monkeypatch.setenv("DEFECTSCAN_VAR_DIR", str(var))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    get_settings.cache_clear()
    yield var
    get_settings.cache_clear()


def _fast_load(path: str) -> Inspector:
    """What a monitor on ``backend auto`` loads: cached engines only, else eager torch."""
    return Inspector.from_checkpoint(
        path, backend="auto", device="cpu", batch_size=8, cached_only=True
    )


def _monitor(
    url: str,
    folder: Path,
    model: Path,
    options: EngineOptions | None,
    *,
    metrics: MonitorMetrics | None = None,
    archive: ImageArchive | None = None,
) -> LineMonitor:
    engine = make_engine(url)
    upgrade_to_head(engine)
    source = FolderSource(folder, line="L1", camera="cam1", stable_polls=1, watch=False)
    models = ModelProvider(
        str(model), load=_fast_load, sessions=session_factory(engine, write=True), line="L1"
    )
    return LineMonitor(
        source,
        models,
        engine,
        line="L1",
        batch_size=4,
        claim_timeout=0.1,
        metrics=metrics,
        archive=archive,
        engine_options=options,
    )


def _run_until(monitor: LineMonitor, done: object, timeout: float = 240.0) -> None:
    """Step the monitor (images or not) until ``done()`` holds."""
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out; engine state {monitor.engines.state}"  # type: ignore[union-attr]
        monitor.step()


def _events(monitor: LineMonitor, kind: str) -> list[dict[str, object]]:
    with Session(monitor.engine) as session:
        return [
            {"message": e.message, "details": e.details, "level": e.level}
            for e in recent_events(session=session, kind=kind)
        ]


def _metric(metrics: MonitorMetrics, name: str) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    return [line for line in text.splitlines() if line.startswith(name)]


def test_monitor_reaches_int8_by_itself_and_a_restart_starts_on_it(
    tmp_path: Path, db_url: str
) -> None:
    camera = tmp_path / "camera"
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    write_parts(camera, 12)  # every third part fails: passes and fails to calibrate on
    metrics = MonitorMetrics()
    options = EngineOptions(**SMALL, min_speedup=0.0)  # type: ignore[arg-type]
    monitor = _monitor(db_url, camera, model, options, metrics=metrics)
    # Fast start: nothing cached, so the first image is inspected on eager torch at once.
    assert engine_label(monitor.models.inspector.backend) == "torch"
    upgrader = monitor.engines
    assert upgrader is not None
    _run_until(monitor, lambda: upgrader.state == "int8")
    assert engine_label(monitor.models.inspector.backend) == "openvino-int8"
    # The engine went into the cache under the checkpoint's sha256 and this CPU model,
    # with its parity checked on images that were not calibrated on.
    sha = monitor.models.inspector.checkpoint.sha256  # type: ignore[union-attr]
    meta = json.loads((engine_cache_dir() / auto_int8_key(sha, 64) / ENGINE_META).read_text())
    assert meta["parity"]["passed"]
    # The engine switched to keeps the pooled-features output: drift monitoring goes on.
    assert meta["features"] is True
    backend = monitor.models.inspector.backend
    assert getattr(backend, "has_features", False) is True
    assert meta["calibration_tiles"] == 6 * 4
    assert meta["parity"]["tiles"] == 3 * 4
    calib = {p.name for p in (engine_cache_dir() / "calibration").glob("*/calibration/*")}
    parity = {p.name for p in (engine_cache_dir() / "calibration").glob("*/parity/*")}
    assert len(calib) == 6
    assert len(parity) == 3
    assert not calib & parity
    switches = _events(monitor, "engine_switch")
    assert switches[0]["details"]["engine"] == "openvino-int8"  # type: ignore[index]
    assert _events(monitor, "int8_ready")
    # Inspection goes on, on INT8: new parts get their rows with the right verdicts.
    write_parts(camera, 6, start=100)
    _run_until(monitor, lambda: rows(db_url)[0][0] == 18, timeout=60)
    fails = rows(db_url, "SELECT count(*) FROM inspections WHERE verdict = 'fail'")[0][0]
    assert fails == 6  # parts 0, 3, 6, 9, 102, 105
    monitor.step()  # the gauges follow the engine in use
    assert any('engine="openvino-int8"' in line for line in _metric(metrics, "defectscan_model"))
    assert 'defectscan_engine_state{line="L1",state="int8"} 1.0' in _metric(
        metrics, "defectscan_engine_state"
    )
    monitor.close()

    # A restart on the same checkpoint starts on INT8 from the cache, with nothing to export.
    restarted = _monitor(db_url, camera, model, options)
    assert engine_label(restarted.models.inspector.backend) == "openvino-int8"
    restarted.step()
    assert restarted.engines is not None
    assert restarted.engines.state == "int8"
    assert restarted.engines._proc is None
    restarted.close()


def test_int8_failing_parity_keeps_fp32_is_recorded_and_not_retried(
    tmp_path: Path, sqlite_url: str
) -> None:
    camera = tmp_path / "camera"
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    export_fp32(model)  # fp32 engines already cached: only INT8 is left to do
    write_parts(camera, 12)
    metrics = MonitorMetrics()
    options = EngineOptions(**SMALL, min_speedup=0.0, parity_mean_abs=1e-6)  # type: ignore[arg-type]
    monitor = _monitor(sqlite_url, camera, model, options, metrics=metrics)
    running = engine_label(monitor.models.inspector.backend)
    assert running in ("openvino", "onnxruntime", "torch")
    upgrader = monitor.engines
    assert upgrader is not None
    _run_until(monitor, lambda: upgrader.state == "failed")
    # Still inspecting on the fp32 engine it had; the failure is in events and /metrics.
    assert engine_label(monitor.models.inspector.backend) == running
    failed = _events(monitor, "int8_failed")
    assert len(failed) == 1
    assert failed[0]["level"] == "error"
    assert "mean |dp|" in str(failed[0]["details"]["reason"])  # type: ignore[index]
    assert 'defectscan_int8_failures_total{line="L1"} 1.0' in _metric(
        metrics, "defectscan_int8_failures_total"
    )
    assert not _events(monitor, "engine_switch")
    write_parts(camera, 4, start=100)
    _run_until(monitor, lambda: rows(sqlite_url)[0][0] == 16, timeout=60)
    sha = monitor.models.inspector.checkpoint.sha256  # type: ignore[union-attr]
    assert failure_marker(sha, 64).is_file()
    monitor.close()

    # Restarted, the monitor does not quantise that checkpoint again...
    again = _monitor(sqlite_url, camera, model, options)
    again.step()
    assert again.engines is not None
    assert again.engines.state == "failed"
    assert again.engines.pool is None
    again.close()
    # ... until asked to (--retry-int8): the marker goes and, the line's images being kept
    # from before, quantisation starts again at once.
    retry = EngineOptions(**SMALL, retry_int8=True)  # type: ignore[arg-type]
    asked = _monitor(sqlite_url, camera, model, retry)
    asked.step()
    assert not failure_marker(sha, 64).exists()
    assert asked.engines is not None
    assert asked.engines.state == "quantising"
    asked.close()


def test_a_background_job_past_its_timeout_is_stopped_and_the_line_keeps_its_engine(
    tmp_path: Path, sqlite_url: str
) -> None:
    camera = tmp_path / "camera"
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    write_parts(camera, 12)
    # No job can finish in no time (the process alone takes seconds to import torch): each
    # one is stopped at the first look after it started, the fp32 exports and then INT8.
    options = EngineOptions(**SMALL, timeout_s=0.0)  # type: ignore[arg-type]
    monitor = _monitor(sqlite_url, camera, model, options)
    upgrader = monitor.engines
    assert upgrader is not None
    procs = []

    def stopped_twice() -> bool:
        if upgrader._proc is not None and upgrader._proc not in procs:
            procs.append(upgrader._proc)
        return len(_events(monitor, "engine_job_timeout")) == 2

    _run_until(monitor, stopped_twice, timeout=120)
    timeouts = _events(monitor, "engine_job_timeout")[::-1]  # oldest first
    assert [t["details"]["job"] for t in timeouts] == ["fp32", "int8"]  # type: ignore[index]
    assert all(t["level"] == "warning" for t in timeouts)
    assert upgrader.state == "failed"
    assert upgrader.settled
    assert len(procs) == 2
    assert all(p.poll() is not None for p in procs)  # both processes are gone
    assert engine_label(monitor.models.inspector.backend) == "torch"  # the line went on
    assert rows(sqlite_url)[0][0] == 12
    sha = monitor.models.inspector.checkpoint.sha256  # type: ignore[union-attr]
    assert not failure_marker(sha, 64).exists()  # a timeout is not a parity failure
    monitor.close()
    # A restart tries again (the pool it gathered is kept): INT8 is quantising at once.
    again = _monitor(sqlite_url, camera, model, EngineOptions(**SMALL))  # type: ignore[arg-type]
    again.step()
    assert again.engines is not None
    assert again.engines.state in ("exporting", "quantising")
    again.close()


def _plant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[str, Path]:
    camera = tmp_path / "camera"
    write_parts(camera, 12)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    return url, camera


@pytest.mark.parametrize(
    ("env", "engine"),
    [({"DEFECTSCAN_BACKEND": "openvino"}, "openvino"), ({"DEFECTSCAN_BACKEND": "torch"}, "torch")],
)
def test_a_pinned_backend_is_never_overridden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], engine: str
) -> None:
    from defectscan.monitor_build import build_monitor

    url, camera = _plant(tmp_path, monkeypatch, **env)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    monitor = build_monitor(
        f"folder:{camera}", model=str(model), line=None, database_url=url, claim_timeout=0.1
    )
    assert monitor.engines is None  # no background engine work at all
    # files already there when the watch began: taken after two stable polls (0.5 s apart)
    summary = monitor.run(idle_exit=3.0)
    assert summary.images == 12
    assert engine_label(monitor.models.inspector.backend) == engine
    monitor.close()
    assert not list((tmp_path / "var" / "engines").glob("*int8*"))
    assert not (tmp_path / "var" / "engines" / "calibration").exists()


def test_auto_int8_off_in_the_plant_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.model_validate(
        {"var_dir": str(tmp_path), "lines": {"L1": {"engine": {"auto_int8": False}}, "L2": {}}}
    )
    off = EngineOptions.for_line(settings, "L1")
    on = EngineOptions.for_line(settings, "L2")
    assert off is not None
    assert on is not None
    assert not off.int8
    assert on.int8
    # A pinned engine gets no options at all.
    pinned = Settings.model_validate({"var_dir": str(tmp_path), "backend": "openvino"})
    assert EngineOptions.for_line(pinned, None) is None

    from defectscan.monitor_build import build_monitor

    url, camera = _plant(tmp_path, monkeypatch, DEFECTSCAN_AUTO_INT8="false")
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    export_fp32(model)  # fp32 cached: with INT8 off there is nothing left to do
    monitor = build_monitor(
        f"folder:{camera}", model=str(model), line=None, database_url=url, claim_timeout=0.1
    )
    assert monitor.engines is not None
    assert not monitor.engines.options.int8
    assert monitor.run(idle_exit=3.0).images == 12
    assert monitor.engines.state == "off"
    assert monitor.engines.pool is None
    assert monitor.engines._proc is None
    monitor.close()
    assert not (tmp_path / "var" / "engines" / "calibration").exists()


def test_calibration_pool_is_bounded_stratified_and_splits_disjoint(tmp_path: Path) -> None:
    pool = CalibrationPool(tmp_path / "pool", calibration=6, parity=3)
    n = 0
    for i in range(200):
        camera = f"cam{i % 3}"
        fail = i % 5 == 0
        data = part_bytes(i, fail=fail)
        stratum = pool.stratum(camera, "fail" if fail else "pass")
        n += pool.offer(stratum, f"{i:064x}", functools.partial(bytes, data))
    # at most 9 per stratum (3 cameras x pass/fail), nothing taken twice
    assert max(pool.counts.values()) <= 9
    assert len(pool.counts) == 6
    assert n == sum(pool.counts.values())
    assert pool.ready()
    calib, parity = pool.split()
    c = {p.name for p in calib.iterdir()}
    p = {p.name for p in parity.iterdir()}
    assert len(c) == 6
    assert len(p) == 3
    assert not c & p
    # every camera and both verdicts made it into the calibration set
    strata = {pool.stratum(f"cam{i}", v) for i in range(3) for v in ("pass", "fail")}
    chosen = {f.parent.name for f in (tmp_path / "pool" / "pool").glob("*/*") if f.name in c | p}
    assert chosen == strata
    # the pool survives a restart
    assert CalibrationPool(tmp_path / "pool", calibration=6, parity=3).ready()


def test_a_pool_without_fails_waits_then_goes_ahead(tmp_path: Path) -> None:
    pool = CalibrationPool(tmp_path / "pool", calibration=4, parity=2)
    for i in range(6):
        pool.offer(
            pool.stratum("cam", "pass"), f"{i:064x}", functools.partial(part_bytes, i, fail=False)
        )
    assert not pool.ready()  # passes only: wait a while for fails
    for i in range(6, 24):
        pool.offer(
            pool.stratum("cam", "pass"), f"{i:064x}", functools.partial(part_bytes, i, fail=False)
        )
    assert pool.ready()  # 4 x target offered and no fail: calibrate on what the line shows


def test_a_new_champion_calibrates_from_the_archive(tmp_path: Path, sqlite_url: str) -> None:
    """The archive's images of the line fill the pool before the monitor sees any image."""
    camera = tmp_path / "camera"
    archive = ImageArchive(tmp_path / "archive", ArchivePolicy(pass_share=1.0))
    first = oracle_checkpoint(tmp_path / "first.safetensors")
    write_parts(camera, 12)
    monitor = _monitor(sqlite_url, camera, first, None, archive=archive)
    monitor.run(idle_exit=0.3)
    monitor.close()
    assert archive.usage()[0] == 12
    second = oracle_checkpoint(tmp_path / "second.safetensors", gain=50.0)
    export_fp32(second)
    options = EngineOptions(**SMALL)  # type: ignore[arg-type]
    fresh = _monitor(sqlite_url, camera, second, options, archive=archive)
    fresh.step()  # no images waiting: the pool comes from the archive alone
    assert fresh.engines is not None
    pool = fresh.engines.pool
    assert pool is not None
    assert pool.ready()
    assert {s.rsplit("__", 1)[1] for s in pool.counts} == {"pass", "fail"}
    fresh.close()


def test_a_promoted_champion_gets_the_same_treatment_in_a_running_monitor(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A promotion while the monitor runs: the new champion's INT8 work starts at once, its
    calibration from the archive's images of the line (no wait for new parts)."""
    from defectscan.store.model_versions import set_model_status
    from defectscan.training.registry import register_checkpoint

    first = oracle_checkpoint(tmp_path / "first.safetensors")
    second = oracle_checkpoint(tmp_path / "second.safetensors", gain=50.0)
    export_fp32(first)  # fp32 cached: only the INT8 work is left for either model
    export_fp32(second)
    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    sessions = session_factory(engine, write=True)
    with sessions.begin() as session:
        v1 = register_checkpoint(first, session=session).version
        set_model_status(v1, "champion", session=session)
    camera = tmp_path / "camera"
    write_parts(camera, 12)
    archive = ImageArchive(tmp_path / "archive", ArchivePolicy(pass_share=1.0))
    # the first champion's own INT8 work starts; the promotion makes it moot
    monitor = LineMonitor(
        FolderSource(camera, line="L1", camera="cam1", stable_polls=1, watch=False),
        ModelProvider("champion", load=_fast_load, sessions=sessions, line="L1", poll_s=0.0),
        engine,
        line="L1",
        batch_size=4,
        claim_timeout=0.1,
        archive=archive,
        engine_options=EngineOptions(**SMALL),  # type: ignore[arg-type]
    )
    upgrader = monitor.engines
    assert upgrader is not None
    monitor.run(idle_exit=0.3)
    assert archive.usage()[0] == 12
    first_sha = upgrader._sha
    with sessions.begin() as session:
        v2 = register_checkpoint(second, session=session).version
        set_model_status(v2, "champion", session=session)
    monitor.step()  # between batches: the switch, and the new model's engine work planned
    assert monitor.models.inspector.model_version == v2
    assert upgrader._sha != first_sha
    pool = upgrader.pool
    assert pool is not None
    assert pool.root.name.startswith(upgrader._sha[:16])  # type: ignore[index]
    # from the archive alone (no new part arrived), passes and fails of the line
    assert {s.rsplit("__", 1)[1] for s in pool.counts} == {"pass", "fail"}
    assert upgrader.state == "quantising"
    monitor.close()


def test_a_batch_fills_the_calibration_pool_and_the_next_monitor_quantises_at_once(
    tmp_path: Path, sqlite_url: str
) -> None:
    from defectscan.batch import BatchSelection, run_batch
    from defectscan.engine_upgrade import calibration_pool_for

    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    export_fp32(model)
    lot = tmp_path / "lot"
    write_parts(lot, 12)
    inspector = _fast_load(str(model))
    options = EngineOptions(**SMALL)  # type: ignore[arg-type]
    pool = calibration_pool_for(inspector, options)
    assert pool is not None
    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    run_batch(
        BatchSelection(paths=(str(lot),)),
        inspector=inspector,
        engine=engine,
        report_dir=tmp_path / "report",
        line="L1",
        camera="cam-a",
        calibration=pool,
    )
    engine.dispose()
    inspector.close()
    assert pool.ready()
    assert calibration_pool_for(inspector, options) is None  # full: nothing more to gather
    assert calibration_pool_for(inspector, EngineOptions(int8=False)) is None
    # A monitor on that model starts quantising on its first look, before any new part.
    camera = tmp_path / "camera"
    camera.mkdir()
    monitor = _monitor(sqlite_url, camera, model, options)
    monitor.step()
    assert monitor.engines is not None
    assert monitor.engines.state == "quantising"
    monitor.close()


def test_two_monitors_on_one_model_quantise_it_once(tmp_path: Path, sqlite_url: str) -> None:
    """Two lines with the same model on one host share the engine cache: one job runs, the
    other monitor waits for its engine and then switches too."""
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    export_fp32(model)
    options = EngineOptions(**SMALL, min_speedup=0.0)  # type: ignore[arg-type]
    cam_a, cam_b = tmp_path / "cam-a", tmp_path / "cam-b"
    write_parts(cam_a, 12)
    write_parts(cam_b, 12, start=50)
    a = _monitor(sqlite_url, cam_a, model, options)
    b = _monitor(sqlite_url, cam_b, model, options)
    ua, ub = a.engines, b.engines
    assert ua is not None
    assert ub is not None
    _run_until(a, lambda: ua.state == "quantising")
    assert ua._proc is not None
    b.run(idle_exit=0.3)  # its pool is full too, but the model's lock is taken
    assert ub.state == "quantising"
    assert ub._proc is None  # no second job
    _run_until(a, lambda: ua.state == "int8")
    _run_until(b, lambda: ub.state == "int8", timeout=60)
    assert ub._proc is None  # it took the engine the other monitor made
    assert engine_label(b.models.inspector.backend) == "openvino-int8"
    assert len(_events(a, "int8_ready")) == 1  # one quantisation in all (one database here)
    a.close()
    b.close()


def test_a_remembered_engine_gone_from_the_cache_is_chosen_again(tmp_path: Path) -> None:
    from defectscan.model.checkpoint import load_checkpoint
    from defectscan.model.engines import auto_cpu_backend, remember_choice, remembered_choice

    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    export_fp32(model)
    ckpt = load_checkpoint(model)
    # INT8 was the choice, and its engine has since been deleted from the cache
    remember_choice(ckpt.sha256, "auto", 64, "openvino-int8", {"openvino-int8": 100.0})
    backend = auto_cpu_backend(
        ckpt.model, "sigmoid", n_channels=1, tile=64, checkpoint_sha256=ckpt.sha256, spec=ckpt.spec
    )
    choice = json.loads((engine_cache_dir() / f"{ckpt.sha256[:16]}-auto-auto-t64.json").read_text())
    assert choice["engine"] != "openvino-int8"  # timed again among what there is
    assert {"openvino", "onnxruntime", "torch"} <= set(choice["tiles_per_s"])
    assert engine_label(backend) == choice["engine"] == remembered_choice(ckpt.sha256, "auto", 64)
