"""Engines that get faster by themselves: background exports and INT8, swapped between batches.

:class:`EngineUpgrader` sits beside a :class:`~defectscan.monitor.LineMonitor` whose engine is
``auto`` on the CPU (a ``backend`` pinned in the plant file or ``DEFECTSCAN_BACKEND`` gets
none: a pinned engine is never overridden):

- **Fast start**: the monitor loads only engines already in the cache (the remembered fastest
  for this checkpoint and CPU model), else starts at once on eager torch; the OpenVINO and
  ONNX exports then run in a background process and are timed and swapped in between batches.
- **Calibration from the line**: for a checkpoint without an INT8 engine on this CPU,
  :class:`CalibrationPool` keeps a bounded, stratified sample of the images the monitor
  inspects (by camera and verdict; first from the image archive's images of the line, so a
  new champion starts from what is already there), written once each under
  ``var/engines/calibration/``. Taking a sample costs one small file copy per kept image,
  only until the pool is full.
- **Quantise in the background**: once the pool holds enough images, a separate process
  (:mod:`defectscan.model.quantise`: lower priority, bounded threads and cores) quantises with
  NNCF on part of them and checks parity on the others (the checks of ``defectscan export``).
  While the line inspects, every background job is held to ``background_cpu_share`` of a
  core (:class:`~defectscan.cpu_budget.CpuBudget`: SIGSTOP past its share, SIGCONT when it
  is due again); while the line is idle it runs free.
- **Switch between batches**: an engine that is ready is loaded and timed against the running
  one on the same tiles; a faster one (INT8: ``int8_min_speedup`` times as fast) is swapped
  in between batches, the way a new champion is, with an ``engine_switch`` event, and is
  remembered as the choice for this checkpoint and CPU model, so that a restart starts on it.
  A failed INT8 parity check leaves an ``int8_failed`` event, counts in
  ``defectscan_int8_failures_total`` and a marker in the cache: the checkpoint is not
  quantised again on this CPU until ``defectscan monitor --retry-int8``.

Every state change is visible: ``defectscan_engine_state{state=...}`` and the engine label of
``defectscan_model_info`` on /metrics, ``engine_in_use``/``engine_switch`` events that
``defectscan health`` reads. Nothing here ever stops the line: a failing step is logged and
recorded, and the running engine stays.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from defectscan.archive import ImageArchive, image_suffix
from defectscan.config import Settings
from defectscan.cpu_budget import CpuBudget
from defectscan.metrics import ENGINE_STATES
from defectscan.model.backends import Backend, resolve_device
from defectscan.model.engines import (
    cached_engine,
    engine_label,
    remember_choice,
    tiles_per_s,
)
from defectscan.model.export import engine_cache_dir, synthetic_tiles
from defectscan.model.quantise import (
    clear_int8_failure,
    fp32_missing,
    int8_failure,
    int8_ready,
)
from defectscan.orchestration import spawn_dying_with_parent
from defectscan.pipeline import InspectionResult, Inspector
from defectscan.store.schema import Inspection

__all__ = [
    "ENGINE_STATES",
    "CalibrationPool",
    "EngineOptions",
    "EngineUpgrader",
    "calibration_pool_for",
]

logger = logging.getLogger(__name__)

EventFn = Callable[[str, str, str, "str | None", dict[str, Any]], None]

#: The line counts as inspecting (a background job held to its CPU share) this long after
#: its last image.
BUSY_WINDOW_S = 2.0

_MAX_STRATA = 16  # camera names are free text: bound the folders they make


@dataclass(frozen=True)
class EngineOptions:
    """How a line's engine improves itself (see the module docstring)."""

    int8: bool = True
    calibration_images: int = 24
    parity_images: int = 8
    calibration_tiles: int = 96
    parity_mean_abs: float | None = None
    min_speedup: float = 1.0
    threads: int = 1
    nice: int = 8
    cpu_share: float = 0.15
    timeout_s: float = 1800.0
    precision: str = "auto"
    retry_int8: bool = False

    @classmethod
    def for_line(
        cls,
        settings: Settings,
        line: str | None,
        *,
        auto_int8: bool | None = None,
        retry_int8: bool = False,
    ) -> EngineOptions | None:
        """The options of ``line``; None when its engine is pinned or not on the CPU."""
        engine = settings.engine_for(line)
        if engine.backend != "auto" or resolve_device(engine.device).type != "cpu":
            return None
        int8 = engine.auto_int8 if auto_int8 is None else auto_int8
        if int8 and not all(importlib.util.find_spec(m) for m in ("openvino", "nncf")):
            logger.info("automatic INT8 is off here: it needs openvino and nncf installed")
            int8 = False
        return cls(
            int8=int8,
            calibration_images=settings.int8_calibration_images,
            parity_images=settings.int8_parity_images,
            calibration_tiles=settings.int8_calibration_tiles,
            parity_mean_abs=settings.int8_parity_mean_abs,
            min_speedup=settings.int8_min_speedup,
            threads=settings.background_threads,
            nice=settings.background_nice,
            cpu_share=settings.background_cpu_share,
            timeout_s=settings.background_timeout_s,
            precision=engine.precision,
            retry_int8=retry_int8,
        )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:40] or "_"


class CalibrationPool:
    """A bounded, stratified sample of a line's images, for INT8 calibration and parity.

    Images are kept per stratum (camera and verdict), at most ``target`` per stratum and
    ``_MAX_STRATA`` strata, under ``root/pool/<stratum>/<sha256><suffix>``; the pool survives a
    restart. It is :meth:`ready` when it holds ``target`` images with passes and fails among
    them (or after ``4 * target`` images were offered without both). :meth:`split` spreads the
    strata round robin over ``calibration/`` and ``parity/``, so the parity check runs on
    other images of the same line, from every stratum it can.
    """

    def __init__(self, root: Path, *, calibration: int, parity: int) -> None:
        self.root = root
        self.calibration = calibration
        self.parity = parity
        self.target = calibration + parity
        self.pool = root / "pool"
        self.counts: Counter[str] = Counter()
        self.shas: set[str] = set()
        self.offered = 0
        if self.pool.is_dir():
            for stratum in self.pool.iterdir():
                files = [f for f in stratum.iterdir() if f.is_file()] if stratum.is_dir() else []
                self.counts[stratum.name] = len(files)
                self.shas.update(f.stem for f in files)

    @staticmethod
    def stratum(camera: str | None, verdict: str | None) -> str:
        """The stratum of an image: its camera and its verdict."""
        return f"{_slug(camera or 'camera')}__{verdict or 'none'}"

    def wants(self, stratum: str, sha256: str) -> bool:
        """True when an image of ``stratum`` would be kept (cheap: no bytes needed)."""
        if sha256 in self.shas or self.counts[stratum] >= self.target:
            return False
        return stratum in self.counts or len(self.counts) < _MAX_STRATA

    def offer(self, stratum: str, sha256: str, read: Callable[[], bytes]) -> bool:
        """Keep this image if its stratum wants it; True when kept."""
        self.offered += 1
        if not self.wants(stratum, sha256):
            return False
        data = read()
        if not data:
            return False
        folder = self.pool / stratum
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{sha256}{image_suffix(data)}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        self.counts[stratum] += 1
        self.shas.add(sha256)
        return True

    @property
    def size(self) -> int:
        """Images held."""
        return sum(self.counts.values())

    def _verdicts(self) -> set[str]:
        return {s.rsplit("__", 1)[-1] for s, n in self.counts.items() if n}

    def ready(self) -> bool:
        """Enough images, with passes and fails among them (or no fail seen for long)."""
        if self.size < self.target:
            return False
        return {"pass", "fail"} <= self._verdicts() or self.offered >= 4 * self.target

    def split(self) -> tuple[Path, Path]:
        """Fill ``calibration/`` and ``parity/`` from the pool; returns the two folders."""
        calib, parity = self.root / "calibration", self.root / "parity"
        for folder in (calib, parity):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        queues = {
            s.name: sorted(f for f in s.iterdir() if f.is_file() and not f.name.endswith(".tmp"))
            for s in sorted(self.pool.iterdir())
            if s.is_dir()
        }
        order: list[Path] = []
        while any(queues.values()) and len(order) < self.target:
            for files in queues.values():
                if files and len(order) < self.target:
                    order.append(files.pop(0))
        # Every stratum reaches parity early: its k-th image goes to parity every few picks.
        every = max(2, math.ceil(len(order) / max(1, self.parity)))
        n_parity = 0
        for i, f in enumerate(order):
            to_parity = n_parity < self.parity and i % every == every - 1
            dest = (parity if to_parity else calib) / f.name
            n_parity += to_parity
            try:
                os.link(f, dest)
            except OSError:
                shutil.copyfile(f, dest)
        return calib, parity


def _pool(sha256: str, tile: int, options: EngineOptions) -> CalibrationPool:
    return CalibrationPool(
        engine_cache_dir() / "calibration" / f"{sha256[:16]}-t{tile}",
        calibration=options.calibration_images,
        parity=options.parity_images,
    )


def calibration_pool_for(
    inspector: Inspector, options: EngineOptions | None
) -> CalibrationPool | None:
    """The calibration pool of the inspector's model while it still needs one on this CPU.

    None when quantisation is off or pinned away, the model has an INT8 engine here (or
    failed to get one), or the pool is full. ``batch`` fills it as it inspects, so that the
    next monitor on the model quantises at once.
    """
    ckpt = inspector.checkpoint
    if options is None or not options.int8 or ckpt is None:
        return None
    if int8_ready(ckpt.sha256, inspector.tile) or int8_failure(ckpt.sha256, inspector.tile):
        return None
    pool = _pool(ckpt.sha256, inspector.tile, options)
    return None if pool.ready() else pool


class EngineUpgrader:
    """The background engine work of one line's monitor (see the module docstring)."""

    def __init__(
        self,
        options: EngineOptions,
        *,
        line: str | None,
        event: EventFn,
        metrics: Any | None = None,
        archive: ImageArchive | None = None,
        sessions: sessionmaker[Session] | None = None,
        var_dir: Path | None = None,
    ) -> None:
        self.options = options
        self.line = line
        self._event = event
        self._metrics = metrics
        self.archive = archive
        self._sessions = sessions
        self._var_dir = var_dir
        self.state = "off"
        self.pool: CalibrationPool | None = None
        self._sha: str | None = None
        self._tile: int | None = None
        self._attached_at = time.monotonic()
        self._proc: subprocess.Popen[bytes] | None = None
        self._job: tuple[str, Path] | None = None
        self._job_started = 0.0
        self._budget: CpuBudget | None = None
        self._last_image = -math.inf
        self._fp32_todo = False
        self._gathering = False
        self._check_int8_cached = False
        self._check_fp32_cached = False
        self._lock_fd: int | None = None
        self._rates: dict[str, float] = {}
        #: Engine swaps done, newest last: (from, to, seconds after the model was attached).
        self.switches: list[tuple[str, str, float]] = []
        self._tiles: Any = None

    @property
    def settled(self) -> bool:
        """True once nothing is left to do for the running model (no job running or due)."""
        if self._sha is None or self._proc is not None:
            return False
        if self._fp32_todo or self._check_int8_cached or self._check_fp32_cached:
            return False
        if self._gathering:
            return False
        return self.state in ("int8", "kept", "failed", "off")

    # ------------------------------------------------------------------ the monitor's hooks

    def observe(self, result: InspectionResult) -> None:
        """The service loop's ``on_result`` hook: offer the image to the calibration pool."""
        self._last_image = time.monotonic()
        pool = self.pool
        if pool is None or not self._gathering or result.status != "ok":
            return
        record = result.record
        stratum = pool.stratum(record.camera, result.verdict)
        try:
            pool.offer(stratum, result.sha256, record.read)
        except Exception as exc:  # a calibration sample is never worth an image's row
            logger.warning("calibration sample of %s not kept: %s", record.uri, exc)
        return

    def between_batches(self, inspector: Inspector, *, flow_run_id: str | None = None) -> bool:
        """Advance the background work; swap a faster engine in. True when swapped."""
        try:
            return self._between_batches(inspector, flow_run_id)
        except Exception:  # the engine work must never stop the line
            logger.exception("background engine work failed; the running engine stays")
            return False

    def close(self) -> None:
        """Stop a background job this monitor started (it is started again next time)."""
        proc, self._proc = self._proc, None
        self._end_budget()  # a held job would not see the SIGTERM below until released
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._release_lock()

    # ------------------------------------------------------------------ the steps

    def _between_batches(self, inspector: Inspector, flow_run_id: str | None) -> bool:
        ckpt = inspector.checkpoint
        if ckpt is None or ckpt.path is None:
            return False  # built in memory: no file for the background process to load
        if (ckpt.sha256, inspector.tile) != (self._sha, self._tile):
            self._attach(inspector, flow_run_id)
        swapped = False
        if self._check_fp32_cached:
            self._check_fp32_cached = False
            swapped = self._evaluate(inspector, ["openvino", "onnxruntime"], flow_run_id)
            if self.state == "exporting":
                self._set_state("gathering" if self.pool is not None else "off")
        if self._check_int8_cached:
            self._check_int8_cached = False
            swapped = self._evaluate(inspector, ["openvino-int8"], flow_run_id, int8=True)
        if self._proc is not None:
            if self._proc.poll() is None:
                if self._job_running_s() > self.options.timeout_s:
                    self._timed_out(flow_run_id)
                return swapped
            swapped = self._finished(inspector, flow_run_id) or swapped
        if self._proc is None:
            self._next_job(inspector)
        return swapped

    def _set_state(self, state: str) -> None:
        self.state = state
        setter = getattr(self._metrics, "set_engine_state", None)
        if callable(setter):
            setter(line=self.line, state=state)

    def _attach(self, inspector: Inspector, flow_run_id: str | None) -> None:
        """A new checkpoint (start, or a new champion): plan its engine work."""
        assert inspector.checkpoint is not None
        self.close()  # a job for the previous checkpoint is of no use now
        sha, tile = inspector.checkpoint.sha256, inspector.tile
        self._sha, self._tile = sha, tile
        self._attached_at = time.monotonic()
        self._rates = {}
        self._tiles = None
        self.pool = None
        self._gathering = False
        self._check_int8_cached = False
        self._check_fp32_cached = False
        running = engine_label(inspector.backend)
        self._fp32_todo = running == "torch" and bool(fp32_missing(sha, tile))
        state = "exporting" if self._fp32_todo else "off"
        if self.options.int8 and running != "openvino-int8":
            if self.options.retry_int8 and clear_int8_failure(sha):
                logger.info("INT8 failure of %s forgotten (--retry-int8)", sha[:12])
            failure = int8_failure(sha, tile)
            if int8_ready(sha, tile):
                self._check_int8_cached = True
            elif failure is not None:
                state = "failed"
                logger.info(
                    "INT8 failed for %s on this CPU before (%s): not tried again until "
                    "`defectscan monitor --retry-int8`",
                    sha[:12],
                    failure.get("reason"),
                )
            else:
                self.pool = _pool(sha, tile, self.options)
                self._prefill(self.pool)
                state = "gathering" if not self._fp32_todo else "exporting"
                self._gathering = True
        elif running == "openvino-int8":
            state = "int8"
        self._set_state(state)

    def _prefill(self, pool: CalibrationPool) -> None:
        """Calibration images from the archive: the line's recent inspections that it kept."""
        if self.archive is None or self._sessions is None or pool.ready():
            return
        try:
            with self._sessions() as session:
                stmt = (
                    select(Inspection.sha256, Inspection.camera, Inspection.verdict)
                    .where(Inspection.status == "ok")
                    .order_by(Inspection.id.desc())
                    .limit(20 * pool.target)
                )
                if self.line is not None:
                    stmt = stmt.where(Inspection.line == self.line)
                found = session.execute(stmt).all()
        except Exception as exc:  # the database may be away: the line's own images will do
            logger.warning("calibration from the archive skipped: %s", exc)
            return
        archive = self.archive
        kept = 0
        for sha, camera, verdict in found:
            if not archive.has(sha):
                continue
            kept += pool.offer(
                pool.stratum(camera, verdict), sha, functools.partial(archive.get, sha)
            )
            if pool.ready():
                break
        if kept:
            logger.info("calibration: %d image(s) of the line taken from the archive", kept)

    def _next_job(self, inspector: Inspector) -> None:
        """Start the next background job, unless another monitor runs it for this model.

        Monitors of several lines may share a model and the engine cache: a job holds the
        model's lock (``flock``, released when the monitor dies), and a monitor that finds it
        taken waits and then uses what the other one wrote.
        """
        assert inspector.checkpoint is not None
        assert self._sha is not None
        assert self._tile is not None
        sha, tile = self._sha, self._tile
        if self._fp32_todo:
            if not fp32_missing(sha, tile):  # exported by another monitor meanwhile
                self._fp32_todo = False
                self._check_fp32_cached = True
            elif self._take_lock("fp32"):
                self._fp32_todo = False
                self._start("fp32", inspector)
            return
        pool = self.pool
        if pool is None or not self._gathering:
            return
        if self.state == "exporting":
            self._set_state("gathering")
        if not pool.ready():
            return
        if int8_ready(sha, tile):  # quantised by another monitor
            self._gathering = False
            self._check_int8_cached = True
            return
        if int8_failure(sha, tile) is not None:  # failed for another monitor
            self._gathering = False
            self._set_state("failed")
            return
        if not self._take_lock("int8"):
            if self.state != "quantising":
                logger.info("another monitor is quantising %s: waiting for its engine", sha[:12])
                self._set_state("quantising")
            return
        self._gathering = False
        calib, parity = pool.split()
        self._start("int8", inspector, calib, parity)
        self._set_state("quantising")

    def _take_lock(self, kind: str) -> bool:
        """Hold this model's lock for a ``kind`` job; False while another process holds it."""
        assert self._sha is not None
        path = engine_cache_dir() / f"{self._sha[:16]}-t{self._tile}.{kind}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _start(
        self,
        kind: str,
        inspector: Inspector,
        calib: Path | None = None,
        parity: Path | None = None,
    ) -> None:
        assert inspector.checkpoint is not None
        assert self._sha is not None
        path = inspector.checkpoint.path
        status = engine_cache_dir() / f"{self._sha[:16]}-t{self._tile}.{kind}-job.json"
        status.parent.mkdir(parents=True, exist_ok=True)
        status.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "defectscan.model.quantise",
            kind,
            "--checkpoint",
            str(path),
            "--status",
            str(status),
            "--tile",
            str(self._tile),
            "--threads",
            str(self.options.threads),
            "--nice",
            str(self.options.nice),
        ]
        if kind == "int8":
            cmd += ["--calibration", str(calib), "--parity", str(parity)]
            cmd += ["--calibration-limit", str(self.options.calibration_tiles)]
            if self.options.parity_mean_abs is not None:
                cmd += ["--parity-mean-abs", repr(self.options.parity_mean_abs)]
        env = dict(os.environ)
        var_dir = self._var_dir or engine_cache_dir().parent
        env["DEFECTSCAN_VAR_DIR"] = str(Path(var_dir).resolve())
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(self.options.threads)
        log_file = status.with_suffix(".log")
        with log_file.open("wb") as log:
            # Dies with the monitor (kill -9 included): a restarted monitor starts its own.
            self._proc = spawn_dying_with_parent(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._job = (kind, status)
        self._job_started = time.monotonic()
        if self.options.cpu_share > 0:
            self._budget = CpuBudget(
                self._proc.pid, self.options.cpu_share, busy=self._line_busy
            ).start()
        logger.info(
            "background %s job started for %s (pid %d)", kind, self._sha[:12], self._proc.pid
        )

    def _line_busy(self) -> bool:
        """True while the line inspects (an image in the last ``BUSY_WINDOW_S`` seconds)."""
        return time.monotonic() - self._last_image < BUSY_WINDOW_S

    def _job_running_s(self) -> float:
        """Seconds the job has been allowed to run (time held by its CPU budget left out)."""
        held = self._budget.held_s if self._budget is not None else 0.0
        return time.monotonic() - self._job_started - held

    def _end_budget(self) -> None:
        budget, self._budget = self._budget, None
        if budget is None:
            return
        budget.stop()
        if budget.holds:
            logger.info(
                "background job pid %d held %d time(s), %.0f s in all, to %.2f core while "
                "the line inspected",
                budget.pid,
                budget.holds,
                budget.held_s,
                budget.share,
            )

    def _timed_out(self, flow_run_id: str | None) -> None:
        """Stop a job that ran past ``timeout_s``; the running engine stays.

        No failure marker is left: the job is tried again when the monitor restarts (a
        machine that was too busy for it may not be next time), never in this process.
        """
        assert self._job is not None
        kind = self._job[0]
        self.close()  # terminates the job and releases the model's lock
        self._job = None
        message = (
            f"background {kind} engine job stopped after running "
            f"{self.options.timeout_s:.0f} s (background_timeout_s; time held to its CPU share "
            "not counted): the line keeps its engine; the job runs again when the monitor "
            "restarts"
        )
        logger.warning(message)
        self._event("engine_job_timeout", message, "warning", flow_run_id, {"job": kind})
        if kind == "int8":
            self._set_state("failed")
        else:  # the fp32 engines stay missing; INT8 may still come
            self._set_state("gathering" if self._gathering else "off")

    def _finished(self, inspector: Inspector, flow_run_id: str | None) -> bool:
        assert self._proc is not None
        assert self._job is not None
        kind, status = self._job
        self._proc, self._job = None, None
        self._end_budget()
        self._release_lock()
        try:
            result = json.loads(status.read_text())
        except (OSError, ValueError):
            result = {"ok": False, "reason": f"the {kind} job ended without a result"}
        if kind == "fp32":
            swapped = self._evaluate(inspector, ["openvino", "onnxruntime"], flow_run_id)
            if self.state == "exporting":
                self._set_state("gathering" if self.pool is not None else "off")
            return swapped
        if not result.get("ok"):
            self._int8_failed(inspector, result, flow_run_id)
            return False
        self._event(
            "int8_ready",
            f"INT8 engine quantised from the line's images in {result.get('seconds', '?')} s "
            "and holds parity",
            "info",
            flow_run_id,
            {"parity": result.get("parity"), "seconds": result.get("seconds")},
        )
        return self._evaluate(inspector, ["openvino-int8"], flow_run_id, int8=True)

    def _int8_failed(
        self, inspector: Inspector, result: dict[str, Any], flow_run_id: str | None
    ) -> None:
        running = engine_label(inspector.backend)
        message = (
            f"INT8 engine of {inspector.model_version} not used: {result.get('reason')}; "
            f"still inspecting with {running}. Not tried again for this checkpoint on this CPU "
            "until `defectscan monitor --retry-int8`"
        )
        logger.error(message)
        self._event(
            "int8_failed",
            message,
            "error",
            flow_run_id,
            {"reason": result.get("reason"), "parity": result.get("parity"), "engine": running},
        )
        counter = getattr(self._metrics, "observe_int8_failure", None)
        if callable(counter):
            counter(line=self.line)
        self._set_state("failed")

    def _rate(self, backend: Backend, tiles: Any) -> float:
        label = engine_label(backend)
        if label not in self._rates:
            self._rates[label] = tiles_per_s(backend, tiles)
        return self._rates[label]

    def _evaluate(
        self, inspector: Inspector, names: list[str], flow_run_id: str | None, *, int8: bool = False
    ) -> bool:
        """Time the cached engines ``names`` against the running one; swap in a faster one."""
        ckpt = inspector.checkpoint
        assert ckpt is not None
        assert self._sha is not None
        assert self._tile is not None
        tile = self._tile
        precision = self.options.precision
        if self._tiles is None:
            self._tiles = synthetic_tiles(ckpt.spec, tile, n=4)
        running = engine_label(inspector.backend)
        current = self._rate(inspector.backend, self._tiles)
        found: dict[str, Backend] = {}
        for name in names:
            if name == running:
                continue
            backend = cached_engine(
                name,
                ckpt.model,
                ckpt.spec,
                tile=tile,
                precision=precision,  # type: ignore[arg-type]
                checkpoint_sha256=self._sha,
            )
            if backend is not None:
                found[name] = backend
                self._rates[name] = tiles_per_s(backend, self._tiles)
        if not found:
            return False
        best = max(found, key=lambda n: self._rates[n])
        need = self.options.min_speedup if int8 else 1.0
        rates = {k: round(v, 3) for k, v in self._rates.items()}
        if self._rates[best] <= need * current:
            logger.info(
                "engine %s (%.2f tiles/s) is not faster than %s (%.2f): kept",
                best,
                self._rates[best],
                running,
                current,
            )
            remember_choice(self._sha, precision, tile, running, dict(self._rates))
            if int8:
                self._set_state("kept")
                self._event(
                    "engine_kept",
                    f"INT8 holds parity but is not faster than {running} here: kept {running}",
                    "info",
                    flow_run_id,
                    {"engine": running, "tiles_per_s": rates},
                )
            return False
        after_s = time.monotonic() - self._attached_at
        inspector.backend = found[best]
        remember_choice(self._sha, precision, tile, best, dict(self._rates))
        self.switches.append((running, best, after_s))
        message = (
            f"engine switched between batches from {running} ({current:.2f} tiles/s) to {best} "
            f"({self._rates[best]:.2f} tiles/s), {after_s:.0f} s after the model started"
        )
        logger.info(message)
        self._event(
            "engine_switch",
            message,
            "info",
            flow_run_id,
            {"from": running, "engine": best, "tiles_per_s": rates, "after_s": round(after_s, 2)},
        )
        counter = getattr(self._metrics, "observe_engine_switch", None)
        if callable(counter):
            counter(line=self.line, engine=best)
        if best == "openvino-int8":
            self._set_state("int8")
        return True
