"""Inference backends: one small protocol, several engines.

A backend takes a batch of preprocessed tiles ``[N, C, h, w]`` float32 and returns the model's
probabilities ``[N, K, h, w]`` float32: the activation from the model's spec (sigmoid or
softmax) is applied inside the backend, so exported engines carry it in their graph too.

- :class:`TorchBackend`: CUDA when present, else CPU; ``inference_mode``, ``eval()``,
  BatchNorm folded into the convolutions, channels_last, autocast (bf16 on CPUs with native
  bf16 and on CUDA; fp16 on CUDA on request).
- :class:`OpenVINOBackend` and :class:`OnnxRuntimeBackend`: the same network exported; optional
  extras (``pip install defectscan[engines]``).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from defectscan.errors import ConfigError
from defectscan.model.spec import Activation

__all__ = [
    "Backend",
    "BackendName",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "Precision",
    "TorchBackend",
    "WithActivation",
    "autocast_dtype",
    "cpu_supports_bf16",
    "fold_batchnorm",
    "make_backend",
    "resolve_device",
]

log = logging.getLogger(__name__)

BackendName = Literal["auto", "torch", "openvino", "onnxruntime"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


@runtime_checkable
class Backend(Protocol):
    """What the :class:`~defectscan.pipeline.Inspector` needs from an engine."""

    name: str
    device: str

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, K, h, w]`` float32 for tiles ``[N, C, h, w]`` float32."""
        ...


class WithActivation(nn.Module):
    """The network followed by its activation: what every engine runs and exports."""

    def __init__(self, model: nn.Module, activation: Activation) -> None:
        super().__init__()
        self.model = model
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 activation: thresholds compare probabilities, which bf16 would round to 2^-8
        logits = self.model(x).float()
        if self.activation == "sigmoid":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else CPU; explicit names are checked, not silently changed."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        msg = f"unknown device {device!r}: use auto, cpu, cuda or cuda:N"
        raise ConfigError(msg) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        msg = f"device {device!r} requested but this torch has no usable CUDA; use --device cpu"
        raise ConfigError(msg)
    return dev


def cpu_supports_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX), so autocast pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = fp32, no autocast)."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    if precision == "fp16":
        if device.type != "cuda":
            msg = "fp16 autocast is for CUDA; on the CPU use bf16 or fp32"
            raise ConfigError(msg)
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    msg = f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16"
    raise ConfigError(msg)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval) with each Conv2d -> BatchNorm2d pair folded into one conv.

    Same outputs up to float rounding, one fewer pass over every activation map.
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.children())
        for i in range(len(children) - 1):
            conv, bn = children[i], children[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                module[i] = fused
                module[i + 1] = nn.Identity()
    return model


class TorchBackend:
    """Eager PyTorch on CUDA or CPU."""

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        activation: Activation,
        *,
        device: str = "auto",
        precision: Precision = "auto",
        channels_last: bool = True,
        fold_bn: bool = True,
    ) -> None:
        self._device = resolve_device(device)
        self.device = str(self._device)
        self.dtype = autocast_dtype(precision, self._device)
        net = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
        self.module = WithActivation(net, activation).eval().to(self._device)
        self.channels_last = channels_last
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of tiles."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self._device.type == "cuda":
            x = x.pin_memory().to(self._device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.dtype is not None:
                with torch.autocast(self._device.type, dtype=self.dtype):
                    y = self.module(x)
            else:
                y = self.module(x)
            return y.float().contiguous().cpu().numpy()


class OpenVINOBackend:
    """The network converted to OpenVINO (CPU: bf16 inference by default where supported)."""

    name = "openvino"

    def __init__(
        self,
        model: nn.Module,
        activation: Activation,
        *,
        n_channels: int,
        tile: int,
        device: str = "CPU",
        precision: Precision = "auto",
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            msg = "OpenVINO is not installed: pip install 'defectscan[engines]'"
            raise ConfigError(msg) from exc
        module = WithActivation(fold_batchnorm(model), activation).eval()
        example = torch.zeros(1, n_channels, tile, tile)
        with torch.inference_mode(), warnings.catch_warnings():
            # Tracing turns the UNet's int() shape reads into constants: right for fixed tiles.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # OpenVINO traces with torch.jit, which torch now flags as deprecated: not ours to fix
            warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
            ov_model = ov.convert_model(module, example_input=example)
        ov_model.reshape([-1, n_channels, tile, tile])
        config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT"}
        if precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        elif precision == "bf16":
            config["INFERENCE_PRECISION_HINT"] = "bf16"
        self._compiled = ov.Core().compile_model(ov_model, device, config)
        self._request = self._compiled.create_infer_request()
        self.device = device.lower()
        self.precision = precision

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of tiles."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        out = self._request.infer({0: x})
        return np.asarray(next(iter(out.values())), dtype=np.float32)


class OnnxRuntimeBackend:
    """The network exported to ONNX and run by ONNX Runtime (CPU, or CUDA if its build has it)."""

    name = "onnxruntime"

    def __init__(
        self,
        model: nn.Module,
        activation: Activation,
        *,
        n_channels: int,
        tile: int,
        onnx_path: str | Path | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            msg = "ONNX Runtime is not installed: pip install 'defectscan[engines]'"
            raise ConfigError(msg) from exc
        module = WithActivation(fold_batchnorm(model), activation).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(onnx_path) if onnx_path else Path(tmp) / "model.onnx"
            export_onnx(module, path, n_channels=n_channels, tile=tile)
            providers = [
                p
                for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                if p in ort.get_available_providers()
            ]
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(str(path), opts, providers=providers)
        self._input = self._session.get_inputs()[0].name
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.precision = "fp32"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of tiles."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return np.asarray(self._session.run(None, {self._input: x})[0], dtype=np.float32)


def export_onnx(module: nn.Module, path: Path, *, n_channels: int, tile: int) -> None:
    """Export ``module`` (already wrapped with its activation) with a dynamic batch axis."""
    example = torch.zeros(1, n_channels, tile, tile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
        _export(module, example, path)


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["tiles"],
        output_names=["probs"],
        dynamic_axes={"tiles": {0: "batch"}, "probs": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def make_backend(
    name: BackendName,
    model: nn.Module,
    activation: Activation,
    *,
    n_channels: int,
    tile: int,
    device: str = "auto",
    precision: Precision = "auto",
) -> Backend:
    """Build the named engine; ``auto`` is torch on CUDA, OpenVINO on CPU where installed."""
    if name == "auto":
        if resolve_device(device).type == "cuda":
            name = "torch"
        else:
            try:
                import openvino  # noqa: F401
            except ImportError:
                name = "torch"
            else:
                name = "openvino"
    if name == "torch":
        return TorchBackend(model, activation, device=device, precision=precision)
    if name == "openvino":
        if device not in ("auto", "cpu"):
            msg = f"the OpenVINO backend runs on the CPU here, not {device!r}"
            raise ConfigError(msg)
        return OpenVINOBackend(
            model, activation, n_channels=n_channels, tile=tile, precision=precision
        )
    if name == "onnxruntime":
        return OnnxRuntimeBackend(model, activation, n_channels=n_channels, tile=tile)
    msg = f"unknown backend {name!r}: use auto, torch, openvino or onnxruntime"
    raise ConfigError(msg)
