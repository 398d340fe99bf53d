"""Exported engines compute what eager torch computes, or are never used.

Parity is checked on an oracle UNet (a known per-pixel function, so masks and verdicts mean
something) with real OpenCV-decoded calibration images: ONNX, OpenVINO fp32 and OpenVINO INT8
(NNCF post-training quantisation). Tolerances are those of ``export.TOLERANCES``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectscan.model.backends import OpenVINOBackend, TorchBackend
from defectscan.model.checkpoint import save_checkpoint
from defectscan.model.engines import auto_cpu_backend
from defectscan.model.export import (
    ENGINE_META,
    ExportError,
    calibration_tiles,
    check_parity,
    engine_key,
    export_model,
    load_exported,
    reference_probs,
)
from helpers.images import gray_frame
from helpers.oracle import oracle_unet

__all__: list[str] = []

SHA = "ab" * 32


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A camera folder: parts with dark defects of several sizes."""
    root = tmp_path_factory.mktemp("calib")
    for i in range(6):
        frame = gray_frame(
            128,
            160,
            rects=((10 + 7 * i, 20, 20 + 3 * i, 12),),
            discs=((100, 70 + 4 * i, 9 + i),),
            seed=i,
        )
        cv2.imwrite(str(root / f"part-{i}.png"), frame.image)
    return root


@pytest.fixture(autouse=True)
def _var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Engines are cached under this test's own var/."""
    from defectscan.config import get_settings

    monkeypatch.setenv("DEFECTSCAN_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_calibration_tiles_are_cut_like_inspection(calib_dir: Path) -> None:
    _, spec = oracle_unet(tile=64, overlap=16)
    tiles = calibration_tiles(calib_dir, spec, tile=64)
    # 128x160 with 64px tiles, stride 48: 3 rows x 3 columns per image, 6 images
    assert tiles.shape == (54, 1, 64, 64)
    assert tiles.dtype == np.float32
    assert tiles.min() >= 0.0
    assert tiles.max() <= 1.0


def test_calibration_folder_without_images_says_what_to_do(tmp_path: Path) -> None:
    _, spec = oracle_unet()
    with pytest.raises(ExportError, match="real camera images"):
        calibration_tiles(tmp_path, spec, tile=64)


@pytest.mark.parametrize(
    ("fmt", "int8", "activation"),
    [
        ("onnx", False, "sigmoid"),
        ("onnx", False, "softmax"),
        ("openvino", False, "sigmoid"),
        ("openvino", True, "sigmoid"),
        ("openvino", True, "softmax"),
    ],
)
def test_export_holds_parity_with_eager_torch(
    fmt: str, int8: bool, activation: str, calib_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("openvino" if fmt == "openvino" else "onnxruntime")
    if int8:
        pytest.importorskip("nncf")
    net, spec = oracle_unet(activation, tile=64, overlap=16)
    exported = export_model(
        net,
        spec,
        sha256=SHA,
        fmt=fmt,  # type: ignore[arg-type]
        out=tmp_path / "engine",
        int8=int8,
        calibration=calib_dir,
    )
    parity = exported.parity
    assert parity is not None
    assert parity.passed, parity.reason
    assert parity.verdicts_equal
    assert min(parity.iou.values()) >= (0.98 if int8 else 0.99)
    if not int8:
        assert parity.max_abs <= 1e-3
    meta = json.loads((exported.directory / ENGINE_META).read_text())
    assert meta["checkpoint_sha256"] == SHA
    assert meta["precision"] == ("int8" if int8 else "fp32")
    # The file on disk loads and computes the same on fresh tiles (whole frames of real images)
    backend = load_exported(exported.directory, sha256=SHA, tile=64)
    tiles = calibration_tiles(calib_dir, spec, tile=64, limit=16)
    again = check_parity(backend.infer, net, spec, tiles, precision=meta["precision"])
    assert again.passed, again.reason


def test_an_engine_that_fails_parity_is_never_loaded(calib_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    net, spec = oracle_unet(tile=64, overlap=16)
    exported = export_model(net, spec, sha256=SHA, fmt="onnx", out=tmp_path / "e")
    meta_path = exported.directory / ENGINE_META
    meta = json.loads(meta_path.read_text())
    meta["parity"]["passed"] = False
    meta["parity"]["reason"] = "mask IoU 0.5 < 0.99"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="failed parity"):
        load_exported(exported.directory)
    with pytest.raises(ExportError, match="another checkpoint"):
        load_exported(tmp_path / "e", sha256="cd" * 32)


def test_a_model_that_differs_fails_the_check_with_a_reason() -> None:
    net, spec = oracle_unet(tile=64, overlap=16)
    tiles = np.random.default_rng(0).random((4, 1, 64, 64), dtype=np.float32)
    ref = reference_probs(net, "sigmoid", tiles)
    report = check_parity(lambda x: 1.0 - ref[: len(x)], net, spec, tiles, precision="fp32")
    assert not report.passed
    assert "max |dp|" in report.reason


def test_int8_export_needs_openvino_and_calibration(tmp_path: Path) -> None:
    net, spec = oracle_unet()
    with pytest.raises(ExportError, match="--calibration"):
        export_model(net, spec, sha256=SHA, fmt="openvino", int8=True, out=tmp_path / "x")
    with pytest.raises(ExportError, match="OpenVINO"):
        export_model(
            net, spec, sha256=SHA, fmt="onnx", int8=True, calibration=tmp_path, out=tmp_path
        )


def test_auto_measures_the_engines_that_hold_parity_and_remembers_the_fastest(
    calib_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    net, spec = oracle_unet(tile=64, overlap=16)
    backend = auto_cpu_backend(
        net, "sigmoid", n_channels=1, tile=64, checkpoint_sha256=SHA, spec=spec
    )
    cache = tmp_path / "var" / "engines"
    assert (cache / engine_key(SHA, "openvino", "fp32", 64) / ENGINE_META).is_file()
    choice = json.loads((cache / f"{SHA[:16]}-auto-auto-t64.json").read_text())
    rates = choice["tiles_per_s"]
    assert set(rates) == {"openvino", "onnxruntime", "torch"}
    assert choice["engine"] == max(rates, key=rates.get)
    names = {"openvino": "openvino", "onnxruntime": "onnxruntime", "torch": "torch"}
    assert backend.name == names[choice["engine"]]
    # A cached INT8 engine joins the race (its parity was checked at export on real images);
    # a remembered choice is reused without timing again.
    (cache / f"{SHA[:16]}-auto-auto-t64.json").unlink()
    export_model(net, spec, sha256=SHA, fmt="openvino", int8=True, calibration=calib_dir)
    backend = auto_cpu_backend(
        net, "sigmoid", n_channels=1, tile=64, checkpoint_sha256=SHA, spec=spec
    )
    choice = json.loads((cache / f"{SHA[:16]}-auto-auto-t64.json").read_text())
    assert "openvino-int8" in choice["tiles_per_s"]
    again = auto_cpu_backend(
        net, "sigmoid", n_channels=1, tile=64, checkpoint_sha256=SHA, spec=spec
    )
    assert type(again) is type(backend)
    if choice["engine"] == "openvino-int8":
        assert isinstance(again, OpenVINOBackend)
        assert again.precision == "int8"


def test_auto_falls_back_with_a_warning_when_engines_disagree(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openvino")
    net, spec = oracle_unet(tile=64, overlap=16)
    from defectscan.model import engines

    def wrong(*args: object, **kwargs: object) -> object:
        class Broken:
            name = "openvino"
            device = "cpu"
            precision = "fp32"

            def infer(self, batch: np.ndarray) -> np.ndarray:
                return np.zeros((len(batch), 1, 64, 64), np.float32)

        return Broken()

    monkeypatch.setattr(engines, "_cached_or_built", wrong)
    with caplog.at_level(logging.WARNING, logger="defectscan.model.engines"):
        backend = auto_cpu_backend(net, "sigmoid", n_channels=1, tile=64, spec=spec)
    assert isinstance(backend, TorchBackend)
    assert "does not match eager torch" in caplog.text


def test_export_from_a_checkpoint_file_via_the_cli(calib_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from typer.testing import CliRunner

    from defectscan.cli import app

    net, spec = oracle_unet(tile=64, overlap=16)
    ckpt = tmp_path / "oracle.safetensors"
    save_checkpoint(net, spec, ckpt)
    out = tmp_path / "ov"
    result = CliRunner().invoke(
        app, ["export", "--model", str(ckpt), "--format", "openvino", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "model.xml").is_file()
    assert "parity" in result.output


def test_auto_without_a_spec_works_on_a_small_probe_tile() -> None:
    """`defectscan health` probes the engine with one 32x32 tile and no spec."""
    pytest.importorskip("openvino")
    net, _ = oracle_unet(tile=64, overlap=16)
    backend = auto_cpu_backend(net, "sigmoid", n_channels=1, tile=32)
    probs = backend.infer(np.zeros((1, 1, 32, 32), np.float32))
    assert probs.shape == (1, 1, 32, 32)
