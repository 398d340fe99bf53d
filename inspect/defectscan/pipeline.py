"""The inspection pipeline: image records in, inspection results out.

``Inspector`` decodes each record, cuts it into overlapping tiles, batches tiles *across*
images, runs the backend, stitches each frame back with a blending window, post-processes the
probabilities into a class map, defects and a verdict. It is backend-agnostic (torch, OpenVINO,
ONNX Runtime) and knows nothing of where records come from or where results go: sources and
the results store sit around it.

The stages overlap (DESIGN §6): frames are read, hashed, decoded and normalised on a pool
of decode threads sized to the cores (OpenCV and numpy release the GIL); batches run on one
inference thread, with the next batch queued behind the one computing; stitched frames are
post-processed on a post-processing thread; and while the caller stores a result (database
writes), the model keeps computing. Every queue is bounded, so a slow consumer holds the
pipeline back instead of letting it read the whole input ahead.

Frames larger than ``stream_pixels`` are never held as full-frame float arrays: tiles are
cut and normalised on demand from the decoded pixels, probabilities are stitched in bands of
rows, each band is thresholded as it is finished and spilled to an unlinked temporary file,
and post-processing reads back only the region where some class fired; a region too large to
hold as floats (over ``CLUSTER_BYTES``: a model firing over most of the frame) is
post-processed band by band instead (:func:`~defectscan.postprocess_bands.postprocess_bands`). A
16k x 16k frame is inspected in about the memory of its decoded pixels and two uint8 frames.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from defectscan.config import LineConfig
from defectscan.errors import DefectscanError
from defectscan.image_stats import image_statistics
from defectscan.imaging import DecodedImage, decode, sha256_bytes, to_model_input
from defectscan.model.backends import Backend, BackendName, FeatureBackend, Precision
from defectscan.model.checkpoint import Checkpoint, load_checkpoint
from defectscan.model.engines import make_backend
from defectscan.model.spec import TTA_MODES, ModelSpec, TestTimeFlips
from defectscan.postprocess import (
    Defect,
    PostprocessConfig,
    Postprocessed,
    class_masks,
    defect_order,
    postprocess,
)
from defectscan.postprocess_bands import postprocess_bands
from defectscan.sources.base import ImageRecord
from defectscan.store.records import DefectRecord, InspectionRecord
from defectscan.tiling import (
    BandStitcher,
    Stitcher,
    TileBatch,
    TileGrid,
    TileReader,
    batch_tiles,
    make_grid,
)

__all__ = ["DEFAULT_STREAM_PIXELS", "ImageRecord", "InspectionResult", "Inspector", "cpu_cores"]

#: Frames with more pixels than this are tiled on demand and stitched band by band.
DEFAULT_STREAM_PIXELS = 24_000_000
#: A large frame's region whose probabilities exceed this is post-processed band by band.
CLUSTER_BYTES = 256 << 20

log = logging.getLogger(__name__)


@dataclass
class InspectionResult:
    """What the pipeline found for one record (status ``rejected`` when it could not look)."""

    record: ImageRecord
    sha256: str
    model_version: str
    status: Literal["ok", "rejected"]
    verdict: Literal["pass", "fail"] | None = None
    defects: list[Defect] = field(default_factory=list)
    class_map: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    channels: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    error_kind: str | None = None
    error_message: str | None = None
    received_at: datetime | None = None
    finished_at: datetime | None = None
    image: DecodedImage | None = field(default=None, repr=False)
    tiles: int = 0
    #: Highest probability of each defect class anywhere in the frame.
    peak_scores: dict[str, float] = field(default_factory=dict)
    #: How far the closest class peak is from its decision threshold (small = a close call).
    decision_margin: float | None = None
    #: Drift inputs (``Inspector(drift_features=True)``): the pooled bottleneck features of the
    #: same forward pass, averaged over the frame's tiles, and the thumbnail's statistics.
    features: np.ndarray | None = field(default=None, repr=False)
    image_stats: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (the CLI's ``--json`` object, without output paths)."""
        d: dict[str, Any] = {
            "path": str(self.record.path) if self.record.path else self.record.uri,
            "sha256": self.sha256,
            "model_version": self.model_version,
            "status": self.status,
            "verdict": self.verdict,
            "width": self.width,
            "height": self.height,
            "defects": [x.to_dict() for x in self.defects],
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }
        if self.status == "rejected":
            d["error"] = {"kind": self.error_kind, "message": self.error_message}
        return d

    def to_store_record(
        self, *, mask_path: str | None = None, overlay_path: str | None = None
    ) -> InspectionRecord:
        """The row the results store writes for this result."""
        return InspectionRecord(
            sha256=self.sha256,
            uri=self.record.uri,
            model_version=self.model_version,
            status=self.status,
            verdict=self.verdict,
            camera=self.record.camera,
            line=self.record.line,
            width=self.width,
            height=self.height,
            channels=self.channels,
            captured_at=self.record.captured_at,
            received_at=self.received_at,
            finished_at=self.finished_at,
            timings_ms=dict(self.timings_ms),
            error_kind=self.error_kind,
            error_message=self.error_message,
            mask_path=mask_path,
            overlay_path=overlay_path,
            source=self.record.source,
            source_id=self.record.id,
            defects=[
                DefectRecord(
                    class_index=x.class_index,
                    class_name=x.class_name,
                    area=x.area,
                    bbox=x.bbox,
                    centroid=x.centroid,
                    perimeter=x.perimeter,
                    mean_score=x.mean_score,
                    max_score=x.max_score,
                    polygon=x.polygon,
                )
                for x in self.defects
            ],
        )


@dataclass
class _Job:
    """One decoded frame on its way through tiling, inference and stitching."""

    result: InspectionResult
    tensor: np.ndarray | TileReader
    grid: TileGrid
    stitcher: Stitcher | BandStitcher
    started: float
    infer_s: float = 0.0
    feat_sum: np.ndarray | None = None
    feat_n: int = 0
    bands: _BandPost | None = None
    post: Future[InspectionResult] | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def infer_with_flips(backend: Backend, tiles: np.ndarray, tta: TestTimeFlips) -> np.ndarray:
    """The backend's probabilities, averaged over the tiles' mirror images for ``tta``.

    Each view is one call at the batch's own size (engines with fixed shapes see what they
    were built for), and its probabilities are mirrored back before they are averaged; one
    extra view costs one more pass of the model.
    """
    probs = backend.infer(tiles)
    if tta == "none":
        return probs
    total = probs.astype(np.float32, copy=True)
    axes = (-1,) if tta == "h" else (-1, -2)
    for axis in axes:
        view = np.ascontiguousarray(np.flip(tiles, axis))
        total += np.flip(backend.infer(view), axis)
    total /= 1 + len(axes)
    return total


def _add_flips(
    backend: Backend, tiles: np.ndarray, tta: TestTimeFlips, probs: np.ndarray
) -> np.ndarray:
    """:func:`infer_with_flips` given the plain view's probabilities already computed."""
    total = probs.astype(np.float32, copy=True)
    axes = (-1,) if tta == "h" else (-1, -2)
    for axis in axes:
        view = np.ascontiguousarray(np.flip(tiles, axis))
        total += np.flip(backend.infer(view), axis)
    total /= 1 + len(axes)
    return total


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


class _LazyTiles:
    """A large frame's tiles, cut from the decoded pixels and normalised one at a time."""

    def __init__(self, image: DecodedImage, spec: ModelSpec) -> None:
        self._image = image
        self._spec = spec
        self.shape = (spec.n_channels, image.height, image.width)

    def read_tile(self, grid: TileGrid, index: int) -> np.ndarray:
        """Tile ``index`` normalised like the whole frame would be (normalising is per pixel)."""
        y, x = grid.position(index)
        t = grid.tile
        crop = np.ascontiguousarray(self._image.pixels[y : y + t, x : x + t])
        spec = self._spec
        tile = to_model_input(
            dataclasses.replace(self._image, pixels=crop),
            n_channels=spec.n_channels,
            channel_order=spec.channel_order,
            mean=spec.mean,
            std=spec.std,
        )
        pad_y, pad_x = t - tile.shape[1], t - tile.shape[2]
        if pad_y or pad_x:
            tile = np.pad(tile, ((0, 0), (0, pad_y), (0, pad_x)), mode="symmetric")
        return tile


class _BandPost:
    """Per-band work for a large frame: peaks, where classes fire, probabilities spilled.

    Bands are written row-major (``[rows, K, W]`` float32) to an unlinked temporary file: the
    page cache holds them, not this process. For every row the first and last column over a
    threshold are kept (8 bytes a row). At the end, rows with such pixels are grouped into
    clusters separated by more background than post-processing's margin can bridge, and each
    cluster's rows and columns alone are read back and post-processed. That gives exactly what
    post-processing the whole frame gives (its work per class is confined to the pixels' bounding
    box plus that margin), in the memory of the largest cluster.
    """

    def __init__(self, grid: TileGrid, channels: int, cfg: PostprocessConfig) -> None:
        self.grid = grid
        self.channels = channels
        self.cfg = cfg
        self.peaks = np.full(channels, -np.inf, dtype=np.float64)
        self._first = np.full(grid.height, -1, dtype=np.int32)  # first column over threshold
        self._last = np.full(grid.height, -1, dtype=np.int32)
        # Closed by finish() or close(): it lives as long as the frame, not a block.
        self._file = tempfile.TemporaryFile(prefix="defectscan-bands-")  # noqa: SIM115

    def add(self, y0: int, band: np.ndarray) -> None:
        """Take the finished rows ``[y0, y0 + rows)`` of the frame's probabilities."""
        np.maximum(self.peaks, band.reshape(self.channels, -1).max(axis=1), out=self.peaks)
        any_mask: np.ndarray | None = None
        for mask in class_masks(band, self.cfg):
            any_mask = mask if any_mask is None else any_mask | mask
        if any_mask is not None:
            hit = any_mask.astype(bool)
            rows = np.flatnonzero(hit.any(axis=1))
            if rows.size:
                sub = hit[rows]
                self._first[y0 + rows] = sub.argmax(axis=1)
                self._last[y0 + rows] = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
        self._file.seek(y0 * self.channels * self.grid.width * 4)
        self._file.write(np.ascontiguousarray(band.transpose(1, 0, 2)).tobytes())

    def peak_array(self) -> np.ndarray:
        """Per-channel maxima shaped like a one-pixel frame (for :func:`_peaks`)."""
        return self.peaks.astype(np.float32).reshape(self.channels, 1, 1)

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        k, w = self.channels, self.grid.width
        crop = np.empty((k, y1 - y0, x1 - x0), dtype=np.float32)
        step = max(1, (64 << 20) // (k * w * 4))  # read back in chunks of about 64 MiB
        for a in range(y0, y1, step):
            b = min(y1, a + step)
            self._file.seek(a * k * w * 4)
            rows = np.fromfile(self._file, dtype=np.float32, count=(b - a) * k * w)
            crop[:, a - y0 : b - y0] = rows.reshape(b - a, k, w)[:, :, x0:x1].transpose(1, 0, 2)
        return crop

    def _read_rows(self, a: int, b: int, *, y0: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``[a, b)`` of the region that starts at row ``y0``, columns ``[x0, x1)``."""
        return self._read(y0 + a, y0 + b, x0, x1)

    def clusters(self) -> list[tuple[int, int, int, int]]:
        """``(y0, y1, x0, x1)`` of each independent region, margin included."""
        h, w = self.grid.height, self.grid.width
        # The margin post-processing itself grows each class's region by.
        margin = self.cfg.margin
        rows = np.flatnonzero(self._first >= 0)
        if rows.size == 0:
            return []
        # Two groups of rows are independent when their margins cannot touch.
        cuts = np.flatnonzero(np.diff(rows) > 2 * margin + 1) + 1
        out = []
        for group in np.split(rows, cuts):
            x0 = int(self._first[group].min())
            x1 = int(self._last[group].max()) + 1
            out.append(
                (
                    max(0, int(group[0]) - margin),
                    min(h, int(group[-1]) + 1 + margin),
                    max(0, x0 - margin),
                    min(w, x1 + margin),
                )
            )
        return out

    def finish(self) -> Postprocessed:
        """Class map, defects and verdict of the whole frame."""
        class_map = np.zeros((self.grid.height, self.grid.width), dtype=np.uint8)
        defects: list[Defect] = []
        verdict: Literal["pass", "fail"] = "pass"
        try:
            for y0, y1, x0, x1 in self.clusters():
                if self.channels * (y1 - y0) * (x1 - x0) * 4 > CLUSTER_BYTES:
                    # A region too large to hold as floats (a model firing over most of the
                    # frame): band by band, into the class map directly.
                    post = postprocess_bands(
                        functools.partial(self._read_rows, y0=y0, x0=x0, x1=x1),
                        self.cfg,
                        class_map[y0:y1, x0:x1],
                    )
                else:
                    post = postprocess(self._read(y0, y1, x0, x1), self.cfg)
                    class_map[y0:y1, x0:x1] = post.class_map
                if post.verdict == "fail":
                    verdict = "fail"
                defects += [
                    dataclasses.replace(
                        d,
                        bbox=(d.bbox[0] + x0, d.bbox[1] + y0, d.bbox[2], d.bbox[3]),
                        centroid=(d.centroid[0] + x0, d.centroid[1] + y0),
                        polygon=[[p[0] + x0, p[1] + y0] for p in d.polygon],
                    )
                    for d in post.defects
                ]
        finally:
            self._file.close()
        defects.sort(key=defect_order)  # the order post-processing gives a whole frame
        return Postprocessed(class_map=class_map, defects=defects, verdict=verdict)

    def close(self) -> None:
        """Drop the spilled bands (a frame abandoned half way)."""
        self._file.close()


def _peaks(probs: np.ndarray, cfg: PostprocessConfig) -> tuple[dict[str, float], float | None]:
    """Per-class peak probability and the smallest distance of a peak to its threshold."""
    offset = 1 if cfg.activation == "softmax" else 0  # softmax channel 0 is background
    flat = probs.reshape(probs.shape[0], -1)
    peaks = flat[offset:].max(axis=1) if flat.shape[1] else np.zeros(len(cfg.class_names))
    scores = {name: float(p) for name, p in zip(cfg.class_names, peaks, strict=True)}
    if cfg.activation == "sigmoid":
        limits = [float(t) for t in cfg.thresholds]
    else:
        # argmax wins at 0.5 for sure; below it a class can still win against a split rest.
        limits = [max(cfg.min_confidence, 0.5)] * len(cfg.class_names)
    margin = min((abs(p - t) for p, t in zip(scores.values(), limits, strict=True)), default=None)
    return scores, margin


class Inspector:
    """Inspect image records with one model; results come back in input order."""

    def __init__(
        self,
        backend: Backend,
        spec: ModelSpec,
        *,
        model_version: str,
        tile_size: int | None = None,
        overlap: int | None = None,
        batch_size: int = 8,
        max_pixels: int = 80_000_000,
        lines: dict[str, LineConfig] | None = None,
        prefetch: int | None = None,
        checkpoint: Checkpoint | None = None,
        decode_workers: int | None = None,
        stream_pixels: int = DEFAULT_STREAM_PIXELS,
        tta: TestTimeFlips | None = None,
        drift_features: bool = False,
    ) -> None:
        self.backend = backend
        # Drift monitoring: features from the same pass where the engine has them, and the
        # thumbnail's statistics on the decode thread.
        self.drift_features = drift_features
        self.spec = spec
        # Test-time flips: the checkpoint's own setting unless one is given.
        self.tta: TestTimeFlips = spec.tta if tta is None else tta
        if self.tta not in TTA_MODES:
            msg = f"tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}"
            raise DefectscanError(msg)
        self.model_version = model_version
        self.checkpoint = checkpoint
        self.tile = tile_size or spec.tile_size
        self.overlap = spec.tile_overlap if overlap is None else overlap
        if not 0 <= self.overlap < self.tile:
            msg = f"overlap must be in [0, tile size {self.tile}), got {self.overlap}"
            raise DefectscanError(msg)
        if batch_size < 1:
            msg = f"batch size must be >= 1, got {batch_size}"
            raise DefectscanError(msg)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.lines = dict(lines or {})
        if decode_workers is not None and decode_workers < 1:
            msg = f"decode_workers must be >= 1 (or None: sized to the cores), got {decode_workers}"
            raise DefectscanError(msg)
        self.decode_workers = decode_workers or self._default_decode_workers()
        # Frames decoded ahead of the one being tiled: enough to keep every decoder busy.
        self.prefetch = max(0, 2 * self.decode_workers if prefetch is None else prefetch)
        self.stream_pixels = stream_pixels
        self._post_cfg: dict[str | None, PostprocessConfig] = {}
        self._post_lock = threading.Lock()
        self._infer_pool: ThreadPoolExecutor | None = None
        self.postprocess_config(None)  # validate the spec's defaults now, not on the first frame

    def _default_decode_workers(self) -> int:
        cores = cpu_cores()
        if str(getattr(self.backend, "device", "cpu")).startswith("cuda"):
            # The GPU does the model: every core but one (which feeds the GPU) decodes.
            return max(1, min(16, cores - 1))
        # The CPU engine uses every core itself: decoders only fill its short gaps.
        return max(1, min(4, cores // 2))

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | Checkpoint,
        *,
        backend: BackendName = "torch",
        device: str = "auto",
        precision: Precision = "auto",
        tile_size: int | None = None,
        cached_only: bool = False,
        **kwargs: Any,
    ) -> Inspector:
        """Load a checkpoint and build its backend.

        ``cached_only`` (``auto`` on the CPU): no engine is exported now, so the first image
        is not held back; see :func:`~defectscan.model.engines.make_backend`.
        """
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        tile = tile_size or ckpt.spec.tile_size
        engine = make_backend(
            backend,
            ckpt.model,
            ckpt.spec.activation,
            n_channels=ckpt.spec.n_channels,
            tile=tile,
            device=device,
            precision=precision,
            checkpoint_sha256=ckpt.sha256,
            spec=ckpt.spec,
            cached_only=cached_only,
        )
        return cls(
            engine,
            ckpt.spec,
            model_version=ckpt.version,
            tile_size=tile,
            checkpoint=ckpt,
            **kwargs,
        )

    def model_registration(self) -> dict[str, Any]:
        """Arguments for registering this model version in the results store."""
        if self.checkpoint is not None:
            return self.checkpoint.registration()
        return {
            "version": self.model_version,
            "sha256": sha256_bytes(self.model_version.encode()),
            "name": self.spec.name,
            "checkpoint_path": None,
            "spec": self.spec.to_dict(),
            "activation": self.spec.activation,
            "class_names": list(self.spec.class_names),
        }

    def postprocess_config(self, line: str | None) -> PostprocessConfig:
        """The post-processing rules for a production line (the model's defaults if unknown)."""
        with self._post_lock:  # called from the decode and post-processing threads
            cfg = self._post_cfg.get(line)
            if cfg is None:
                line_cfg = self.lines.get(line) if line else None
                cfg = PostprocessConfig.from_spec(self.spec, line_cfg)
                self._post_cfg[line] = cfg
            return cfg

    def set_line_config(self, line: str, config: LineConfig) -> None:
        """Replace a line's rules (the console's threshold rules); frames after this use them."""
        PostprocessConfig.from_spec(self.spec, config)  # refuse rules the model cannot take
        with self._post_lock:
            self.lines[line] = config
            self._post_cfg.pop(line, None)

    def inspect_one(self, record: ImageRecord, *, keep_image: bool = False) -> InspectionResult:
        """Inspect a single record."""
        return next(iter(self.inspect([record], keep_images=keep_image)))

    def inspect(
        self, records: Iterable[ImageRecord], *, keep_images: bool = False
    ) -> Iterator[InspectionResult]:
        """Inspect ``records`` lazily, batching tiles across frames; yields in input order.

        While the caller handles a result, the model computes the next batch (on the
        inference thread) and finished frames are post-processed (on the post thread).
        """
        # Frames in input order; a rejected record sits here as its finished result so that
        # results keep input order.
        active: deque[_Job | InspectionResult] = deque()
        jobs: dict[int, _Job] = {}  # batch_tiles' frame index -> frame still receiving tiles
        frame_index = itertools.count()
        inflight: deque[tuple[TileBatch, Future[tuple[np.ndarray, float, np.ndarray | None]]]] = (
            deque()
        )
        infer = self._inference_pool()

        def frames() -> Iterator[tuple[np.ndarray | TileReader, TileGrid]]:
            for item in self._prepared(records, keep_images):
                active.append(item)
                if isinstance(item, _Job):
                    jobs[next(frame_index)] = item
                    yield item.tensor, item.grid

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="defectscan-post") as post:
            try:
                for batch in batch_tiles(frames(), self.batch_size):
                    inflight.append((batch, infer.submit(self._infer, batch)))
                    # One batch computing and one queued behind it keep the engine busy.
                    while len(inflight) > 1:
                        done, fut = inflight.popleft()
                        probs, seconds, feats = fut.result()
                        self._stitch(done, probs, seconds, jobs, post, feats)
                    yield from self._drain(active, block=len(active) > 2 * self.prefetch + 4)
                while inflight:
                    done, fut = inflight.popleft()
                    probs, seconds, feats = fut.result()
                    self._stitch(done, probs, seconds, jobs, post, feats)
                yield from self._drain(active, block=True)
            finally:
                for _, fut in inflight:
                    fut.cancel()
                for item in active:
                    if isinstance(item, _Job) and item.bands is not None and item.post is None:
                        item.bands.close()

    def close(self) -> None:
        """Stop this inspector's inference thread (a swapped-out model must not keep one)."""
        pool, self._infer_pool = self._infer_pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _inference_pool(self) -> ThreadPoolExecutor:
        """The one thread that runs this inspector's engine (CUDA graphs stay on one thread)."""
        if self._infer_pool is None:
            self._infer_pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="defectscan-infer"
            )
        return self._infer_pool

    def _infer(self, batch: TileBatch) -> tuple[np.ndarray, float, np.ndarray | None]:
        t0 = time.perf_counter()
        feats: np.ndarray | None = None
        if self.drift_features and isinstance(self.backend, FeatureBackend):
            # One pass gives both; test-time flips (if any) add their views to the first.
            probs, feats = self.backend.infer_features(batch.tiles)
            if self.tta != "none":
                probs = _add_flips(self.backend, batch.tiles, self.tta, probs)
        else:
            probs = infer_with_flips(self.backend, batch.tiles, self.tta)
        return probs, time.perf_counter() - t0, feats

    def _prepared(
        self, records: Iterable[ImageRecord], keep_images: bool
    ) -> Iterator[_Job | InspectionResult]:
        """Decode ahead on the decode pool, ``prefetch`` records beyond the one in use."""
        with ThreadPoolExecutor(
            max_workers=self.decode_workers, thread_name_prefix="defectscan-decode"
        ) as pool:
            pending: deque[Future[_Job | InspectionResult]] = deque()
            source = iter(records)
            try:
                while True:
                    while len(pending) <= self.prefetch:
                        rec = next(source, None)
                        if rec is None:
                            break
                        pending.append(pool.submit(self._prepare, rec, keep_images))
                    if not pending:
                        return
                    yield pending.popleft().result()
            finally:
                for fut in pending:
                    fut.cancel()

    def _drain(
        self, active: deque[_Job | InspectionResult], *, block: bool
    ) -> Iterator[InspectionResult]:
        """Finished results at the head of ``active``; ``block`` waits for post-processing."""
        while active:
            head = active[0]
            if isinstance(head, InspectionResult):
                active.popleft()
                yield head
                continue
            if head.post is None or not (block or head.post.done()):
                return
            active.popleft()
            yield head.post.result()

    def _prepare(self, record: ImageRecord, keep_image: bool) -> _Job | InspectionResult:
        """Read, hash, decode and normalise one record (runs on the decode thread)."""
        started = time.perf_counter()
        received = _now()
        sha = ""
        try:
            data = record.read()
            if data:
                sha = sha256_bytes(data)
            image = decode(data, max_pixels=self.max_pixels)
            del data  # a large frame's encoded bytes need not outlive its decoding
            # Large frames: no full-frame float tensor; tiles are normalised on demand.
            tensor = (
                None
                if image.height * image.width > self.stream_pixels
                else to_model_input(
                    image,
                    n_channels=self.spec.n_channels,
                    channel_order=self.spec.channel_order,
                    mean=self.spec.mean,
                    std=self.spec.std,
                )
            )
        except DefectscanError as exc:
            log.warning("rejected %s: %s", record.uri, exc)
            return InspectionResult(
                record=record,
                # No bytes to hash (empty or unreadable): key the row on the source instead, so
                # that distinct empty files stay distinct rows and a retry stays one row.
                sha256=sha or sha256_bytes(f"no-bytes:{record.uri}".encode()),
                model_version=self.model_version,
                status="rejected",
                error_kind=exc.kind,
                error_message=str(exc),
                received_at=received,
                finished_at=_now(),
                timings_ms={"total": (time.perf_counter() - started) * 1e3},
            )
        grid = make_grid(image.height, image.width, tile=self.tile, overlap=self.overlap)
        n_out = self.spec.n_classes
        result = InspectionResult(
            record=record,
            sha256=sha,
            model_version=self.model_version,
            status="ok",
            width=image.width,
            height=image.height,
            channels=image.channels,
            received_at=received,
            image=image if keep_image else None,
            timings_ms={"decode": (time.perf_counter() - started) * 1e3},
            image_stats=image_statistics(image.pixels) if self.drift_features else None,
        )
        if tensor is None:
            bands = _BandPost(grid, n_out, self.postprocess_config(record.line))
            stitcher = BandStitcher(grid, n_out, bands.add)
            lazy = _LazyTiles(image, self.spec)
            return _Job(result, lazy, grid, stitcher, started, bands=bands)
        return _Job(result, tensor, grid, Stitcher(grid, n_out), started)

    def _stitch(
        self,
        batch: TileBatch,
        probs: np.ndarray,
        seconds: float,
        jobs: dict[int, _Job],
        post: ThreadPoolExecutor,
        feats: np.ndarray | None = None,
    ) -> None:
        """Blend a batch's outputs into their frames; post-process frames that are complete."""
        share = seconds / len(batch.keys)
        if probs.shape[:2] != (len(batch.keys), self.spec.n_classes):
            msg = (
                f"backend {self.backend.name} returned {probs.shape}, expected "
                f"({len(batch.keys)}, {self.spec.n_classes}, {self.tile}, {self.tile})"
            )
            raise DefectscanError(msg)
        for i, ((frame, index), p) in enumerate(zip(batch.keys, probs, strict=True)):
            job = jobs[frame]
            job.stitcher.add(index, p)
            job.infer_s += share
            if feats is not None:  # a frame's features: the mean over its tiles
                f = feats[i].astype(np.float64)
                job.feat_sum = f.copy() if job.feat_sum is None else job.feat_sum + f
                job.feat_n += 1
            if job.stitcher.done:
                del jobs[frame]  # a long-running monitor must not keep finished frames
                job.post = post.submit(self._finish, job)

    def _finish(self, job: _Job) -> InspectionResult:
        """Post-process one stitched frame into its result (runs on the post thread)."""
        t0 = time.perf_counter()
        result = job.result
        cfg = self.postprocess_config(result.record.line)
        job.tensor = np.empty(0, np.float32)  # free the frame before post-processing
        if job.bands is not None:
            post = job.bands.finish()
            peaks_from = job.bands.peak_array()
        else:
            probs = job.stitcher.result()
            post = postprocess(probs, cfg)
            peaks_from = probs
        result.tiles = job.grid.n_tiles
        if job.feat_sum is not None and job.feat_n:
            result.features = (job.feat_sum / job.feat_n).astype(np.float32)
        result.peak_scores, result.decision_margin = _peaks(peaks_from, cfg)
        result.class_map = post.class_map
        result.defects = post.defects
        result.verdict = post.verdict
        result.finished_at = _now()
        now = time.perf_counter()
        result.timings_ms.update(
            {
                "infer": job.infer_s * 1e3,
                "post": (now - t0) * 1e3,
                "total": (now - job.started) * 1e3,
            }
        )
        return result
