"""One checkpoint format; seed .pth files import safely with the seed's conventions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from defectscan.errors import CheckpointError
from defectscan.model.checkpoint import load_checkpoint, save_checkpoint
from defectscan.model.spec import ModelSpec
from defectscan.model.unet import UNet
from helpers.seed_reference import SeedUNet


def _spec(**kw: object) -> ModelSpec:
    base: dict[str, object] = {
        "n_channels": 3,
        "activation": "softmax",
        "class_names": ("scratch", "spot"),
        "base_width": 4,
    }
    base.update(kw)
    return ModelSpec(**base)  # type: ignore[arg-type]


def test_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    spec = _spec(thresholds=(0.3, 0.7), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), tile_size=128)
    net = UNet(3, spec.n_classes, base_width=4)
    digest = save_checkpoint(net, spec, tmp_path / "m.safetensors")
    ckpt = load_checkpoint(tmp_path / "m.safetensors")
    assert ckpt.spec == spec
    assert ckpt.sha256 == digest
    assert ckpt.version == f"unet-{digest[:12]}"
    assert not ckpt.model.training
    for k, v in net.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[k], v)
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = f.metadata()
    stored = json.loads(meta["defectscan.spec"])
    assert stored["activation"] == "softmax"
    assert stored["class_names"] == ["scratch", "spot"]
    assert stored["thresholds"] == [0.3, 0.7]
    assert meta["sha256"] == digest


def test_tampered_weights_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(UNet(3, 3, base_width=4), _spec(), path)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # flip bits inside the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)


def test_spec_must_match_weights(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="channels"):
        save_checkpoint(UNet(3, 1, base_width=4), _spec(), tmp_path / "m.safetensors")


def test_safetensors_without_our_metadata_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in UNet(3, 1, base_width=4).state_dict().items()}, path)
    with pytest.raises(CheckpointError, match="no defectscan metadata"):
        load_checkpoint(path)


@pytest.mark.parametrize("bilinear", [True, False])
@pytest.mark.parametrize("with_mask_values", [True, False])
def test_seed_pth_imports_with_seed_conventions(
    tmp_path: Path, bilinear: bool, with_mask_values: bool
) -> None:
    torch.manual_seed(0)
    seed = SeedUNet(3, 1, bilinear)
    state = seed.state_dict()
    if with_mask_values:
        state["mask_values"] = [0, 255]  # as milesial/Pytorch-UNet's train.py saves it
    torch.save(state, tmp_path / "seed.pth")
    ckpt = load_checkpoint(tmp_path / "seed.pth")
    spec = ckpt.spec
    assert spec.activation == "sigmoid"
    assert spec.thresholds == (0.5,)
    assert spec.bilinear is bilinear
    assert spec.base_width == 64
    assert spec.channel_order == "RGB"
    assert spec.mean == (0.0, 0.0, 0.0)
    assert spec.std == (1.0, 1.0, 1.0)
    assert spec.mask_values == ((0, 255) if with_mask_values else ())
    # and it can be re-saved in the product format
    save_checkpoint(ckpt.model, spec, tmp_path / "converted.safetensors")
    assert load_checkpoint(tmp_path / "converted.safetensors").sha256 == ckpt.sha256


def test_multi_class_seed_pth_is_softmax(tmp_path: Path) -> None:
    torch.save(SeedUNet(3, 4, True).state_dict(), tmp_path / "seed.pth")
    spec = load_checkpoint(tmp_path / "seed.pth").spec
    assert spec.activation == "softmax"
    assert spec.class_names == ("class_1", "class_2", "class_3")


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickle code ran",))


def test_pickle_payloads_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"inc.double_conv.0.weight": torch.zeros(1), "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)
    assert "pickle code ran" not in capsys.readouterr().out


def test_incomplete_state_dict_says_what_is_missing(tmp_path: Path) -> None:
    state = UNet(3, 1, base_width=4).state_dict()
    del state["up2.conv.double_conv.0.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \['up2.conv.double_conv.0.weight'\]"):
        load_checkpoint(tmp_path / "partial.pth")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a seed UNet"):
        load_checkpoint(tmp_path / "other.pth")


def test_unknown_files_and_suffixes(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "m.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported checkpoint type"):
        load_checkpoint(tmp_path / "m.ckpt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors")


def test_spec_validation_messages() -> None:
    with pytest.raises(CheckpointError, match="activation"):
        _spec(activation="relu")
    with pytest.raises(CheckpointError, match="thresholds has 1 values, expected 2"):
        _spec(thresholds=(0.5,))
    with pytest.raises(CheckpointError, match="GRAY"):
        _spec(channel_order="GRAY")
    with pytest.raises(CheckpointError, match="unknown model metadata"):
        ModelSpec.from_dict({**_spec().to_dict(), "colour": "blue"})
