"""Line-monitor soak and throughput: RSS over thousands of images, monitor vs ``inspect``.

    .venv/bin/python benchmarks/soak_monitor.py [--images 5000] [--size 128] [--width 16]
                                                [--backend auto] [--compare 400]
                                                [--out var/bench/soak.json]

(``make soak`` runs it with the defaults.)

Two measurements, both in one run on one machine:

``soak``: a camera folder of ``--images`` synthetic parts (``synth.py``, ``--size`` pixels
square) drained by one :class:`~defectscan.monitor.LineMonitor` in this process (folder source,
SQLite results database, archive on), in bounded runs of 1,000 images as the line-monitor flow
does. Resident memory (``/proc/self/statm``) is sampled after every run; ``rss_growth_mb`` is
the growth from the end of the first run (warm-up: model loaded, caches filled) to the end.
Acceptance for the line monitor: under 50 MB over at least 5,000 images.

``compare``: the same ``--compare`` images and engine, three ways, interleaved twice (A B C A B
C) on fresh databases: ``inspect`` = the path of ``defectscan inspect --store`` (all files in one
call of :func:`~defectscan.service.inspect_and_store`), ``monitor`` = the monitor library loop
on a camera folder (claim, inspect, commit, archive, move to ``done/``), and ``monitor-prefect``
= the same as a Prefect flow run on the ephemeral API (one task per micro-batch). Reported:
images/s (best of the two rounds) and the ratio to ``inspect``; target >= 0.9.

The model is a random-init seed UNet (``--width``, sigmoid, one class) with BN folded, saved as
a checkpoint: timing does not depend on what it finds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("DEFECTSCAN_METRICS_PORT", "0")

import torch

from defectscan import synth
from defectscan.model.backends import cpu_model
from defectscan.model.checkpoint import save_checkpoint
from defectscan.model.spec import ModelSpec
from defectscan.model.unet import UNet

__all__ = ["main"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _model(path: Path, width: int, tile: int) -> Path:
    torch.manual_seed(0)
    net = UNet(3, 1, bilinear=True, base_width=width).eval()
    spec = ModelSpec(
        n_channels=3,
        activation="sigmoid",
        class_names=("defect",),
        base_width=width,
        tile_size=tile,
        tile_overlap=tile // 8,
        name="soak",
    )
    save_checkpoint(net, spec, path)
    return path


def _camera(folder: Path, n: int, size: int, start: int = 0) -> list[Path]:
    return synth.write_camera_folder(folder, n, seed=11 + start, height=size, width=size)


BATCH = 32  # images per micro-batch, the monitor's default


def _monitor(folder: Path, db: str, model: Path, backend: str, archive: Path, batch: int) -> Any:
    from defectscan.archive import ArchivePolicy, ImageArchive
    from defectscan.monitor import inspector_loader
    from defectscan.monitor_build import build_monitor

    return build_monitor(
        f"folder:{folder}",
        model=str(model),
        line="soak",
        camera="cam1",
        batch_size=batch,
        database_url=db,
        load=inspector_loader(backend=backend, infer_batch=8),
        archive=ImageArchive(archive, ArchivePolicy(pass_share=0.02)),
        claim_timeout=0.2,
        source_options={"stable_polls": 1, "watch": False},
    )


def soak(work: Path, *, images: int, size: int, model: Path, backend: str) -> dict[str, Any]:
    """Drain ``images`` parts through one monitor; RSS after each bounded run."""
    folder = work / "soak-camera"
    _camera(folder, images, size)
    monitor = _monitor(
        folder, f"sqlite:///{work / 'soak.db'}", model, backend, work / "archive", batch=BATCH
    )
    samples: list[dict[str, float]] = []
    t0 = time.perf_counter()
    done = 0
    while done < images:
        summary = monitor.run(max_images=1000, idle_exit=2.0)
        done += summary.images
        samples.append(
            {"images": done, "rss_mb": round(_rss_mb(), 1), "s": time.perf_counter() - t0}
        )
        print(f"soak: {done} images, RSS {samples[-1]['rss_mb']:.1f} MB", file=sys.stderr)
        if summary.images == 0:
            break
    elapsed = time.perf_counter() - t0
    monitor.close()
    growth = samples[-1]["rss_mb"] - samples[0]["rss_mb"] if samples else None
    return {
        "images": done,
        "seconds": round(elapsed, 1),
        "images_per_s": round(done / elapsed, 2),
        "rss_after_warmup_mb": samples[0]["rss_mb"] if samples else None,
        "rss_end_mb": samples[-1]["rss_mb"] if samples else None,
        "rss_growth_mb": None if growth is None else round(growth, 1),
        "samples": samples,
    }


def _inspect_path(files: Sequence[Path], db: str, model: Path, backend: str) -> float:
    from defectscan.monitor import inspector_loader
    from defectscan.pipeline import ImageRecord
    from defectscan.service import inspect_and_store, register_model
    from defectscan.store.db import ensure_schema, make_engine
    from defectscan.store.writer import ResultWriter

    inspector = inspector_loader(backend=backend, infer_batch=8)(str(model))
    engine = make_engine(db)
    ensure_schema(engine)
    writer = ResultWriter(engine)
    register_model(writer, inspector)
    records = [ImageRecord.from_path(p, camera="cam1", line="soak") for p in files]
    t0 = time.perf_counter()
    outcome = inspect_and_store(records, inspector=inspector, writer=writer)
    elapsed = time.perf_counter() - t0
    engine.dispose()
    assert outcome.inserted == len(files), outcome
    return len(files) / elapsed


def _monitor_path(folder: Path, db: str, model: Path, backend: str, work: Path) -> float:
    n = len([p for p in folder.iterdir() if p.is_file()])
    monitor = _monitor(folder, db, model, backend, work / "archive-cmp", batch=BATCH)
    t0 = time.perf_counter()
    summary = monitor.run(max_images=n)
    elapsed = time.perf_counter() - t0
    monitor.close()
    assert summary.images == n, summary
    return n / elapsed


def _prefect_path(folder: Path, db: str, model: Path, backend: str) -> float:
    """The line-monitor flow on the ephemeral API; server start and model load excluded.

    A monitor process builds its monitor (model, source) once and reuses it run after run,
    so the monitor is built before the clock starts, as the flow's cache would hold it.
    """
    from flows.line_monitor import close_monitors, line_monitor, monitor_for

    from defectscan.config import get_settings

    n = len([p for p in folder.iterdir() if p.is_file()])
    os.environ["DEFECTSCAN_DATABASE_URL"] = db
    get_settings.cache_clear()
    try:
        params = {"source": f"folder:{folder}", "model": str(model), "line": "soak"}
        monitor_for(params["source"], model=str(model), line="soak", camera=None, batch_size=BATCH)
        t0 = time.perf_counter()
        summary = line_monitor(**params, batch_size=BATCH, max_images=n)
        elapsed = time.perf_counter() - t0
    finally:
        close_monitors()
        os.environ.pop("DEFECTSCAN_DATABASE_URL", None)
        get_settings.cache_clear()
    assert summary["images"] == n, summary
    return n / elapsed


def compare(work: Path, *, images: int, size: int, model: Path, backend: str) -> dict[str, Any]:
    """inspect vs monitor vs monitor-as-flow on the same images and engine, interleaved."""
    source = work / "cmp-source"
    files = _camera(source, images, size, start=1000)
    from defectscan.orchestration import configure_prefect

    configure_prefect(work / "var")
    # Warm the Prefect ephemeral server once (its start-up is not per-image work).
    warm = work / "warm"
    _camera(warm, 4, size, start=5000)
    _prefect_path(warm, f"sqlite:///{work / 'warm.db'}", model, backend)
    rates: dict[str, list[float]] = {"inspect": [], "monitor": [], "monitor-prefect": []}
    for r in range(2):
        rates["inspect"].append(
            _inspect_path(files, f"sqlite:///{work / f'i{r}.db'}", model, backend)
        )
        folder = work / f"m{r}"
        shutil.copytree(source, folder)
        rates["monitor"].append(
            _monitor_path(folder, f"sqlite:///{work / f'm{r}.db'}", model, backend, work)
        )
        folder = work / f"p{r}"
        shutil.copytree(source, folder)
        rates["monitor-prefect"].append(
            _prefect_path(folder, f"sqlite:///{work / f'p{r}.db'}", model, backend)
        )
        print(
            f"compare round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rates.items()),
            file=sys.stderr,
        )
    best = {k: max(v) for k, v in rates.items()}
    return {
        "images": images,
        "rates": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "best_images_per_s": {k: round(v, 2) for k, v in best.items()},
        "ratio_to_inspect": {k: round(v / best["inspect"], 3) for k, v in best.items()},
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the soak and the comparison; print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--compare", type=int, default=400, help="images in the comparison")
    parser.add_argument("--skip-soak", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("var/bench/soak.json"))
    args = parser.parse_args(argv)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="defectscan-soak-") as tmp:
        work = Path(tmp)
        model = _model(work / "soak.safetensors", args.width, args.tile)
        result: dict[str, Any] = {
            "schema": "defectscan-soak/1",
            "created_at": datetime.now(UTC).isoformat(),
            "machine": {
                "cpu_model": cpu_model(),
                "cores": os.cpu_count(),
                "torch": torch.__version__,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "loadavg_start": [round(x, 2) for x in load0],
            },
            "config": vars(args) | {"out": str(args.out)},
        }
        if not args.skip_soak:
            result["soak"] = soak(
                work, images=args.images, size=args.size, model=model, backend=args.backend
            )
        result["compare"] = compare(
            work, images=args.compare, size=args.size, model=model, backend=args.backend
        )
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _print(result)
    return result


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = result["machine"]
    console.print(f"[bold]{m['cpu_model']}[/], {m['cores']} cores, load {m['loadavg_start']}")
    if "soak" in result:
        s = result["soak"]
        t = Table(title="line monitor soak")
        for col in ("images", "images/s", "RSS after warm-up MB", "RSS end MB", "growth MB"):
            t.add_column(col, justify="right")
        t.add_row(
            str(s["images"]),
            f"{s['images_per_s']:.2f}",
            f"{s['rss_after_warmup_mb']:.1f}",
            f"{s['rss_end_mb']:.1f}",
            f"{s['rss_growth_mb']:.1f}",
        )
        console.print(t)
    c = result["compare"]
    t = Table(title=f"monitor vs inspect, {c['images']} images, same engine")
    for col in ("path", "images/s (best of 2)", "rounds", "ratio to inspect"):
        t.add_column(col, justify="right")
    for k, v in c["best_images_per_s"].items():
        t.add_row(
            k,
            f"{v:.2f}",
            ", ".join(f"{x:.2f}" for x in c["rates"][k]),
            f"{c['ratio_to_inspect'][k]:.3f}",
        )
    console.print(t)


if __name__ == "__main__":
    main()
