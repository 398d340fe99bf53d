"""Exported engines: ONNX and OpenVINO files (INT8 included), their parity, and their cache.

``defectscan export`` and the engine cache go through here:

- :func:`export_model` writes a checkpoint's network (with its activation) as ONNX or as
  OpenVINO IR, optionally post-training quantised to INT8 with NNCF on tiles of real images
  (a folder, tiled like inspection), checks it against eager torch and writes the result of
  that check next to the model (``engine.json``). A model that fails parity is written but
  marked failed, and never loaded by ``auto``.
- :func:`check_parity` is the check: eager fp32 torch (the unmodified network) against the
  engine on the same tiles. The engines output probabilities (the activation is inside the
  exported graph), so the tolerance is on probabilities - the values thresholds compare -
  rather than on logits, which saturate: see :data:`TOLERANCES`. Masks must overlap
  (IoU >= 0.99 for fp32/fp16/bf16, >= 0.98 for INT8) and every tile's verdict must match.

Engine selection (``--backend auto``) is :mod:`defectscan.model.engines`, which uses both this
module and :mod:`.backends`.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from defectscan.errors import DefectscanError
from defectscan.model.backends import (
    Backend,
    OnnxRuntimeBackend,
    OpenVINOBackend,
    WithActivation,
    export_onnx,
    fold_batchnorm,
)
from defectscan.model.spec import Activation, ModelSpec

__all__ = [
    "ENGINE_META",
    "TOLERANCES",
    "EngineFormat",
    "ExportError",
    "ExportedEngine",
    "ParityReport",
    "auto_int8_key",
    "calibration_tiles",
    "check_parity",
    "cpu_tag",
    "engine_cache_dir",
    "engine_key",
    "export_model",
    "load_exported",
    "reference_probs",
    "synthetic_tiles",
]

log = logging.getLogger(__name__)

EngineFormat = Literal["onnx", "openvino"]
ENGINE_META = "engine.json"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ExportError(DefectscanError):
    """A model could not be exported, quantised or loaded as an engine."""

    kind = "export"


@dataclass(frozen=True)
class _Tolerance:
    max_abs: float | None  # largest probability difference anywhere
    mean_abs: float | None  # mean probability difference
    iou: float  # smallest mask IoU per class


#: Parity limits by engine precision. Probabilities, not logits: see the module docstring.
TOLERANCES: dict[str, _Tolerance] = {
    "fp32": _Tolerance(max_abs=1e-3, mean_abs=None, iou=0.99),
    "fp16": _Tolerance(max_abs=5e-2, mean_abs=None, iou=0.99),
    "bf16": _Tolerance(max_abs=5e-2, mean_abs=None, iou=0.99),
    # Quantisation moves single pixels near a boundary a lot; on average it must stay close.
    "int8": _Tolerance(max_abs=None, mean_abs=2e-2, iou=0.98),
}


@dataclass
class ParityReport:
    """An engine against eager fp32 torch on the same tiles."""

    precision: str
    tiles: int
    max_abs: float
    mean_abs: float
    iou: dict[str, float]
    verdicts_equal: bool
    passed: bool
    reason: str = ""
    tolerance: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (stored in ``engine.json``)."""
        return asdict(self)


@dataclass(frozen=True)
class ExportedEngine:
    """Where :func:`export_model` wrote an engine, and its parity."""

    directory: Path
    model_file: Path
    format: EngineFormat
    precision: str
    tile: int
    parity: ParityReport | None


# -- tiles ------------------------------------------------------------------------------------


def synthetic_tiles(spec: ModelSpec, tile: int, n: int = 4, seed: int = 0) -> np.ndarray:
    """``n`` model-input tiles cut from synthetic parts (:mod:`defectscan.synth`)."""
    import cv2

    from defectscan import synth
    from defectscan.imaging import decode, to_model_input

    out = np.empty((n, spec.n_channels, tile, tile), np.float32)
    for i in range(n):
        image = synth.make_sample(synth.sample_seed(seed, i), height=tile, width=tile).image
        ok, encoded = cv2.imencode(".png", image)
        if not ok:  # pragma: no cover - OpenCV always encodes a uint8 array as PNG
            msg = "could not encode a synthetic tile"
            raise ExportError(msg)
        out[i] = _normalise(to_model_input, decode(encoded.tobytes()), spec)
    return out


def _normalise(to_model_input: Callable[..., np.ndarray], image: Any, spec: ModelSpec) -> Any:
    return to_model_input(
        image,
        n_channels=spec.n_channels,
        channel_order=spec.channel_order,
        mean=spec.mean,
        std=spec.std,
    )


def calibration_tiles(
    directory: str | Path,
    spec: ModelSpec,
    *,
    tile: int,
    overlap: int | None = None,
    limit: int = 300,
    max_pixels: int = 80_000_000,
) -> np.ndarray:
    """Tiles of the images in ``directory``, cut exactly as inspection cuts them.

    At most ``limit`` tiles, spread evenly over all the tiles of all the images.
    """
    from defectscan.imaging import decode, to_model_input
    from defectscan.tiling import iter_tiles, make_grid

    root = Path(directory)
    if not root.is_dir():
        msg = f"calibration folder {root} does not exist: give a folder of camera images"
        raise ExportError(msg)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        msg = (
            f"no images ({', '.join(_IMAGE_SUFFIXES)}) under {root}: INT8 calibration needs "
            "real camera images, ideally a few hundred tiles' worth"
        )
        raise ExportError(msg)
    ov = spec.tile_overlap if overlap is None else overlap
    tiles: list[np.ndarray] = []
    for path in files:
        image = decode(path.read_bytes(), max_pixels=max_pixels)
        frame = _normalise(to_model_input, image, spec)
        grid = make_grid(image.height, image.width, tile=tile, overlap=min(ov, tile - 1))
        tiles.extend(np.array(t) for _, t in iter_tiles(frame, grid))
    pick = np.linspace(0, len(tiles) - 1, num=min(limit, len(tiles))).round().astype(int)
    return np.stack([tiles[i] for i in np.unique(pick)])


# -- parity -----------------------------------------------------------------------------------


def reference_probs(model: nn.Module, activation: Activation, tiles: np.ndarray) -> np.ndarray:
    """Eager fp32 torch on the CPU, the unmodified network: the yardstick of every engine."""
    module = WithActivation(model, activation).eval().cpu()
    out = []
    with torch.inference_mode():
        for i in range(0, len(tiles), 8):
            out.append(module(torch.from_numpy(np.ascontiguousarray(tiles[i : i + 8]))).numpy())
    return np.concatenate(out)


def _engine_probs(infer: Callable[[np.ndarray], np.ndarray], tiles: np.ndarray) -> np.ndarray:
    return np.concatenate([infer(tiles[i : i + 8]) for i in range(0, len(tiles), 8)])


def check_parity(
    infer: Callable[[np.ndarray], np.ndarray],
    model: nn.Module,
    spec: ModelSpec,
    tiles: np.ndarray,
    *,
    precision: str,
    reference: np.ndarray | None = None,
    mean_abs: float | None = None,
) -> ParityReport:
    """Compare an engine with eager fp32 torch: probabilities, masks (IoU) and verdicts.

    ``mean_abs`` tightens or loosens the mean probability difference allowed (the plant's
    ``int8_parity_mean_abs``); the mask IoU and verdict checks stay as they are.
    """
    from defectscan.postprocess import PostprocessConfig, class_masks, postprocess

    tol = TOLERANCES.get(precision, TOLERANCES["fp32"])
    if mean_abs is not None:
        tol = _Tolerance(max_abs=tol.max_abs, mean_abs=mean_abs, iou=tol.iou)
    ref = reference if reference is not None else reference_probs(model, spec.activation, tiles)
    got = _engine_probs(infer, tiles)
    if got.shape != ref.shape:
        return ParityReport(
            precision, len(tiles), float("inf"), float("inf"), {}, False, False,
            f"engine output shape {got.shape} != torch {ref.shape}",
        )  # fmt: skip
    diff = np.abs(got.astype(np.float64) - ref)
    cfg = PostprocessConfig.from_spec(spec)
    inter = np.zeros(len(spec.class_names))
    union = np.zeros(len(spec.class_names))
    verdicts_equal = True
    for r, g in zip(ref, got, strict=True):
        for c, (mr, mg) in enumerate(zip(class_masks(r, cfg), class_masks(g, cfg), strict=True)):
            inter[c] += np.count_nonzero(mr & mg)
            union[c] += np.count_nonzero(mr | mg)
        verdicts_equal &= postprocess(r, cfg).verdict == postprocess(g, cfg).verdict
    iou = {
        name: float(i / u) if u else 1.0
        for name, i, u in zip(spec.class_names, inter, union, strict=True)
    }
    report = ParityReport(
        precision=precision,
        tiles=len(tiles),
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        iou=iou,
        verdicts_equal=bool(verdicts_equal),
        passed=True,
        tolerance={"max_abs": tol.max_abs, "mean_abs": tol.mean_abs, "iou": tol.iou},
    )
    problems = []
    if tol.max_abs is not None and not report.max_abs <= tol.max_abs:
        problems.append(f"max |dp| {report.max_abs:.3g} > {tol.max_abs:g}")
    if tol.mean_abs is not None and not report.mean_abs <= tol.mean_abs:
        problems.append(f"mean |dp| {report.mean_abs:.3g} > {tol.mean_abs:g}")
    low = {k: round(v, 4) for k, v in iou.items() if not v >= tol.iou}
    if low:
        problems.append(f"mask IoU {low} < {tol.iou}")
    if not verdicts_equal:
        problems.append("verdicts differ from eager torch")
    report.passed = not problems
    report.reason = "; ".join(problems)
    return report


# -- export -----------------------------------------------------------------------------------


def engine_cache_dir() -> Path:
    """``var/engines`` of the current settings."""
    from defectscan.config import get_settings

    return Path(get_settings().var_dir) / "engines"


def engine_key(sha256: str, fmt: EngineFormat, precision: str, tile: int) -> str:
    """Cache folder name of an engine: the checkpoint's weights, the format, precision, tile.

    ``-f``: the engine has the pooled-features output (drift monitoring); engines cached
    before it was added lack it and are exported again rather than reused.
    """
    return f"{sha256[:16]}-{fmt}-{precision}-t{tile}-f"


def cpu_tag() -> str:
    """A short, file-name-safe tag of this CPU model (engines quantised and timed here)."""
    import hashlib

    from defectscan.model.backends import cpu_model

    return hashlib.sha256(cpu_model().encode()).hexdigest()[:8]


def auto_int8_key(sha256: str, tile: int) -> str:
    """Cache folder of the INT8 engine a monitor quantised itself, for this CPU model."""
    return f"{engine_key(sha256, 'openvino', 'int8', tile)}-cpu{cpu_tag()}"


def _convert_openvino(module: nn.Module, n_channels: int, tile: int) -> Any:
    try:
        import openvino as ov
    except ImportError as exc:
        msg = "OpenVINO is not installed: pip install 'defectscan[engines]'"
        raise ExportError(msg) from exc
    example = torch.zeros(1, n_channels, tile, tile)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
        return ov.convert_model(module, example_input=example)


def _quantise(ov_model: Any, tiles: np.ndarray) -> Any:
    try:
        import nncf
    except ImportError as exc:
        msg = "INT8 export needs NNCF: pip install nncf (it works on the OpenVINO model)"
        raise ExportError(msg) from exc
    dataset = nncf.Dataset([t[None] for t in tiles])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nncf.quantize(
            ov_model,
            dataset,
            subset_size=len(tiles),
            preset=nncf.QuantizationPreset.MIXED,
            fast_bias_correction=True,
        )


def _write_meta(directory: Path, meta: dict[str, Any]) -> None:
    (directory / ENGINE_META).write_text(json.dumps(meta, indent=2) + "\n")


def export_model(
    model: nn.Module,
    spec: ModelSpec,
    *,
    sha256: str,
    fmt: EngineFormat,
    out: str | Path | None = None,
    tile: int | None = None,
    int8: bool = False,
    calibration: str | Path | None = None,
    parity_tiles: np.ndarray | None = None,
    calibration_limit: int = 300,
    parity_mean_abs: float | None = None,
    features: bool = True,
) -> ExportedEngine:
    """Export ``model`` (BatchNorm folded, activation included) and check it against torch.

    ``out`` is a folder (default: the engine cache, ``var/engines/<key>``); it gets the model
    file (``model.onnx`` or ``model.xml``/``.bin``) and ``engine.json`` with the parity report.
    INT8 (OpenVINO only) needs ``calibration``: a folder of real camera images. Parity runs on
    ``parity_tiles`` (default: calibration tiles not used to quantise, else synthetic parts);
    ``parity_mean_abs`` overrides the mean probability difference allowed (see
    :func:`check_parity`). ``features`` (default) adds a second output, the pooled bottleneck
    features of the same pass, so that drift monitoring keeps its features on whichever engine
    a monitor runs or switches to; the probabilities stay the first output.
    """
    tile = tile or spec.tile_size
    if int8 and fmt != "openvino":
        msg = "INT8 export is for OpenVINO: use --format openvino --int8 --calibration DIR"
        raise ExportError(msg)
    if int8 and calibration is None:
        msg = (
            "INT8 export needs --calibration DIR: a folder of real camera images, tiled like "
            "inspection, so that the quantisation ranges fit production data"
        )
        raise ExportError(msg)
    precision = "int8" if int8 else "fp32"
    directory = Path(out) if out else engine_cache_dir() / engine_key(sha256, fmt, precision, tile)
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    module = WithActivation(fold_batchnorm(model), spec.activation, features=features).eval()
    calib: np.ndarray | None = None
    if calibration is not None:
        calib = calibration_tiles(calibration, spec, tile=tile, limit=calibration_limit)
    if parity_tiles is None:
        if calib is not None and len(calib) >= 8:
            # Check on tiles the quantiser saw least of: every other one, at most 32.
            parity_tiles = calib[1::2][:32]
        else:
            parity_tiles = synthetic_tiles(spec, tile, n=8)
    if fmt == "onnx":
        model_file = tmp / "model.onnx"
        export_onnx(module, model_file, n_channels=spec.n_channels, tile=tile, features=features)
        backend: Backend = OnnxRuntimeBackend.from_file(model_file)
    elif fmt == "openvino":
        import openvino as ov

        ov_model = _convert_openvino(module, spec.n_channels, tile)
        if int8:
            assert calib is not None
            ov_model = _quantise(ov_model, calib)
        ov_model.reshape([-1, spec.n_channels, tile, tile])
        model_file = tmp / "model.xml"
        ov.save_model(ov_model, str(model_file), compress_to_fp16=False)
        # Parity of fp32 weights at f32 inference; bf16 at run time is checked on first use.
        backend = OpenVINOBackend.from_file(model_file, precision="int8" if int8 else "fp32")
    else:
        msg = f"unknown export format {fmt!r}: use onnx or openvino"
        raise ExportError(msg)
    parity = check_parity(
        backend.infer, model, spec, parity_tiles, precision=precision, mean_abs=parity_mean_abs
    )
    from defectscan.model.backends import cpu_model

    meta = {
        "format": fmt,
        "precision": precision,
        "tile": tile,
        "n_channels": spec.n_channels,
        "checkpoint_sha256": sha256,
        "model_file": model_file.name,
        "spec": spec.to_dict(),
        "parity": parity.to_dict(),
        "calibration": str(calibration) if calibration else None,
        "calibration_tiles": None if calib is None else len(calib),
        "features": features,
        "created_at": datetime.now(UTC).isoformat(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
    }
    _write_meta(tmp, meta)
    shutil.rmtree(directory, ignore_errors=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(directory)
    if not parity.passed:
        log.warning(
            "exported %s %s model fails parity with eager torch (%s): it will not be used",
            fmt,
            precision,
            parity.reason,
        )
    return ExportedEngine(directory, directory / model_file.name, fmt, precision, tile, parity)


def load_exported(
    directory: str | Path, *, sha256: str | None = None, tile: int | None = None
) -> Backend:
    """The engine in ``directory`` (written by :func:`export_model`), if it passed parity."""
    directory = Path(directory)
    meta_path = directory / ENGINE_META
    if not meta_path.is_file():
        msg = f"{directory} holds no exported engine ({ENGINE_META} missing): run defectscan export"
        raise ExportError(msg)
    meta = json.loads(meta_path.read_text())
    if sha256 is not None and meta.get("checkpoint_sha256") != sha256:
        msg = (
            f"engine in {directory} was exported from another checkpoint "
            f"({str(meta.get('checkpoint_sha256'))[:12]}, not {sha256[:12]}): export again"
        )
        raise ExportError(msg)
    if tile is not None and meta.get("tile") != tile:
        msg = f"engine in {directory} is for {meta.get('tile')}px tiles, not {tile}: export again"
        raise ExportError(msg)
    parity = meta.get("parity") or {}
    if not parity.get("passed"):
        msg = (
            f"engine in {directory} failed parity with eager torch at export "
            f"({parity.get('reason', 'no parity record')}): it is never used"
        )
        raise ExportError(msg)
    model_file = directory / str(meta["model_file"])
    if meta["format"] == "onnx":
        return OnnxRuntimeBackend.from_file(model_file)
    return OpenVINOBackend.from_file(model_file, precision=str(meta["precision"]))
