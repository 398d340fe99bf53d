"""`defectscan inspect` as a user runs it: outputs, JSON Lines, exit statuses, seed models."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from defectscan.model.checkpoint import save_checkpoint
from helpers.cli import run_cli
from helpers.images import encode, gray_frame
from helpers.oracle import oracle_unet
from helpers.seed_reference import SeedUNet


@pytest.fixture
def oracle_model(tmp_path: Path) -> Path:
    net, spec = oracle_unet("softmax", tile=64, overlap=16)
    path = tmp_path / "oracle.safetensors"
    save_checkpoint(net, spec, path)
    return path


@pytest.fixture
def camera(tmp_path: Path) -> Path:
    folder = tmp_path / "camera"
    folder.mkdir()
    (folder / "a.png").write_bytes(encode(gray_frame(rects=((30, 40, 40, 20),)).image))
    (folder / "b.png").write_bytes(encode(gray_frame(rects=(), discs=()).image))
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


def test_json_lines_masks_and_overlays(
    oracle_model: Path, camera: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        ["inspect", str(camera), "--model", str(oracle_model), "--out", str(out), "--json"],
        capsys,
    )
    assert code == 0
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.png"]
    a, b = rows
    assert (a["status"], a["verdict"], b["verdict"]) == ("ok", "fail", "pass")
    assert {d["class"] for d in a["defects"]} == {"dark"}
    rect = next(d for d in a["defects"] if d["bbox"] == [30, 40, 40, 20])
    assert rect["area"] == 800
    assert 0.99 < rect["score"] <= 1.0
    mask = cv2.imread(a["mask"], cv2.IMREAD_UNCHANGED)
    assert mask.shape == (200, 300)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert (mask[40:60, 30:70] == 1).all()
    overlay = cv2.imread(a["overlay"])
    assert overlay.shape == (200, 300, 3)
    assert (out / "report.html").is_file()


def test_rejected_inputs_exit_2_and_the_rest_is_inspected(
    oracle_model: Path, camera: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = camera / "c.png"
    bad.write_bytes(encode(gray_frame().image)[:300])  # truncated in transit
    code, stdout, _ = run_cli(["inspect", str(camera), "-m", str(oracle_model), "--json"], capsys)
    assert code == 2
    rows = {Path(r["path"]).name: r for r in map(json.loads, stdout.splitlines())}
    assert rows["c.png"]["status"] == "rejected"
    assert rows["c.png"]["error"]["kind"] == "truncated"
    assert rows["c.png"]["error"]["message"]
    assert rows["a.png"]["verdict"] == "fail"


def test_table_output_and_globs(
    oracle_model: Path, camera: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, _ = run_cli(["inspect", str(camera / "*.png"), "-m", str(oracle_model)], capsys)
    assert code == 0
    assert "a.png" in stdout
    assert "fail" in stdout
    assert "2 images" in stdout


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "missing.png", "--model", "{model}"],
        ["inspect", "{camera}"],
        ["inspect", "{camera}", "--model", "nope.safetensors"],
        ["inspect", "{camera}", "--model", "{model}", "--backend", "tensorrt"],
        ["inspect", "{camera}", "--model", "{model}", "--tile-size", "3"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_1(
    args: list[str], oracle_model: Path, camera: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(model=oracle_model, camera=camera) for a in args]
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert err.strip()


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli(["--help"], capsys)
    assert code == 0
    for command in ("inspect", "demo", "db", "train", "eval", "models", "review"):
        assert command in stdout
    code, stdout, _ = run_cli(["inspect", "--help"], capsys)
    for option in ("--model", "--out", "--json", "--device", "--tile-size", "--overlap"):
        assert option in stdout


def _amplified_seed(n_classes: int, bilinear: bool) -> SeedUNet:
    torch.manual_seed(3)
    net = SeedUNet(3, n_classes, bilinear).eval()
    with torch.no_grad():
        # spread the logits of an untrained net away from the decision boundary, so that float
        # rounding differences between engines cannot flip a pixel
        net.outc.conv.weight.mul_(50)
    return net


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bilinear", "mask_values", "backend"),
    [
        (True, None, "torch"),
        (False, None, "torch"),
        (True, [0, 255], "torch"),
        (False, [0, 255], "torch"),
        (False, [0, 255], "auto"),  # the default: OpenVINO on this CPU
    ],
)
def test_seed_checkpoints_give_the_seed_masks(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    bilinear: bool,
    mask_values: list[int] | None,
    backend: str,
) -> None:
    """Acceptance: a .pth saved from the seed's classes -> the seed forward pass's masks."""
    n_classes = 1 if mask_values is None else 3
    net = _amplified_seed(n_classes, bilinear)
    state = net.state_dict()
    if mask_values is not None:
        state["mask_values"] = [0, 127, 255]
    torch.save(state, tmp_path / "seed.pth")
    rng = np.random.default_rng(0)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), (5, 5), 0)
    cv2.imwrite(str(tmp_path / "part.png"), bgr)
    code, stdout, _ = run_cli(
        [
            "inspect",
            str(tmp_path / "part.png"),
            "--model",
            str(tmp_path / "seed.pth"),
            "--tile-size",
            "128",
            "--precision",
            "fp32",
            "--backend",
            backend,
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    row = json.loads(stdout)
    ours = cv2.imread(row["mask"], cv2.IMREAD_UNCHANGED)
    # the seed repository's predict: RGB, /255, sigmoid > 0.5 or argmax
    x = torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)[None] / 255.0
    with torch.inference_mode():
        logits = net(x.float())
    if n_classes == 1:
        expected = (torch.sigmoid(logits)[0, 0] > 0.5).numpy().astype(np.uint8)
    else:
        expected = logits[0].argmax(0).numpy().astype(np.uint8)
    assert 0 < expected.mean() < n_classes - 0.01 or n_classes == 1
    np.testing.assert_array_equal(ours, expected)
