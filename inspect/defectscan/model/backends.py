"""Inference backends: one small protocol, several engines.

A backend takes a batch of preprocessed tiles ``[N, C, h, w]`` float32 and returns the model's
probabilities ``[N, K, h, w]`` float32: the activation from the model's spec (sigmoid or
softmax) is applied inside the backend, so exported engines carry it in their graph too.

- :class:`TorchBackend`: CUDA when present, else CPU; ``inference_mode``, ``eval()``,
  BatchNorm folded into the convolutions, channels_last, autocast (bf16 on CPUs with native
  bf16 and on CUDA; fp16 on CUDA on request). On CUDA it also compiles the network
  (``torch.compile``, inductor cache under ``var/inductor``) and replays it as a CUDA graph
  for the fixed tile shape, through pinned host buffers and non-blocking copies; a compiled
  model that does not match eager torch on its first batch is dropped for eager, with a
  warning. On the CPU compiling is off by default (see :func:`default_compile`).
- :class:`OpenVINOBackend` and :class:`OnnxRuntimeBackend`: the same network exported; optional
  extras (``pip install defectscan[engines]``). Exported files (``defectscan export``, INT8
  included) load with :meth:`OpenVINOBackend.from_file` / :meth:`OnnxRuntimeBackend.from_file`.
- ``auto`` and the factory :func:`defectscan.model.engines.make_backend` live one floor up, in
  :mod:`defectscan.model.engines`, which chooses among these engines and the exported ones.
"""

from __future__ import annotations

import copy
import logging
import os
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
    "BF16_DISABLE_ENV",
    "COMPILE_PARITY_ATOL",
    "Backend",
    "BackendName",
    "FeatureBackend",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "Precision",
    "TorchBackend",
    "WithActivation",
    "autocast_dtype",
    "bf16_disabled",
    "cpu_model",
    "cpu_supports_bf16",
    "default_compile",
    "fold_batchnorm",
    "resolve_device",
]

log = logging.getLogger(__name__)

#: Set to 1/true/yes to make ``auto`` precision never pick bf16 (training, evaluation and
#: inference alike): a CPU with native bf16 then computes what one without it computes.
BF16_DISABLE_ENV = "DEFECTSCAN_DISABLE_BF16"

BackendName = Literal["auto", "torch", "openvino", "onnxruntime"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
CompileMode = Literal["auto", "off", "on"]

#: Largest probability difference a compiled model may show against eager torch on its first
#: batch (same precision on both sides; reduced-precision rounding included).
COMPILE_PARITY_ATOL = 2e-2


@runtime_checkable
class Backend(Protocol):
    """What the :class:`~defectscan.pipeline.Inspector` needs from an engine."""

    name: str
    device: str

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, K, h, w]`` float32 for tiles ``[N, C, h, w]`` float32."""
        ...


@runtime_checkable
class FeatureBackend(Protocol):
    """An engine that also returns each tile's pooled bottleneck features (drift monitoring)."""

    def infer_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and features ``[N, F]`` from one pass; None: this engine has none."""
        ...


class WithActivation(nn.Module):
    """The network followed by its activation: what every engine runs and exports.

    With ``features``, the forward also returns the global-average pooled bottleneck
    ``[N, 8 * base_width]`` of the same pass (a second output of every exported engine), which
    drift monitoring tracks per camera.
    """

    def __init__(self, model: nn.Module, activation: Activation, *, features: bool = False) -> None:
        super().__init__()
        self.model = model
        self.activation = activation
        self.features = features
        if features and not hasattr(model, "forward_features"):
            msg = f"{type(model).__name__} has no forward_features: no drift features from it"
            raise ConfigError(msg)

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        # fp32 activation: thresholds compare probabilities, which bf16 would round to 2^-8
        logits = logits.float()
        if self.activation == "sigmoid":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)

    def forward(self, x: torch.Tensor) -> Any:
        if not self.features:
            return self._probs(self.model(x))
        logits, bottleneck = self.model.forward_features(x)  # type: ignore[operator]
        return self._probs(logits), bottleneck.float().mean(dim=(2, 3))


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


def bf16_disabled() -> bool:
    """True when ``DEFECTSCAN_DISABLE_BF16`` is set: ``auto`` precision then never picks bf16."""
    return os.environ.get(BF16_DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), which benchmarks and engine choices record."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def cpu_supports_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX), so autocast pays off.

    False when bf16 is disabled (:func:`bf16_disabled`), as on a CPU without it.
    """
    if bf16_disabled():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = fp32, no autocast).

    ``auto``: bf16 on CUDA where supported (else fp16), bf16 on CPUs with native bf16, else
    fp32; with :func:`bf16_disabled`, never bf16. An explicit ``bf16`` is always honoured.
    """
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            if bf16_disabled():
                return torch.float16
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


def default_compile(device: torch.device) -> bool:
    """Whether ``compile="auto"`` compiles on ``device``.

    CUDA: yes (fixed tile shapes; about 2x eager on an H100 per issue 10). CPU: no: inductor's
    CPU code for this UNet was not faster than eager oneDNN where measured, compiling costs
    minutes on a 2-core machine, and OpenVINO is the CPU engine of choice anyway.
    """
    return device.type == "cuda"


def _inductor_cache() -> None:
    """Keep inductor's compiled kernels under ``var/inductor`` so restarts reuse them."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    try:
        from defectscan.config import get_settings

        cache = Path(get_settings().var_dir) / "inductor"
    except Exception:  # settings broken: torch's default cache (/tmp) still works
        return
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache.resolve())


class TorchBackend:
    """PyTorch on CUDA or CPU: eager, or compiled and graph-replayed on CUDA."""

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
        compile: CompileMode = "auto",
        cuda_graphs: bool = True,
    ) -> None:
        self._device = resolve_device(device)
        self.device = str(self._device)
        self.dtype = autocast_dtype(precision, self._device)
        net = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
        self._activation: Activation = activation
        self.module = WithActivation(net, activation).eval().to(self._device)
        self.channels_last = channels_last
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        want = default_compile(self._device) if compile == "auto" else compile == "on"
        self.compiled = False
        self._runner: Any = self.module
        if want:
            _inductor_cache()
            # No CUDA graphs inside compile: cudagraph trees are bound to one thread; we
            # capture our own graph per batch shape below (works from any thread).
            mode = "max-autotune-no-cudagraphs" if self._device.type == "cuda" else "default"
            self._runner = torch.compile(self.module, mode=mode, dynamic=False)
            self.compiled = True
        self._cuda_graphs = cuda_graphs and self._device.type == "cuda"
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, Any]] = {}
        self._pinned: dict[tuple[int, ...], torch.Tensor] = {}
        self._checked = not self.compiled  # parity of the compiled model against eager
        # The forward that also returns pooled features (drift): built on first use, on the
        # same (shared) network, compiled and graph-replayed like the plain one.
        self._feat_module: WithActivation | None = None
        self._feat_runner: Any = None
        self._feat_checked = True

    def _forward(self, runner: Any, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.dtype is not None:
                with torch.autocast(self._device.type, dtype=self.dtype):
                    return runner(x)
            return runner(x)

    def _check_compiled(self, x: torch.Tensor) -> None:
        """First batch: the compiled model must match eager, else eager is used from now on."""
        self._checked = True
        eager = self._forward(self.module, x).float()
        try:
            compiled = self._forward(self._runner, x).float()
        except Exception as exc:  # inductor/triton failures are many and not ours to type
            log.warning("torch.compile failed (%s: %s); using eager torch", type(exc).__name__, exc)
            self._runner, self.compiled, self._cuda_graphs = self.module, False, False
            return
        diff = float((eager - compiled).abs().max())
        if not diff <= COMPILE_PARITY_ATOL:
            log.warning(
                "compiled model differs from eager torch by %.3g (> %.3g) on its first batch: "
                "using eager torch (set compile='off' to skip compiling)",
                diff,
                COMPILE_PARITY_ATOL,
            )
            self._runner, self.compiled, self._cuda_graphs = self.module, False, False

    def _graph(self, x: torch.Tensor, runner: Any = None, tag: int = 0) -> Any:
        """Replay a CUDA graph captured for this input shape (captured on first sight)."""
        runner = self._runner if runner is None else runner
        key = (*tuple(x.shape), tag) if tag else tuple(x.shape)
        entry = self._graphs.get(key)
        if entry is None:
            static_x = torch.empty_like(x)
            static_x.copy_(x)
            stream = torch.cuda.Stream(device=self._device)
            stream.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the capture (autotuning, allocator)
                    self._forward(runner, static_x)
            torch.cuda.current_stream(self._device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_y = self._forward(runner, static_x)
            entry = (graph, static_x, static_y)
            self._graphs[key] = entry
        graph, static_x, static_y = entry
        static_x.copy_(x, non_blocking=True)
        graph.replay()
        return static_y

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self._device.type != "cuda":
            return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        # A pinned staging buffer per shape, reused: a non-blocking copy needs pinned memory,
        # and pinning a fresh buffer per batch costs more than the copy.
        pinned = self._pinned.get(tuple(x.shape))
        if pinned is None:
            pinned = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
            self._pinned[tuple(x.shape)] = pinned
        pinned.copy_(x)
        y = pinned.to(self._device, non_blocking=True)
        return y.contiguous(memory_format=torch.channels_last) if self.channels_last else y

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of tiles."""
        x = self._to_device(batch)
        if not self._checked:
            self._check_compiled(x)
        y = self._graph(x) if self._cuda_graphs else self._forward(self._runner, x)
        # .cpu() synchronises: the pinned input buffer is free again when this returns.
        return y.float().contiguous().cpu().numpy()

    def _feature_forward(self) -> Any:
        """The features forward's runner (built, and compiled where the plain one is, once)."""
        if self._feat_module is None:
            module = WithActivation(self.module.model, self._activation, features=True).eval()
            self._feat_module = module
            self._feat_runner = module
            if self.compiled:
                mode = "max-autotune-no-cudagraphs" if self._device.type == "cuda" else "default"
                self._feat_runner = torch.compile(module, mode=mode, dynamic=False)
                self._feat_checked = False
        return self._feat_runner

    def _check_feature_forward(self, x: torch.Tensor) -> None:
        """First batch: the compiled features forward must match eager, else eager it is."""
        self._feat_checked = True
        assert self._feat_module is not None
        eager = self._forward(self._feat_module, x)
        try:
            compiled = self._forward(self._feat_runner, x)
            diff = float((eager[0].float() - compiled[0].float()).abs().max())
        except Exception as exc:  # inductor/triton failures are many and not ours to type
            log.warning("torch.compile of the features forward failed (%s); eager", exc)
            self._feat_runner = self._feat_module
            return
        if not diff <= COMPILE_PARITY_ATOL:
            log.warning("compiled features forward differs by %.3g: using eager", diff)
            self._feat_runner = self._feat_module

    def infer_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and each tile's pooled bottleneck features, from one forward pass."""
        x = self._to_device(batch)
        runner = self._feature_forward()
        if not self._feat_checked:
            self._check_feature_forward(x)
            runner = self._feat_runner
        if self._cuda_graphs:
            probs, feats = self._graph(x, runner, tag=1)
        else:
            probs, feats = self._forward(runner, x)
        feats_np = feats.float().cpu().numpy()
        return probs.float().contiguous().cpu().numpy(), feats_np


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
        features: bool = False,
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            msg = "OpenVINO is not installed: pip install 'defectscan[engines]'"
            raise ConfigError(msg) from exc
        module = WithActivation(fold_batchnorm(model), activation, features=features).eval()
        example = torch.zeros(1, n_channels, tile, tile)
        with torch.inference_mode(), warnings.catch_warnings():
            # Tracing turns the UNet's int() shape reads into constants: right for fixed tiles.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # OpenVINO traces with torch.jit, which torch now flags as deprecated: not ours to fix
            warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
            ov_model = ov.convert_model(module, example_input=example)
        ov_model.reshape([-1, n_channels, tile, tile])
        self._setup(ov_model, device, precision)

    def _setup(self, ov_model: Any, device: str, precision: str) -> None:
        import openvino as ov

        config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT"}
        if precision == "fp32" or (precision == "auto" and bf16_disabled()):
            config["INFERENCE_PRECISION_HINT"] = "f32"
        elif precision == "bf16":
            config["INFERENCE_PRECISION_HINT"] = "bf16"
        self._compiled = ov.Core().compile_model(ov_model, device, config)
        # The throughput hint splits the cores into streams, and one request runs on one
        # stream: a batch sent through a single request used half of a 2-core CPU. Every
        # batch is split over one request per stream, run at once.
        n = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._requests = [self._compiled.create_infer_request() for _ in range(max(1, n))]
        # A second output is the pooled features (exported with ``features``).
        self.has_features = len(self._compiled.outputs) > 1
        self.device = device.lower()
        self.precision: str = precision

    @classmethod
    def from_file(
        cls, path: str | Path, *, device: str = "CPU", precision: str = "auto"
    ) -> OpenVINOBackend:
        """An exported OpenVINO IR (``model.xml``), e.g. the INT8 one of ``defectscan export``.

        ``precision`` names what the file holds (``int8``) or the hint for fp32 weights.
        """
        try:
            import openvino as ov
        except ImportError as exc:
            msg = "OpenVINO is not installed: pip install 'defectscan[engines]'"
            raise ConfigError(msg) from exc
        path = Path(path)
        if not path.is_file():
            msg = f"OpenVINO model {path} does not exist: export it with `defectscan export`"
            raise ConfigError(msg)
        self = cls.__new__(cls)
        hint = "auto" if precision == "int8" else precision
        self._setup(ov.Core().read_model(str(path)), device, hint)
        self.precision = precision
        return self

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of tiles."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        n = min(len(self._requests), len(x))
        if n <= 1:
            out = self._requests[0].infer({0: x})
            return np.asarray(next(iter(out.values())), dtype=np.float32)
        bounds = np.linspace(0, len(x), n + 1).astype(int)
        requests = self._requests[:n]
        for request, a, b in zip(requests, bounds[:-1], bounds[1:], strict=True):
            request.start_async({0: x[a:b]})
        for request in requests:
            request.wait()
        # concatenate copies: a request's output buffer is reused by its next inference.
        out = np.concatenate([r.get_output_tensor(0).data for r in requests])
        return out.astype(np.float32, copy=False)

    def infer_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and pooled features (None when the model was exported without)."""
        if not self.has_features:
            return self.infer(batch), None
        x = np.ascontiguousarray(batch, dtype=np.float32)
        n = max(1, min(len(self._requests), len(x)))
        bounds = np.linspace(0, len(x), n + 1).astype(int)
        requests = self._requests[:n]
        for request, a, b in zip(requests, bounds[:-1], bounds[1:], strict=True):
            request.start_async({0: x[a:b]})
        for request in requests:
            request.wait()
        probs = np.concatenate([r.get_output_tensor(0).data for r in requests])
        feats = np.concatenate([r.get_output_tensor(1).data for r in requests])
        return probs.astype(np.float32, copy=False), feats.astype(np.float32, copy=False)


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
        features: bool = False,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            msg = "ONNX Runtime is not installed: pip install 'defectscan[engines]'"
            raise ConfigError(msg) from exc
        module = WithActivation(fold_batchnorm(model), activation, features=features).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(onnx_path) if onnx_path else Path(tmp) / "model.onnx"
            export_onnx(module, path, n_channels=n_channels, tile=tile, features=features)
            providers = [
                p
                for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                if p in ort.get_available_providers()
            ]
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(str(path), opts, providers=providers)
        self._input = self._session.get_inputs()[0].name
        self.has_features = len(self._session.get_outputs()) > 1
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.precision = "fp32"

    @classmethod
    def from_file(cls, path: str | Path) -> OnnxRuntimeBackend:
        """An exported ONNX file (``defectscan export --format onnx``)."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            msg = "ONNX Runtime is not installed: pip install 'defectscan[engines]'"
            raise ConfigError(msg) from exc
        path = Path(path)
        if not path.is_file():
            msg = f"ONNX model {path} does not exist: export it with `defectscan export`"
            raise ConfigError(msg)
        providers = [
            p
            for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
            if p in ort.get_available_providers()
        ]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self = cls.__new__(cls)
        self._session = ort.InferenceSession(str(path), opts, providers=providers)
        self._input = self._session.get_inputs()[0].name
        self.has_features = len(self._session.get_outputs()) > 1
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.precision = "fp32"
        return self

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of tiles."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self.has_features:  # only the probabilities: the features output is not computed
            return np.asarray(self._session.run(["probs"], {self._input: x})[0], np.float32)
        return np.asarray(self._session.run(None, {self._input: x})[0], dtype=np.float32)

    def infer_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and pooled features (None when the model was exported without)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        out = self._session.run(None, {self._input: x})
        feats = np.asarray(out[1], np.float32) if len(out) > 1 else None
        return np.asarray(out[0], np.float32), feats


def export_onnx(
    module: nn.Module, path: Path, *, n_channels: int, tile: int, features: bool = False
) -> None:
    """Export ``module`` (already wrapped with its activation) with a dynamic batch axis.

    With ``features`` (the module built with ``features=True``) the file has a second output,
    ``features``: the pooled bottleneck ``[N, F]`` of the same pass.
    """
    example = torch.zeros(1, n_channels, tile, tile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
        # The TorchScript exporter is deliberate (dynamo=False: it handles the traced UNet).
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        _export(module, example, path, features=features)


def _export(module: nn.Module, example: torch.Tensor, path: Path, *, features: bool) -> None:
    names = ["probs", "features"] if features else ["probs"]
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["tiles"],
        output_names=names,
        dynamic_axes={"tiles": {0: "batch"}, **{n: {0: "batch"} for n in names}},
        opset_version=17,
        dynamo=False,
    )
