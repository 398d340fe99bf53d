"""One checkpoint format (``.safetensors`` + JSON metadata) and one loader.

Legacy seed / milesial-style ``.pth`` files (a ``state_dict``, optionally with a ``mask_values``
key) are imported through ``torch.load(weights_only=True)`` only: there is no unsafe pickle
path anywhere. Their conventions follow the seed repository unless told otherwise: RGB channel
order, pixels scaled to [0, 1], one output class = sigmoid at 0.5, two or more = softmax argmax.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from defectscan.errors import CheckpointError
from defectscan.model.spec import ModelSpec
from defectscan.model.unet import UNet

__all__ = [
    "FORMAT",
    "Checkpoint",
    "build_model",
    "file_sha256",
    "import_state_dict",
    "load_checkpoint",
    "save_checkpoint",
    "weights_sha256",
]

FORMAT = "defectscan/1"
_META_KEY = "defectscan.spec"


@dataclass(frozen=True)
class Checkpoint:
    """A built model (eval mode, on CPU) with its spec and the sha256 of its weights."""

    model: UNet
    spec: ModelSpec
    sha256: str
    path: Path | None = None

    @property
    def version(self) -> str:
        """Short stable identity: model name and the first 12 hex digits of the weights hash."""
        return f"{self.spec.name}-{self.sha256[:12]}"

    def registration(self) -> dict[str, Any]:
        """Arguments of ``store.ensure_model_version`` for this checkpoint.

        The one place that says how a checkpoint is registered: the path is absolute, so the
        registry can load it from any working directory (monitors, flows, the promotion gate).
        """
        return {
            "version": self.version,
            "sha256": self.sha256,
            "name": self.spec.name,
            "checkpoint_path": str(self.path.resolve()) if self.path else None,
            "spec": self.spec.to_dict(),
            "activation": self.spec.activation,
            "class_names": list(self.spec.class_names),
        }


def build_model(spec: ModelSpec) -> UNet:
    """A freshly initialised network of the architecture ``spec`` describes."""
    if spec.architecture != "unet":
        msg = f"unknown architecture {spec.architecture!r}; this defectscan builds 'unet'"
        raise CheckpointError(msg)
    return UNet(spec.n_channels, spec.n_classes, spec.bilinear, spec.base_width)


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of parameter names, shapes, dtypes and bytes: the identity of a set of weights."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(model: torch.nn.Module, spec: ModelSpec, path: str | Path) -> str:
    """Write ``model``'s weights and ``spec`` to ``.safetensors``; returns the weights hash."""
    path = Path(path)
    if path.suffix != ".safetensors":
        msg = f"checkpoints are written as .safetensors, got {path.name!r}"
        raise CheckpointError(msg)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _check_matches(state, spec)
    digest = weights_sha256(state)
    meta = {"format": FORMAT, _META_KEY: spec.to_json(), "sha256": digest}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a watcher never sees half a checkpoint
    return digest


def load_checkpoint(path: str | Path, **import_options: Any) -> Checkpoint:
    """Load a ``.safetensors`` checkpoint, or import a legacy ``.pth`` state_dict.

    ``import_options`` only apply to ``.pth`` files (see :func:`import_state_dict`).
    """
    path = Path(path)
    if not path.is_file():
        msg = f"checkpoint {path} does not exist"
        raise CheckpointError(msg)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix in (".pth", ".pt"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
            msg = (
                f"cannot read {path} with torch.load(weights_only=True): {exc}. Only plain "
                f"state_dicts (tensors, numbers, lists) are accepted; re-save the model with "
                f"torch.save(model.state_dict(), path)"
            )
            raise CheckpointError(msg) from exc
        ckpt = import_state_dict(obj, **import_options)
        return Checkpoint(ckpt.model, ckpt.spec, ckpt.sha256, path)
    msg = f"unsupported checkpoint type {path.suffix!r}: use .safetensors (or import a .pth)"
    raise CheckpointError(msg)


def _load_safetensors(path: Path) -> Checkpoint:
    try:
        state = load_file(str(path), device="cpu")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        msg = f"{path} is not a readable safetensors file: {exc}"
        raise CheckpointError(msg) from exc
    if meta.get("format") != FORMAT or _META_KEY not in meta:
        msg = (
            f"{path} has no defectscan metadata (format={meta.get('format')!r}); "
            f"write checkpoints with defectscan.model.checkpoint.save_checkpoint"
        )
        raise CheckpointError(msg)
    spec = ModelSpec.from_json(meta[_META_KEY])
    digest = weights_sha256(state)
    if meta.get("sha256") and meta["sha256"] != digest:
        msg = f"{path}: weights do not match their recorded sha256 (corrupt or edited file)"
        raise CheckpointError(msg)
    model = build_model(spec)
    _load_strict(model, state, path.name)
    return Checkpoint(model.eval(), spec, digest, path)


def import_state_dict(
    obj: Any,
    *,
    class_names: tuple[str, ...] | None = None,
    activation: str | None = None,
    channel_order: str | None = None,
    name: str = "imported",
    tile_size: int = 256,
    tile_overlap: int = 32,
) -> Checkpoint:
    """Build a :class:`Checkpoint` from a seed-style state_dict (optionally with ``mask_values``).

    The architecture (input channels, classes, base width, upsampling mode) is read from the
    tensor shapes; the activation follows the seed's rule unless ``activation`` is given.
    """
    if not isinstance(obj, Mapping):
        msg = f"expected a state_dict (a mapping of tensors), got {type(obj).__name__}"
        raise CheckpointError(msg)
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = {**obj["state_dict"], **{k: v for k, v in obj.items() if k == "mask_values"}}
    mask_values = obj.get("mask_values")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    required = ("inc.double_conv.0.weight", "outc.conv.weight")
    missing = [k for k in required if k not in state]
    if missing:
        msg = (
            f"this is not a seed UNet state_dict: missing {missing} (found "
            f"{sorted(state)[:5]}...); a checkpoint saved from the seed's UNet has these keys"
        )
        raise CheckpointError(msg)
    n_channels = int(state["inc.double_conv.0.weight"].shape[1])
    base_width = int(state["inc.double_conv.0.weight"].shape[0])
    n_out = int(state["outc.conv.weight"].shape[0])
    bilinear = "up1.up.weight" not in state
    act = activation or ("sigmoid" if n_out == 1 else "softmax")
    if act not in ("sigmoid", "softmax"):
        msg = f"activation must be sigmoid or softmax, got {act!r}"
        raise CheckpointError(msg)
    k = n_out if act == "sigmoid" else n_out - 1
    if k < 1:
        msg = "a softmax model needs at least 2 output channels (background + one class)"
        raise CheckpointError(msg)
    names = class_names or (("defect",) if k == 1 else tuple(f"class_{i + 1}" for i in range(k)))
    if len(names) != k:
        msg = f"{len(names)} class names given for a model with {k} defect classes"
        raise CheckpointError(msg)
    order = channel_order or ("GRAY" if n_channels == 1 else "RGB")
    mv: tuple[Any, ...] = ()
    if mask_values is not None:
        mv = tuple(tuple(v) if isinstance(v, list | tuple) else v for v in mask_values)
    spec = ModelSpec(
        n_channels=n_channels,
        activation=act,  # type: ignore[arg-type]
        class_names=tuple(names),
        bilinear=bilinear,
        base_width=base_width,
        channel_order=order,  # type: ignore[arg-type]
        mask_values=mv,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
        name=name,
    )
    model = build_model(spec)
    _load_strict(model, state, "state_dict")
    return Checkpoint(model.eval(), spec, weights_sha256(model.state_dict()), None)


def _check_matches(state: Mapping[str, torch.Tensor], spec: ModelSpec) -> None:
    out = state.get("outc.conv.weight")
    inc = state.get("inc.double_conv.0.weight")
    if out is None or inc is None:
        msg = "the model to save is not a defectscan/seed UNet"
        raise CheckpointError(msg)
    if int(out.shape[0]) != spec.n_classes or int(inc.shape[1]) != spec.n_channels:
        msg = (
            f"spec says {spec.n_channels} -> {spec.n_classes} channels but the weights are "
            f"{int(inc.shape[1])} -> {int(out.shape[0])}"
        )
        raise CheckpointError(msg)


def _load_strict(model: UNet, state: Mapping[str, torch.Tensor], what: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:6]}{'...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}")
        if wrong:
            parts.append(
                "shape mismatch "
                + ", ".join(
                    f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:4]
                )
            )
        msg = f"{what} does not fit the seed UNet: " + "; ".join(parts)
        raise CheckpointError(msg)
    model.load_state_dict(dict(state), strict=True)


def spec_from_metadata(meta: Mapping[str, str]) -> ModelSpec:
    """Parse the spec from raw safetensors metadata (for tools that only read the header)."""
    if _META_KEY not in meta:
        msg = "no defectscan metadata in this file"
        raise CheckpointError(msg)
    return ModelSpec.from_dict(json.loads(meta[_META_KEY]))
