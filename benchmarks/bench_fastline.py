"""The fast-line sections: INT8 by itself, latency at the camera's pace, and start-up times.

Three sections, each runnable alone (``--sections autoint8``, ``latency`` or ``startup``):

- ``autoint8``: a line monitor started with the default settings (``backend auto`` on the
  CPU) on a camera folder of synthetic parts is fed until it has quantised its model to INT8
  from the line's images and switched to it by itself (``switch_s``: from the monitor's start
  to the switch; ``None`` with the state it ended in when it did not). Then, in interleaved
  rounds, the same monitor takes fresh files to committed rows (file in to row, the monitor's
  own loop: claim, inspect, commit, ack) on: the engine it ran **before** the switch, the
  engine **after** it, a **manual** INT8 export (``defectscan export --int8 --calibration``
  on a folder of the line's images), **OpenVINO fp32**; beside them the seed's own loop and
  OpenVINO fp32 alone (model only) on tiles. ``vs_seed_naive`` and
  ``vs_openvino_model_only`` are tiles/s ratios (acceptance of issue 20: the default path
  after the switch >= 2.5x the seed loop and >= 1.0x OpenVINO fp32 model-only). The last
  row runs the engine after the switch while a background INT8 job of another model runs
  (with the monitor's own ``background_nice``, ``background_threads`` and
  ``background_cpu_share``, held as the monitor holds its jobs while the line inspects):
  ``vs_same_engine_alone`` is its throughput over that engine's own row (issue 20: within
  20%), ``job_cores`` the job's CPU seconds per second meanwhile.
- ``latency``: the monitor as built by ``defectscan monitor`` (folder watched, a row committed
  per image) on the engine the line ends up with (the background work done first), fed by a
  paced producer that drops files into the camera folder (``*.tmp``, then renamed: the
  arrival). ``capacity_images_per_s`` is the monitor's rate with a backlog; then at several
  shares of it, p50/p95 of arrival to committed row, and whether the backlog grew.
- ``startup``: ``defectscan monitor`` as a process (Prefect's ephemeral API, as by default)
  with one image waiting: seconds from the command to the first committed row for a
  checkpoint the engine cache has never seen (``new``: starts on eager torch, exports in the
  background) and for the same checkpoint again (``known``: its engines cached), and the
  first process's time to reach INT8 (``switch_s``, from its ``engine_switch`` event).

The model is the seed architecture at ``--width`` whose first layer marks dark pixels
(a per-pixel threshold, as the test oracle), with the rest of the network dense and random:
its masks mean something, so INT8 parity is a real check, and it costs what the seed costs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    CPU_ENGINE_BATCH,
    BenchConfig,
    Log,
    bench_spec,
    make_tiles,
    rate_stats,
    seed_naive_engine,
    timed_round,
)
from defectscan.cpu_budget import process_cpu_seconds

__all__ = ["print_fastline_tables", "run_autoint8", "run_latency", "run_startup"]

REPO = Path(__file__).resolve().parents[1]


# -- the model and the parts ------------------------------------------------------------------


def _centre(conv: nn.Conv2d, weights: torch.Tensor, bias: torch.Tensor) -> None:
    conv.weight.data.zero_()
    conv.weight.data[: weights.shape[0], : weights.shape[1], 1, 1] = weights
    conv.bias.data.zero_()
    conv.bias.data[: bias.shape[0]] = bias


def _identity_bn(bn: nn.BatchNorm2d) -> None:
    bn.weight.data.fill_(1.0)
    bn.bias.data.zero_()
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)


def line_model(width: int, *, gain: float = 60.0, dark: float = 0.35) -> Any:
    """Seed UNet (3 -> 1, bilinear) at ``width``: dark pixels are defects, the rest dense."""
    from defectscan.model.unet import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, bilinear=True, base_width=width).eval()
    with torch.no_grad():
        inc1, bn1, _, inc2, bn2, _ = net.inc.double_conv
        # Features 0/1 of inc carry the answer; the other channels stay random but small, so
        # that the deep path costs what it costs and quantisation ranges stay sensible.
        inc1.weight.data *= 0.05
        inc1.bias.data.zero_()
        for c in range(3):
            inc1.weight.data[0:2, c] = 0.0
            inc1.weight.data[0, c, 1, 1] = -1.0 / 3
            inc1.weight.data[1, c, 1, 1] = 1.0 / 3
        inc1.bias.data[0], inc1.bias.data[1] = dark, -0.85
        inc2.weight.data *= 0.05
        inc2.weight.data[0:2] = 0.0
        inc2.weight.data[0, 0, 1, 1] = inc2.weight.data[1, 1, 1, 1] = 1.0
        inc2.bias.data.zero_()
        _identity_bn(bn1)
        _identity_bn(bn2)
        # up4 keeps inc's two features (the deep path is computed, then left out)
        u1, ub1, _, u2, ub2, _ = net.up4.conv.double_conv
        _centre(u1, torch.eye(2), torch.zeros(2))
        _centre(u2, torch.eye(2), torch.zeros(2))
        _identity_bn(ub1)
        _identity_bn(ub2)
        net.outc.conv.weight.data.zero_()
        net.outc.conv.weight.data[0, 0, 0, 0] = gain
        net.outc.conv.bias.data.fill_(-1e-3)
    return net


def _checkpoint(cfg: BenchConfig, path: Path, *, gain: float = 60.0) -> Path:
    from defectscan.model.checkpoint import save_checkpoint

    spec = bench_spec(cfg).replace(name="bench-line")
    save_checkpoint(line_model(cfg.width, gain=gain), spec, path)
    return path


def _background_job(work: Path, model: Path, calib: Path, parity: Path, tile: int) -> Any:
    """The monitor's background INT8 job (same priority and threads), for another model."""
    from defectscan.config import get_settings

    env = dict(os.environ)
    env["DEFECTSCAN_VAR_DIR"] = str(work / "background-var")
    settings = get_settings()
    threads = str(settings.background_threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = threads
    return subprocess.Popen(
        [sys.executable, "-m", "defectscan.model.quantise", "int8", "--checkpoint", str(model),
         "--status", str(work / "background-status.json"), "--tile", str(tile),
         "--calibration", str(calib), "--parity", str(parity), "--threads", threads,
         "--calibration-limit", str(settings.int8_calibration_tiles),
         "--nice", str(settings.background_nice)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _metered(pid: int) -> Any:
    """The monitor's CPU budget on a job while the line inspects (None when it is off)."""
    from defectscan.config import get_settings
    from defectscan.cpu_budget import CpuBudget

    share = get_settings().background_cpu_share
    return CpuBudget(pid, share, busy=lambda: True).start() if share > 0 else None


def _png_variant(data: bytes, tag: str) -> bytes:
    """The same PNG with a text chunk: same pixels, another sha256 (a new part)."""
    body = b"Comment\x00" + tag.encode()
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)
    return data[:33] + chunk + data[33:]  # after the 8-byte signature and the IHDR chunk


def _parts(cfg: BenchConfig, n: int, seed: int = 7) -> list[bytes]:
    from defectscan import synth

    with tempfile.TemporaryDirectory(prefix="defectscan-parts-") as tmp:
        paths = synth.write_camera_folder(
            Path(tmp), n, seed=seed, height=cfg.image_size, width=cfg.image_size
        )
        return [p.read_bytes() for p in paths]


def _drop(folder: Path, parts: list[bytes], tag: str, *, mtime: float | None = None) -> None:
    """Files into a camera folder as a camera writes them (``*.tmp`` then renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(parts):
        path = folder / f"{tag}-{i:05d}.png"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(_png_variant(data, f"{tag}-{i}"))
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)


@contextmanager
def _var_dir(path: Path) -> Iterator[None]:
    """This process's settings point at ``path`` (a fresh engine cache) while inside."""
    from defectscan.config import get_settings

    saved = os.environ.get("DEFECTSCAN_VAR_DIR")
    os.environ["DEFECTSCAN_VAR_DIR"] = str(path)
    get_settings.cache_clear()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("DEFECTSCAN_VAR_DIR", None)
        else:
            os.environ["DEFECTSCAN_VAR_DIR"] = saved
        get_settings.cache_clear()


def _monitor(camera: Path, model: Path, url: str, *, watch: bool, auto: bool = True) -> Any:
    """A monitor as ``defectscan monitor`` builds one for the default settings."""
    from defectscan.monitor_build import build_monitor

    return build_monitor(
        f"folder:{camera}",
        model=str(model),
        line=None,
        database_url=url,
        claim_timeout=0.2,
        batch_size=32,
        source_options={"watch": watch, "stable_polls": 1 if not watch else 2},
        auto_int8=auto,
    )


def _feed_until(monitor: Any, camera: Path, parts: list[bytes], done: Any, limit_s: float) -> int:
    """Keep a little backlog in the folder and run the monitor until ``done()``; images fed."""
    fed = 0
    deadline = time.monotonic() + limit_s
    while not done() and time.monotonic() < deadline:
        if monitor.source.backlog() < 2:
            _drop(camera, parts[:4], f"feed{fed:06d}")
            fed += 4
        monitor.step()
    return fed


# -- autoint8 ---------------------------------------------------------------------------------


def _monitor_pass(monitor: Any, camera: Path, parts: list[bytes], tag: str) -> float:
    """Fresh files into the folder, then the monitor takes them to committed rows; seconds."""
    _drop(camera, parts, tag)
    t0 = time.perf_counter()
    summary = monitor.run(max_images=len(parts), idle_exit=30.0)
    elapsed = time.perf_counter() - t0
    if summary.inspected != len(parts):
        msg = f"{tag}: {summary.inspected} of {len(parts)} images inspected"
        raise RuntimeError(msg)
    return elapsed


def run_autoint8(cfg: BenchConfig, notes: list[str], log: Log) -> list[dict[str, Any]]:
    """The default path before and after its automatic INT8 switch, beside the others."""
    from defectscan.model.backends import OpenVINOBackend
    from defectscan.model.checkpoint import load_checkpoint
    from defectscan.model.engines import engine_label
    from defectscan.model.export import export_model
    from defectscan.store.db import upgrade_to_head
    from defectscan.tiling import make_grid

    rows: list[dict[str, Any]] = []
    grid = make_grid(cfg.image_size, cfg.image_size, tile=cfg.tile, overlap=cfg.overlap)
    with (
        tempfile.TemporaryDirectory(prefix="defectscan-bench-int8-") as tmp,
        _var_dir(Path(tmp) / "var"),
    ):
        work = Path(tmp)
        model_path = _checkpoint(cfg, work / "model.safetensors")
        url = f"sqlite:///{(work / 'bench.db').as_posix()}"
        upgrade_to_head(url)
        parts = _parts(cfg, cfg.images)
        camera = work / "camera"
        camera.mkdir()
        started = time.monotonic()
        monitor = _monitor(camera, model_path, url, watch=False)
        start_engine = engine_label(monitor.models.inspector.backend)
        upgrader = monitor.engines
        log(f"autoint8: monitor started on {start_engine}; feeding it until it settles")
        before_backend: dict[str, Any] = {}

        def settled() -> bool:
            """The background work is over: INT8 in, kept or failed (or nothing left)."""
            if upgrader is None:
                return True
            backend = monitor.models.inspector.backend
            if engine_label(backend) != "openvino-int8":
                before_backend["engine"] = backend  # the engine in use before INT8
            return bool(upgrader.settled)

        fed = _feed_until(monitor, camera, parts, settled, limit_s=1800.0)
        state = upgrader.state if upgrader is not None else "pinned"
        switches = upgrader.switches if upgrader is not None else []
        int8_switch = next((s for s in switches if s[1] == "openvino-int8"), None)
        switch_s = round(int8_switch[2], 1) if int8_switch else None
        log(f"autoint8: state {state} after {time.monotonic() - started:.0f} s, {fed} images")
        after = monitor.models.inspector.backend
        before = before_backend.get("engine", after)
        ckpt = load_checkpoint(model_path)
        spec = ckpt.spec
        # the manual path: defectscan export --int8 --calibration <a folder of the line>
        calib = work / "calib"
        _drop(calib, parts, "calib")
        manual = OpenVINOBackend.from_file(
            export_model(
                ckpt.model,
                spec,
                sha256=ckpt.sha256,
                fmt="openvino",
                out=work / "manual-int8",
                tile=cfg.tile,
                int8=True,
                calibration=calib,
            ).model_file,
            precision="int8",
        )
        fp32 = OpenVINOBackend(ckpt.model, "sigmoid", n_channels=3, tile=cfg.tile, precision="fp32")
        # Inspection while a background INT8 job runs (another model's, as after a promotion)
        other = _checkpoint(cfg, work / "other.safetensors", gain=50.0)
        bg_parity = work / "bg-parity"
        _drop(bg_parity, parts[:2], "bgp")
        during: list[float] = []
        job_share: list[float] = []  # the job's CPU seconds per second, while the line works
        runs: dict[str, Any] = {
            f"default-before ({engine_label(before)})": before,
            f"default-after ({engine_label(after)})": after,
            "manual-int8": manual,
            "openvino-fp32": fp32,
        }
        tiles = make_tiles(CPU_ENGINE_BATCH, cfg.tile, seed=1)
        naive = seed_naive_engine(ckpt.model, "cpu")
        budget = cfg.seconds / cfg.rounds
        rates: dict[str, list[float]] = {name: [] for name in runs}
        naive_rates: list[float] = []
        ov_alone: list[float] = []
        inspector = monitor.models.inspector
        for r in range(cfg.rounds):
            log(f"autoint8: round {r + 1}")
            naive_rates.append(timed_round(naive.infer, naive.sync, tiles, budget)[0])
            ov_alone.append(timed_round(fp32.infer, lambda: None, tiles, budget)[0])
            for k, (name, backend) in enumerate(runs.items()):
                inspector.backend = backend
                elapsed = _monitor_pass(monitor, camera, parts, f"r{r}-e{k}")
                rates[name].append(grid.n_tiles * cfg.images / elapsed)
            inspector.backend = after
            job = _background_job(work, other, calib, bg_parity, cfg.tile)
            # held to its share as the monitor holds its own jobs while the line inspects
            metered = _metered(job.pid)
            try:
                cpu0 = process_cpu_seconds(job.pid)
                elapsed = _monitor_pass(monitor, camera, parts, f"r{r}-bg")
                cpu1 = process_cpu_seconds(job.pid)
            finally:
                if metered is not None:
                    metered.stop()
                job.terminate()
                job.wait(timeout=60)
            during.append(grid.n_tiles * cfg.images / elapsed)
            if cpu0 is not None and cpu1 is not None:
                job_share.append((cpu1 - cpu0) / elapsed)
        inspector.backend = after
        monitor.close()
        naive_med = statistics.median(naive_rates)
        ov_med = statistics.median(ov_alone)
        rows.append(
            {
                "name": "seed-naive (model only)",
                "tiles_per_s": rate_stats(naive_rates),
                "vs_seed_naive": 1.0,
                "vs_openvino_model_only": round(naive_med / ov_med, 3),
            }
        )
        rows.append(
            {
                "name": "openvino-fp32 (model only)",
                "tiles_per_s": rate_stats(ov_alone),
                "vs_seed_naive": round(ov_med / naive_med, 3),
                "vs_openvino_model_only": 1.0,
            }
        )
        for name, values in rates.items():
            med = statistics.median(values)
            rows.append(
                {
                    "name": f"{name} (file to row)",
                    "tiles_per_s": rate_stats(values),
                    "images_per_s": round(med / grid.n_tiles, 3),
                    "vs_seed_naive": round(med / naive_med, 3),
                    "vs_openvino_model_only": round(med / ov_med, 3),
                }
            )
        after_name = f"default-after ({engine_label(after)})"
        during_med = statistics.median(during)
        rows.append(
            {
                "name": f"{after_name} during a background INT8 job (file to row)",
                "tiles_per_s": rate_stats(during),
                "images_per_s": round(during_med / grid.n_tiles, 3),
                "vs_seed_naive": round(during_med / naive_med, 3),
                "vs_openvino_model_only": round(during_med / ov_med, 3),
                "vs_same_engine_alone": round(during_med / statistics.median(rates[after_name]), 3),
                "job_cores": round(statistics.median(job_share), 3) if job_share else None,
            }
        )
        for row in rows:
            row.update(
                {
                    "start_engine": start_engine,
                    "int8_state": state,
                    "switch_s": switch_s,
                    "images_fed": fed,
                    "tiles_per_image": grid.n_tiles,
                }
            )
        if state != "int8":
            notes.append(
                f"autoint8: the monitor did not switch to INT8 (state {state}): 'after' is the "
                "engine it kept"
            )
    return rows


# -- latency ----------------------------------------------------------------------------------


def _prepare_engines(model_path: Path, parts: list[bytes], work: Path, tile: int) -> None:
    """The background work done up front: fp32 exports and INT8 from the line's images."""
    from defectscan.model.quantise import export_fp32, quantise_int8

    export_fp32(model_path, tile=tile)
    calib, parity = work / "prep-calib", work / "prep-parity"
    k = max(2, len(parts) * 3 // 4)
    _drop(calib, parts[:k], "c")
    _drop(parity, parts[k:] or parts[:1], "p")
    quantise_int8(model_path, calibration=calib, parity=parity, tile=tile)


def _paced(camera: Path, parts: list[bytes], rate: float, n: int, tag: str) -> threading.Thread:
    """A producer thread: ``n`` files at ``rate`` per second, each timestamped at arrival."""

    def produce() -> None:
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            data = parts[i % len(parts)]
            path = camera / f"{tag}-{i:05d}.png"
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(_png_variant(data, f"{tag}-{i}"))
            now = time.time()
            os.utime(tmp, (now, now))  # arrival = the rename, a hair later
            os.replace(tmp, path)

    thread = threading.Thread(target=produce, name="paced-producer", daemon=True)
    thread.start()
    return thread


def run_latency(cfg: BenchConfig, notes: list[str], log: Log) -> list[dict[str, Any]]:
    """Arrival to committed row at several rates, and the capacity."""
    from defectscan.model.engines import engine_label
    from defectscan.store.db import upgrade_to_head

    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="defectscan-bench-lat-") as tmp,
        _var_dir(Path(tmp) / "var"),
    ):
        work = Path(tmp)
        model_path = _checkpoint(cfg, work / "model.safetensors")
        url = f"sqlite:///{(work / 'bench.db').as_posix()}"
        upgrade_to_head(url)
        parts = _parts(cfg, max(cfg.images, 8), seed=21)
        log("latency: exporting and quantising up front (what the monitor does by itself)")
        _prepare_engines(model_path, parts, work, cfg.tile)
        camera = work / "camera"
        camera.mkdir()
        monitor = _monitor(camera, model_path, url, watch=True)
        engine = engine_label(monitor.models.inspector.backend)
        # capacity: a backlog of files, taken as fast as the monitor goes
        n_cap = max(8, 2 * cfg.images)
        _drop(camera, [parts[i % len(parts)] for i in range(n_cap)], "cap")
        t0 = time.perf_counter()
        monitor.run(max_images=n_cap, idle_exit=30.0)
        capacity = n_cap / (time.perf_counter() - t0)
        log(f"latency: capacity {capacity:.2f} images/s on {engine}")
        duration = cfg.seconds * 2 if cfg.quick else max(10.0, cfg.seconds * 2)
        for share in (0.25, 0.5, 0.75, 0.9):
            rate = share * capacity
            n = max(4, round(rate * duration))
            tag = f"r{int(share * 100)}"
            producer = _paced(camera, parts, rate, n, tag)
            waiting: list[int] = []
            start = time.monotonic()
            summary = monitor.run(max_images=n, idle_exit=max(10.0, 5 / rate))
            producer.join(timeout=60)
            waiting.append(monitor.source.backlog())
            rows.append(
                {
                    "name": f"{share:.0%} of capacity",
                    "engine": engine,
                    "rate_images_per_s": round(rate, 3),
                    "images": summary.images,
                    "seconds": round(time.monotonic() - start, 1),
                    "p50_s": _s(summary.latency_p50_ms),
                    "p95_s": _s(summary.latency_p95_ms),
                    "capacity_images_per_s": round(capacity, 3),
                    "backlog_grew": bool(monitor.behind),
                    "backlog_at_end": waiting[-1],
                }
            )
            log(f"latency: {rows[-1]['name']}: p50 {rows[-1]['p50_s']} s p95 {rows[-1]['p95_s']} s")
        monitor.close()
    return rows


def _s(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 3)


# -- startup ----------------------------------------------------------------------------------


def _count(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM inspections")).scalar() or 0)
    except sa.exc.OperationalError:
        return 0
    finally:
        engine.dispose()


def _events(url: str, kind: str) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT details FROM events WHERE kind = :k ORDER BY id"), {"k": kind}
            ).all()
    except sa.exc.OperationalError:
        return []
    finally:
        engine.dispose()
    return [json.loads(d) if isinstance(d, str) else (d or {}) for (d,) in found]


def _start_monitor(work: Path, camera: Path, model: Path, url: str, log_name: str) -> Any:
    env = dict(os.environ)
    env.update(
        {
            "DEFECTSCAN_VAR_DIR": str(work / "var"),
            "DEFECTSCAN_DATABASE_URL": url,
            "DEFECTSCAN_METRICS_PORT": "0",
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "inspect")]),
        }
    )
    for key in [k for k in env if k.startswith("PREFECT_API_URL")]:
        del env[key]  # Prefect's ephemeral API, as a plain `defectscan monitor` gets
    log = (work / log_name).open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "defectscan.cli", "monitor", "--source", f"folder:{camera}",
         "--model", str(model)],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _stop(proc: Any) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _first_row_s(proc: Any, url: str, started: float, limit_s: float = 600.0) -> float | None:
    while time.monotonic() - started < limit_s:
        if _count(url) >= 1:
            return round(time.monotonic() - started, 2)
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def run_startup(cfg: BenchConfig, notes: list[str], log: Log) -> list[dict[str, Any]]:
    """Command to first row (new and known checkpoint), and the time to reach INT8."""
    from defectscan.store.db import upgrade_to_head

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="defectscan-bench-start-") as tmp:
        work = Path(tmp)
        model_path = _checkpoint(cfg, work / "model.safetensors")
        parts = _parts(cfg, max(cfg.images, 8), seed=31)
        camera = work / "camera"
        url = f"sqlite:///{(work / 'new.db').as_posix()}"
        upgrade_to_head(url)
        _drop(camera, parts[:1], "first")
        log("startup: a new checkpoint (empty engine cache)")
        started = time.monotonic()
        proc = _start_monitor(work, camera, model_path, url, "new.log")
        new_s = _first_row_s(proc, url, started)
        # Feed it until its background work settles (INT8 in, kept or failed). A quick run
        # (the smoke test) stops at its first switch: the autoint8 section already went on
        # to INT8, and the restart below needs only some engine in the cache.
        switch_s: float | None = None
        state = "?"
        deadline = time.monotonic() + (120.0 if cfg.quick else 1800.0)
        fed = 1
        while time.monotonic() < deadline and proc.poll() is None:
            switches = [
                e
                for e in _events(url, "engine_switch")
                if cfg.quick or e.get("engine") == "openvino-int8"
            ]
            if switches:
                state = str(switches[0].get("engine"))
                state = "int8" if state == "openvino-int8" else f"switched to {state}"
                switch_s = float(switches[0].get("after_s", 0.0))
                break
            if _events(url, "int8_failed"):
                state = "failed"
                break
            if _events(url, "engine_kept"):
                state = "kept"
                break
            if _count(url) >= fed:
                _drop(camera, parts, f"feed{fed:05d}")
                fed += len(parts)
            time.sleep(0.5)
        _stop(proc)
        url2 = f"sqlite:///{(work / 'known.db').as_posix()}"
        upgrade_to_head(url2)
        _drop(camera, parts[1:2], "again")
        log("startup: the same checkpoint again (engines cached)")
        started = time.monotonic()
        proc = _start_monitor(work, camera, model_path, url2, "known.log")
        known_s = _first_row_s(proc, url2, started)
        engine_known = next(iter(_events(url2, "engine_in_use")), {}).get("engine")
        _stop(proc)
        engine_new = next(iter(_events(url, "engine_in_use")), {}).get("engine")
        rows.append(
            {"name": "new checkpoint", "first_row_s": new_s, "start_engine": engine_new,
             "int8_state": state, "switch_s": switch_s, "images_fed": fed}
        )  # fmt: skip
        rows.append(
            {"name": "known checkpoint", "first_row_s": known_s, "start_engine": engine_known,
             "int8_state": None, "switch_s": None, "images_fed": 1}
        )  # fmt: skip
        if new_s is None or known_s is None:
            notes.append(f"startup: a monitor did not commit a row; see {work}/*.log")
        shutil.rmtree(work / "var", ignore_errors=True)
    return rows


# -- tables -----------------------------------------------------------------------------------


def print_fastline_tables(payload: dict[str, Any]) -> None:
    """The three sections' tables, for those that ran."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    if payload.get("autoint8"):
        rows = payload["autoint8"]
        head = rows[0]
        table = Table(
            title=(
                f"default path and INT8 (start {head['start_engine']}, state "
                f"{head['int8_state']}, switch after {head['switch_s']} s, "
                f"{head['images_fed']} images fed)"
            )
        )
        cols = (
            "row",
            "tiles/s",
            "images/s",
            "x seed loop",
            "x OpenVINO fp32 alone",
            "x alone",
            "job cores",
        )
        for col in cols:
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["name"],
                _fmt(r["tiles_per_s"]["median"]),
                _fmt(r.get("images_per_s")),
                _fmt(r["vs_seed_naive"]),
                _fmt(r["vs_openvino_model_only"]),
                _fmt(r.get("vs_same_engine_alone")),
                _fmt(r.get("job_cores")),
            )
        console.print(table)
    if payload.get("latency"):
        rows = payload["latency"]
        table = Table(
            title=(
                f"arrival to committed row ({rows[0]['engine']}, capacity "
                f"{rows[0]['capacity_images_per_s']} images/s)"
            )
        )
        for col in ("rate", "images/s", "images", "p50 s", "p95 s", "backlog grew"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["name"],
                _fmt(r["rate_images_per_s"]),
                str(r["images"]),
                _fmt(r["p50_s"]),
                _fmt(r["p95_s"]),
                "yes" if r["backlog_grew"] else "no",
            )
        console.print(table)
    if payload.get("startup"):
        table = Table(title="defectscan monitor: command to first committed row")
        for col in ("checkpoint", "first row s", "start engine", "INT8", "switch s"):
            table.add_column(col)
        for r in payload["startup"]:
            table.add_row(
                r["name"],
                _fmt(r["first_row_s"]),
                str(r["start_engine"]),
                str(r["int8_state"] or ""),
                _fmt(r["switch_s"]),
            )
        console.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
