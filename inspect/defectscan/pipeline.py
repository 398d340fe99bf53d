"""The inspection pipeline: image records in, inspection results out.

``Inspector`` decodes each record, cuts it into overlapping tiles, batches tiles *across*
images, runs the backend, stitches each frame back with a blending window, post-processes the
probabilities into a class map, defects and a verdict. It is backend-agnostic (torch, OpenVINO,
ONNX Runtime) and knows nothing of where records come from or where results go: sources and
the results store sit around it.

Decoding of the next frames runs on a worker thread while the current batch is inferred
(OpenCV and the numpy normalisation release the GIL), so host work overlaps the model.
"""

from __future__ import annotations

import itertools
import logging
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
from defectscan.errors import DefectscanError, ImageDecodeError
from defectscan.imaging import DecodedImage, decode, sha256_bytes, to_model_input
from defectscan.model.backends import Backend, BackendName, Precision, make_backend
from defectscan.model.checkpoint import Checkpoint, load_checkpoint
from defectscan.model.spec import ModelSpec
from defectscan.postprocess import Defect, PostprocessConfig, postprocess
from defectscan.store.records import DefectRecord, InspectionRecord
from defectscan.tiling import Stitcher, TileBatch, TileGrid, batch_tiles, make_grid

__all__ = ["ImageRecord", "InspectionResult", "Inspector"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRecord:
    """One image to inspect, as a source delivers it: bytes in memory or a file path."""

    id: str
    uri: str
    data: bytes | None = None
    path: Path | None = None
    camera: str | None = None
    line: str | None = None
    captured_at: datetime | None = None
    source: str | None = None

    @classmethod
    def from_path(
        cls, path: str | Path, *, camera: str | None = None, line: str | None = None
    ) -> ImageRecord:
        """A record that reads its bytes from ``path`` when inspected."""
        p = Path(path)
        return cls(id=str(p), uri=p.resolve().as_uri(), path=p, camera=camera, line=line)

    def read(self) -> bytes:
        """The image bytes (read from disk for path records)."""
        if self.data is not None:
            return self.data
        if self.path is None:
            msg = f"record {self.id} has neither bytes nor a path"
            raise ImageDecodeError(msg)
        try:
            return self.path.read_bytes()
        except OSError as exc:
            msg = f"cannot read {self.path}: {exc.strerror or exc}"
            raise ImageDecodeError(msg) from exc


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
    tensor: np.ndarray
    grid: TileGrid
    stitcher: Stitcher
    started: float
    infer_s: float = 0.0


def _now() -> datetime:
    return datetime.now(UTC)


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
        prefetch: int = 2,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.backend = backend
        self.spec = spec
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
        self.prefetch = max(0, prefetch)
        self._post_cfg: dict[str | None, PostprocessConfig] = {}
        self.postprocess_config(None)  # validate the spec's defaults now, not on the first frame

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | Checkpoint,
        *,
        backend: BackendName = "torch",
        device: str = "auto",
        precision: Precision = "auto",
        tile_size: int | None = None,
        **kwargs: Any,
    ) -> Inspector:
        """Load a checkpoint and build its backend."""
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
        ckpt = self.checkpoint
        return {
            "version": self.model_version,
            "sha256": ckpt.sha256 if ckpt else sha256_bytes(self.model_version.encode()),
            "name": self.spec.name,
            "checkpoint_path": str(ckpt.path) if ckpt and ckpt.path else None,
            "spec": self.spec.to_dict(),
            "activation": self.spec.activation,
            "class_names": list(self.spec.class_names),
        }

    def postprocess_config(self, line: str | None) -> PostprocessConfig:
        """The post-processing rules for a production line (the model's defaults if unknown)."""
        cfg = self._post_cfg.get(line)
        if cfg is None:
            cfg = PostprocessConfig.from_spec(self.spec, self.lines.get(line) if line else None)
            self._post_cfg[line] = cfg
        return cfg

    def inspect_one(self, record: ImageRecord, *, keep_image: bool = False) -> InspectionResult:
        """Inspect a single record."""
        return next(iter(self.inspect([record], keep_images=keep_image)))

    def inspect(
        self, records: Iterable[ImageRecord], *, keep_images: bool = False
    ) -> Iterator[InspectionResult]:
        """Inspect ``records`` lazily, batching tiles across frames; yields in input order."""
        # Frames in input order; a rejected record sits here as its finished result so that
        # results keep input order.
        active: deque[_Job | InspectionResult] = deque()
        jobs: dict[int, _Job] = {}  # batch_tiles' frame index -> frame still receiving tiles
        frame_index = itertools.count()

        def frames() -> Iterator[tuple[np.ndarray, TileGrid]]:
            for item in self._prepared(records, keep_images):
                active.append(item)
                if isinstance(item, _Job):
                    jobs[next(frame_index)] = item
                    yield item.tensor, item.grid

        for batch in batch_tiles(frames(), self.batch_size):
            self._run_batch(batch, jobs)
            yield from self._drain(active)
        yield from self._drain(active)

    def _prepared(
        self, records: Iterable[ImageRecord], keep_images: bool
    ) -> Iterator[_Job | InspectionResult]:
        """Decode ahead on a worker thread, ``prefetch`` records beyond the one in use."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="defectscan-decode") as pool:
            pending: deque[Future[_Job | InspectionResult]] = deque()
            source = iter(records)
            while True:
                while len(pending) <= self.prefetch:
                    rec = next(source, None)
                    if rec is None:
                        break
                    pending.append(pool.submit(self._prepare, rec, keep_images))
                if not pending:
                    return
                yield pending.popleft().result()

    def _drain(self, active: deque[_Job | InspectionResult]) -> Iterator[InspectionResult]:
        while active and (isinstance(active[0], InspectionResult) or active[0].stitcher.done):
            head = active.popleft()
            yield head if isinstance(head, InspectionResult) else self._finish(head)

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
            tensor = to_model_input(
                image,
                n_channels=self.spec.n_channels,
                channel_order=self.spec.channel_order,
                mean=self.spec.mean,
                std=self.spec.std,
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
        )
        return _Job(result, tensor, grid, Stitcher(grid, n_out), started)

    def _run_batch(self, batch: TileBatch, jobs: dict[int, _Job]) -> None:
        t0 = time.perf_counter()
        probs = self.backend.infer(batch.tiles)
        share = (time.perf_counter() - t0) / len(batch.keys)
        if probs.shape[:2] != (len(batch.keys), self.spec.n_classes):
            msg = (
                f"backend {self.backend.name} returned {probs.shape}, expected "
                f"({len(batch.keys)}, {self.spec.n_classes}, {self.tile}, {self.tile})"
            )
            raise DefectscanError(msg)
        for (frame, index), p in zip(batch.keys, probs, strict=True):
            job = jobs[frame]
            job.stitcher.add(index, p)
            job.infer_s += share
            if job.stitcher.done:
                del jobs[frame]  # a long-running monitor must not keep finished frames

    def _finish(self, job: _Job) -> InspectionResult:
        t0 = time.perf_counter()
        result = job.result
        probs = job.stitcher.result()
        job.tensor = np.empty(0, np.float32)  # free the frame before post-processing
        post = postprocess(probs, self.postprocess_config(result.record.line))
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
