"""Engine work a running monitor hands to a background process: fp32 exports and INT8.

A monitor must not stop inspecting while engines are exported, quantised and checked, so it
runs this module as a separate process (``python -m defectscan.model.quantise``) at a lower
priority (``os.nice``), pinned to a bounded number of cores (``sched_setaffinity``, which
OpenVINO and NNCF honour when they size their thread pools) with torch and OpenMP limited to
the same number of threads:

- ``fp32``: the OpenVINO and ONNX exports ``--backend auto`` chooses among, written into the
  engine cache (a monitor that started at once on eager torch switches to them later).
- ``int8``: post-training quantisation with NNCF on tiles of the line's own images (a
  calibration folder), parity checked on *other* images of the same line with the checks of
  ``defectscan export`` (mask IoU >= 0.98, identical verdicts, mean probability difference),
  written into the cache under the checkpoint's sha256 and this CPU model
  (:func:`~defectscan.model.export.auto_int8_key`). A failed check leaves a marker
  (:func:`failure_marker`) so that the checkpoint is not quantised again on this CPU until an
  operator clears it (:func:`clear_int8_failure`, ``defectscan monitor --retry-int8``).

Each run writes its outcome as JSON to ``--status`` (atomically) for the monitor to read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from defectscan.model.export import EngineFormat

__all__ = [
    "clear_int8_failure",
    "export_fp32",
    "failure_marker",
    "fp32_missing",
    "int8_failure",
    "int8_ready",
    "limit_resources",
    "main",
    "quantise_int8",
]

log = logging.getLogger(__name__)


def failure_marker(sha256: str, tile: int) -> Path:
    """The marker a failed INT8 attempt leaves for this checkpoint, tile and CPU model."""
    from defectscan.model.export import auto_int8_key, engine_cache_dir

    return engine_cache_dir() / f"{auto_int8_key(sha256, tile)}.failed.json"


def int8_failure(sha256: str, tile: int) -> dict[str, Any] | None:
    """Why INT8 failed for this checkpoint on this CPU (the marker's record), or None."""
    marker = failure_marker(sha256, tile)
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {"reason": f"unreadable marker {marker}"}
    return data if isinstance(data, dict) else {"reason": str(data)}


def clear_int8_failure(sha256: str) -> list[Path]:
    """Forget failed INT8 attempts of this checkpoint on this CPU (every tile): try again."""
    from defectscan.model.export import cpu_tag, engine_cache_dir

    cache = engine_cache_dir()
    if not cache.is_dir():
        return []
    gone = []
    for marker in cache.glob(f"{sha256[:16]}-openvino-int8-t*-cpu{cpu_tag()}.failed.json"):
        marker.unlink(missing_ok=True)
        gone.append(marker)
    return gone


def int8_ready(sha256: str, tile: int) -> bool:
    """True when an INT8 engine that passed parity is in the cache for this checkpoint."""
    from defectscan.model.export import ENGINE_META, auto_int8_key, engine_cache_dir, engine_key

    cache = engine_cache_dir()
    for key in (engine_key(sha256, "openvino", "int8", tile), auto_int8_key(sha256, tile)):
        meta = cache / key / ENGINE_META
        try:
            if json.loads(meta.read_text()).get("parity", {}).get("passed"):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def fp32_missing(sha256: str, tile: int) -> list[EngineFormat]:
    """The fp32 export formats (``openvino``, ``onnx``) not yet in the cache for a checkpoint."""
    from defectscan.model.export import ENGINE_META, engine_cache_dir, engine_key

    cache = engine_cache_dir()
    out: list[EngineFormat] = []
    formats: tuple[tuple[EngineFormat, str], ...] = (
        ("openvino", "openvino"),
        ("onnx", "onnxruntime"),
    )
    for fmt, module in formats:
        if not (cache / engine_key(sha256, fmt, "fp32", tile) / ENGINE_META).is_file():
            try:
                __import__(module)
            except ImportError:
                continue  # that engine is not installed here: nothing to export
            out.append(fmt)
    return out


def limit_resources(threads: int, nice: int) -> None:
    """Lower this process's priority and bound its threads (and cores) to ``threads``."""
    if nice > 0:
        try:
            os.nice(nice)
        except OSError as exc:  # pragma: no cover - lowering priority is always allowed
            log.warning("cannot lower the priority: %s", exc)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        cores = sorted(affinity(0))
        if len(cores) > threads:
            # The last cores: the monitor's own threads start on the first ones.
            os.sched_setaffinity(0, cores[-threads:])
    import torch

    torch.set_num_threads(threads)


def export_fp32(checkpoint: str | Path, *, tile: int | None = None) -> dict[str, Any]:
    """Export the checkpoint's fp32 OpenVINO and ONNX engines into the cache (those missing)."""
    from defectscan.model.checkpoint import load_checkpoint
    from defectscan.model.export import engine_cache_dir, engine_key, export_model

    ckpt = load_checkpoint(checkpoint)
    tile = tile or ckpt.spec.tile_size
    done: dict[str, Any] = {}
    for fmt in fp32_missing(ckpt.sha256, tile):
        t0 = time.perf_counter()
        try:
            exported = export_model(
                ckpt.model,
                ckpt.spec,
                sha256=ckpt.sha256,
                fmt=fmt,
                out=engine_cache_dir() / engine_key(ckpt.sha256, fmt, "fp32", tile),
                tile=tile,
            )
        except Exception as exc:  # one format failing must not stop the other
            done[fmt] = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
            continue
        parity = exported.parity
        done[fmt] = {
            "ok": bool(parity and parity.passed),
            "reason": parity.reason if parity else "",
            "seconds": round(time.perf_counter() - t0, 2),
        }
    return {"kind": "fp32", "ok": True, "sha256": ckpt.sha256, "tile": tile, "formats": done}


def quantise_int8(
    checkpoint: str | Path,
    *,
    calibration: str | Path,
    parity: str | Path,
    tile: int | None = None,
    parity_mean_abs: float | None = None,
    calibration_limit: int = 96,
    parity_limit: int = 32,
) -> dict[str, Any]:
    """Quantise to INT8 on ``calibration``, check parity on ``parity``, cache it or mark it.

    The engine goes to the cache folder of this checkpoint and CPU model; when its parity
    fails (or the export itself fails) the failure marker is written and the engine is never
    loaded. Its cost is mostly NNCF's statistics (one pass per calibration tile) and the
    eager fp32 torch reference of parity (one pass per parity tile, the slowest engine):
    ``calibration_limit`` and ``parity_limit`` bound both, spread over every image given.
    """
    from defectscan.model.backends import cpu_model
    from defectscan.model.checkpoint import load_checkpoint
    from defectscan.model.export import (
        auto_int8_key,
        calibration_tiles,
        engine_cache_dir,
        export_model,
    )

    ckpt = load_checkpoint(checkpoint)
    tile = tile or ckpt.spec.tile_size
    t0 = time.perf_counter()
    out: dict[str, Any] = {"kind": "int8", "sha256": ckpt.sha256, "tile": tile, "ok": False}
    try:
        parity_tiles = calibration_tiles(parity, ckpt.spec, tile=tile, limit=parity_limit)
        exported = export_model(
            ckpt.model,
            ckpt.spec,
            sha256=ckpt.sha256,
            fmt="openvino",
            out=engine_cache_dir() / auto_int8_key(ckpt.sha256, tile),
            tile=tile,
            int8=True,
            calibration=calibration,
            parity_tiles=parity_tiles,
            calibration_limit=calibration_limit,
            parity_mean_abs=parity_mean_abs,
        )
    except Exception as exc:
        out["reason"] = f"export failed: {type(exc).__name__}: {exc}"
        out["parity"] = None
    else:
        report = exported.parity
        out["parity"] = report.to_dict() if report else None
        out["ok"] = bool(report and report.passed)
        out["reason"] = "" if out["ok"] else (report.reason if report else "no parity report")
        out["directory"] = str(exported.directory)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    if not out["ok"]:
        marker = failure_marker(ckpt.sha256, tile)
        marker.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "reason": out["reason"],
            "parity": out["parity"],
            "cpu": cpu_model(),
            "at": datetime.now(UTC).isoformat(),
            "checkpoint_sha256": ckpt.sha256,
        }
        _write_json(marker, record)
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """The background process: ``python -m defectscan.model.quantise fp32|int8 ...``."""
    parser = argparse.ArgumentParser(prog="python -m defectscan.model.quantise")
    parser.add_argument("kind", choices=("fp32", "int8"))
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--status", required=True, help="where the outcome is written (JSON)")
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--calibration", default=None)
    parser.add_argument("--parity", default=None)
    parser.add_argument("--parity-mean-abs", type=float, default=None)
    parser.add_argument("--calibration-limit", type=int, default=96, help="tiles NNCF sees")
    parser.add_argument("--parity-limit", type=int, default=32, help="tiles parity checks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nice", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    limit_resources(max(1, args.threads), args.nice)
    status = Path(args.status)
    t0 = time.perf_counter()
    try:
        if args.kind == "fp32":
            result = export_fp32(args.checkpoint, tile=args.tile)
        else:
            if not args.calibration or not args.parity:
                parser.error("int8 needs --calibration and --parity folders")
            result = quantise_int8(
                args.checkpoint,
                calibration=args.calibration,
                parity=args.parity,
                tile=args.tile,
                parity_mean_abs=args.parity_mean_abs,
                calibration_limit=args.calibration_limit,
                parity_limit=args.parity_limit,
            )
    except Exception as exc:  # the monitor reads the outcome; a traceback helps nobody there
        log.exception("background %s job failed", args.kind)
        result = {"kind": args.kind, "ok": False, "reason": f"{type(exc).__name__}: {exc}"}
    result["wall_s"] = round(time.perf_counter() - t0, 2)
    _write_json(status, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
