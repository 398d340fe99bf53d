"""Retraining: base dataset + operator reviews -> candidate -> the gate on a fixed holdout.

:func:`run_retrain` is the whole job; the Prefect flow (``flows/retrain.py``) and the CLI's
in-process path call it. One run:

1. takes the retrain lock (one retrain at a time on this machine; the deployment's concurrency
   limit does the same across machines) and records a ``training_runs`` row (trigger, who asked,
   why, ``running``);
2. settles the **holdout**: a fixed set of base images chosen once by content hash and copied
   under ``var/retrain/holdout`` with a manifest; never trained on (a review of an image in the
   holdout is left out of training too) and recorded in every run's ``dataset_stats``;
3. builds the training set: the base dataset minus the holdout, plus the reviewed inspections
   (images from the archive by sha256, masks from the reviews: :mod:`defectscan.training.reviews`);
4. trains a candidate (parent: the champion), registers it, and lets the promotion gate score
   champion and candidate on the same holdout through the inspection path
   (:func:`defectscan.training.registry.evaluate_and_promote`); a retrain triggered by drift
   also keeps a share of the reviewed post-drift images out of training, and the candidate
   must not be worse than the champion on them (the post-drift slice);
5. marks the consumed reviews used (only now that the run succeeded) and finishes the row with
   both models' metrics side by side, the decision and why, and the timings.

A failure at any step records the run as ``failed`` with the error, leaves the reviews unused
for the next run, and raises :class:`RetrainError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from defectscan.archive import ImageArchive
from defectscan.errors import DefectscanError
from defectscan.store.db import session_factory
from defectscan.store.model_versions import get_champion
from defectscan.store.schema import TrainingRun
from defectscan.store.training_runs import (
    create_training_run,
    finish_training_run,
    mark_reviews_used,
    record_training_progress,
)
from defectscan.training.retrain_data import (
    Holdout,
    build_training_set,
    ensure_holdout,
)

if TYPE_CHECKING:
    from defectscan.training.run import ProgressFn, TrainProgress

__all__ = [
    "Holdout",
    "RetrainBusyError",
    "RetrainError",
    "RetrainOutcome",
    "RetrainRequest",
    "build_training_set",
    "ensure_holdout",
    "find_run_of_flow",
    "outcome_of_run",
    "retrain_from_settings",
    "retrain_lock",
    "run_retrain",
]

logger = logging.getLogger(__name__)

Trigger = Literal["scheduled", "operator", "cli", "drift"]

#: Fast defaults for a retrain (a recipe overrides any of them; TrainConfig field names).
DEFAULT_RECIPE: dict[str, Any] = {"epochs": 20, "patience": 6}


class RetrainError(DefectscanError):
    """A retrain could not run or failed; the training run row says where."""

    kind = "retrain"

    def __init__(self, message: str, *, outcome: RetrainOutcome | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


class RetrainBusyError(RetrainError):
    """Another retrain holds the lock: this request is refused, not queued."""

    kind = "retrain_busy"


@dataclass(frozen=True)
class RetrainRequest:
    """Who asks for a retrain, why, and on what."""

    trigger: Trigger = "operator"
    requested_by: str | None = None
    reason: str | None = None
    data: Path | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    holdout_fraction: float = 0.2
    metric: str = "mean_iou"
    margin: float = 0.01
    name: str | None = None
    flow_run_id: str | None = None
    #: Weights to start from: ``champion`` (fine-tune it when it fits the data, else train from
    #: scratch and say so), ``scratch``, or a checkpoint file.
    init: str = "champion"

    def params(self) -> dict[str, Any]:
        """JSON-safe form, stored as the training run's ``params``."""
        d = asdict(self)
        d["data"] = str(self.data) if self.data else None
        return d


@dataclass
class RetrainOutcome:
    """What a retrain did: the run row, the candidate, the gate's decision and why."""

    training_run_id: int
    status: Literal["succeeded", "failed"]
    promoted: bool = False
    candidate: str | None = None
    champion_before: str | None = None
    champion_after: str | None = None
    metric: str = "mean_iou"
    margin: float = 0.01
    side_by_side: dict[str, dict[str, float | None]] = field(default_factory=dict)
    reason: str = ""
    dataset_stats: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    #: The weights the candidate started from (``fine-tuned from <version>`` or ``scratch``,
    #: with the reason when a champion did not fit).
    init: str = ""

    @property
    def exit_code(self) -> int:
        """0: a new champion; 3: the candidate lost the gate; 1: the run failed."""
        if self.status != "succeeded":
            return 1
        return 0 if self.promoted else 3

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the flow's return value, the CLI's ``--json``)."""
        d = asdict(self)
        d["exit_code"] = self.exit_code
        return d

    def markdown(self) -> str:
        """The result as a quality engineer reads it: both models side by side, the decision."""
        decision = (
            f"**{self.candidate} promoted to champion**"
            if self.promoted
            else f"**{self.candidate} stays a candidate**; {self.champion_before} keeps serving"
        )
        if self.status != "succeeded":
            decision = f"**failed**: {self.error}"
        lines = [
            f"# Retrain (training run {self.training_run_id})",
            "",
            decision,
            "",
            f"Why: {self.reason or '-'}",
            "",
            f"Started from: {self.init or '-'}",
            "",
            f"Gate: `{self.metric}` on the fixed holdout, margin {self.margin}",
            "",
            f"| metric | candidate ({self.candidate}) | champion ({self.champion_before}) |",
            "|---|---:|---:|",
        ]
        for name, pair in self.side_by_side.items():
            lines.append(
                f"| {name} | {_fmt(pair.get('candidate'))} | {_fmt(pair.get('champion'))} |"
            )
        stats = self.dataset_stats
        lines += [
            "",
            f"Data: {stats.get('n_base', 0)} base images, {stats.get('n_reviews', 0)} reviewed "
            f"inspections ({stats.get('n_reviews_skipped', 0)} skipped), holdout "
            f"{stats.get('holdout', {}).get('n_images', 0)} images.",
            "",
            "Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings_s.items()),
        ]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# --------------------------------------------------------------------------- lock


@contextlib.contextmanager
def retrain_lock(var_dir: Path) -> Iterator[Path]:
    """Hold the retrain lock of this machine; :class:`RetrainBusyError` when it is taken."""
    folder = Path(var_dir) / "retrain"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "retrain.lock"
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            msg = (
                f"another retrain is running ({holder}); this request was refused, not queued: "
                "try again when it has finished (`defectscan models list` shows its result)"
            )
            raise RetrainBusyError(msg) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}")
        fh.flush()
        try:
            yield path
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- data


def _side_by_side(
    session: Session, candidate: str, champion: str | None, holdout: Path
) -> dict[str, dict[str, float | None]]:
    from defectscan.store.model_versions import get_model_version

    key = str(holdout.resolve())

    def scores(version: str | None) -> dict[str, Any]:
        mv = get_model_version(version, session=session) if version else None
        return dict(((mv.metrics or {}).get("holdout") or {}).get(key) or {}) if mv else {}

    cand, champ = scores(candidate), scores(champion)
    wanted = (
        "mean_iou",
        "mean_dice",
        "pooled_iou",
        "image_recall",
        "false_reject_rate",
        "pixel_auroc",
    )
    return {
        m: {"candidate": cand.get(m), "champion": champ.get(m)}
        for m in wanted
        if m in cand or m in champ
    }


class _ProgressRecorder:
    """The train loop's progress callback: a running run's epoch, best validation IoU, elapsed
    time and estimate of time left, written to ``training_runs.metrics["progress"]`` at most
    every ``every_s`` seconds (the Models page reads it). A failed write is logged, never
    raised: progress must not stop training."""

    def __init__(self, run_id: int, sessions: Any, *, every_s: float = 3.0) -> None:
        self.run_id = run_id
        self.sessions = sessions
        self.every_s = every_s
        self.last: dict[str, Any] | None = None
        self._val_iou: float | None = None
        self._written_at = float("-inf")

    def __call__(self, p: TrainProgress) -> None:
        if p.phase in ("epoch", "done") and p.metrics.get("mean_iou") is not None:
            self._val_iou = float(p.metrics["mean_iou"])
        done = p.epoch + 1 if p.phase in ("epoch", "done") else p.epoch
        part = p.step / p.steps if p.phase == "step" and p.steps else 0.0
        fraction = min(1.0, (done + part) / p.epochs) if p.epochs else 0.0
        self.last = {
            "phase": p.phase,
            "epoch": min(done + (p.phase in ("start", "step")), p.epochs),
            "epochs": p.epochs,
            "epochs_done": done,
            "step": p.step,
            "steps": p.steps,
            "fraction": round(fraction, 4),
            "loss": p.loss,
            "val_iou": self._val_iou,
            "best_val_iou": p.best_score,
            "elapsed_s": round(p.elapsed_s, 1),
            "eta_s": round(p.elapsed_s * (1 - fraction) / fraction, 1) if fraction > 0 else None,
            "updated_at": datetime.now(UTC).isoformat(),
        }
        now = time.monotonic()
        if p.phase not in ("start", "done") and now - self._written_at < self.every_s:
            return
        self._written_at = now
        try:
            with self.sessions.begin() as session:
                record_training_progress(self.run_id, self.last, session=session)
        except Exception:  # the database may be busy or away: training goes on
            logger.warning("could not record the progress of training run %d", self.run_id)


def run_retrain(
    request: RetrainRequest,
    *,
    engine: Engine,
    var_dir: Path,
    archive: ImageArchive | None = None,
    base: Path | None = None,
    holdout_dir: Path | None = None,
    device: str = "auto",
) -> RetrainOutcome:
    """Train a candidate on base + reviews, gate it on the fixed holdout, record everything."""
    from defectscan.training.registry import evaluate_and_promote, register_checkpoint

    base = request.data or base
    holdout_dir = holdout_dir or Path(var_dir) / "retrain" / "holdout"
    sessions = session_factory(engine, write=True)
    with retrain_lock(var_dir):
        with sessions.begin() as session:
            champ = get_champion(session=session, name=request.name)
            champion_before = champ.version if champ else None
            champion_path = champ.checkpoint_path if champ else None
            name = request.name or (champ.name if champ else "unet")
            run = create_training_run(
                session=session,
                trigger=request.trigger,
                requested_by=request.requested_by,
                reason=request.reason,
                params=request.params(),
                status="running",
            )
            run_id = run.id
            # Each retrain is its own draw unless the recipe pins a seed: with a fixed seed, a
            # run whose new reviews all fall in the validation split trains the very same
            # weights as the last one. The seed used is kept with the run's parameters.
            seed = int(request.recipe.get("seed", run_id))
            run.params = {**(run.params or {}), "seed": seed}
        logger.info(
            "retrain run %d (%s by %s: %s)",
            run_id,
            request.trigger,
            request.requested_by,
            request.reason,
        )
        outcome = RetrainOutcome(
            training_run_id=run_id,
            status="failed",
            champion_before=champion_before,
            metric=request.metric,
            margin=request.margin,
        )
        timings: dict[str, float] = {}
        recorder = _ProgressRecorder(run_id, sessions)
        t0 = time.perf_counter()
        try:
            holdout = ensure_holdout(holdout_dir, base=base, fraction=request.holdout_fraction)
            work = Path(var_dir) / "retrain" / f"run{run_id}"
            slices: dict[str, Path] = {}
            kept_out = holdout
            if request.trigger == "drift":
                # The gate's post-drift slice: reviewed post-drift images kept out of training.
                from defectscan.drift.retrain_trigger import post_drift_slice

                with sessions() as session:
                    found = post_drift_slice(work / "post_drift", session=session, archive=archive)
                if found is not None:
                    slices["post_drift"] = found.root
                    kept_out = replace(holdout, sha256=holdout.sha256 | found.sha256)
            with sessions() as session:
                stats, review_ids = build_training_set(
                    work / "data", session=session, holdout=kept_out, base=base, archive=archive
                )
            if slices:
                stats["post_drift_slice"] = str(slices["post_drift"])
            outcome.dataset_stats = stats
            timings["data"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            start = resolve_init(request.init, champion_path)
            fixed = {
                "data": work / "data",
                "out": Path(var_dir) / "models" / f"{name}-run{run_id}.safetensors",
                "name": name,
                "training_run": str(run_id),
                "resume": False,
                "seed": seed,
            }
            result, outcome.init = _train_from(
                start,
                request,
                settings={**fixed, "device": device},
                parent=champion_before,
                progress=recorder,
            )
            timings["train"] = time.perf_counter() - t1
            stats.update(n_train=result.n_train, n_val=result.n_val)
            t2 = time.perf_counter()
            with sessions.begin() as session:
                mv = register_checkpoint(
                    result.checkpoint_path,
                    session=session,
                    parent_version=champion_before,
                    training_run_id=run_id,
                    dataset_fingerprint=result.dataset_fingerprint,
                )
                outcome.candidate = mv.version
                if mv.training_run_id not in (None, run_id):
                    logger.warning(
                        "retrain run %d trained the same weights as %s (training run %s)",
                        run_id,
                        mv.version,
                        mv.training_run_id,
                    )
                decision = evaluate_and_promote(
                    mv.version,
                    session=session,
                    holdout=holdout.path,
                    metric=request.metric,
                    margin=request.margin,
                    slices=slices,
                )
                outcome.side_by_side = _side_by_side(
                    session, mv.version, champion_before, holdout.path
                )
            timings["evaluate"] = time.perf_counter() - t2
            timings["total"] = time.perf_counter() - t0
            outcome.promoted = decision.promoted
            outcome.reason = decision.reason
            outcome.champion_after = mv.version if decision.promoted else champion_before
            outcome.timings_s = {k: round(v, 2) for k, v in timings.items()}
            outcome.status = "succeeded"
            with sessions.begin() as session:
                stats["reviews_used"] = mark_reviews_used(list(review_ids), run_id, session=session)
                finish_training_run(
                    run_id,
                    session=session,
                    status="succeeded",
                    metrics=_run_metrics(outcome, result.best_metrics, recorder.last),
                    dataset_stats=stats,
                )
        except BaseException as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
            timings["total"] = time.perf_counter() - t0
            outcome.timings_s = {k: round(v, 2) for k, v in timings.items()}
            interrupted = isinstance(exc, KeyboardInterrupt)
            try:
                with sessions.begin() as session:
                    finish_training_run(
                        run_id,
                        session=session,
                        status="cancelled" if interrupted else "failed",
                        metrics=_run_metrics(outcome, None, recorder.last),
                        dataset_stats=outcome.dataset_stats or None,
                        error=outcome.error[:2000],
                    )
            except Exception:  # the original error matters more than the bookkeeping
                logger.exception("could not record the failure of training run %d", run_id)
            if interrupted or not isinstance(exc, Exception):
                raise
            logger.error("retrain run %d failed: %s", run_id, outcome.error)
            msg = f"retrain run {run_id} failed: {outcome.error}"
            raise RetrainError(msg, outcome=outcome) from exc
    logger.info("retrain run %d: %s", run_id, outcome.reason)
    return outcome


def fine_tune_recipe() -> dict[str, Any]:
    """The shipped ``fine-tune`` recipe (TrainConfig fields)."""
    from importlib.resources import files

    text = (files("defectscan.training") / "recipes" / "fine-tune.yaml").read_text()
    loaded = yaml.safe_load(text) or {}
    return {str(k): v for k, v in loaded.items()}


def resolve_init(init: str, champion_path: str | None) -> Path | None:
    """The checkpoint a retrain starts from: the champion's, a file, or None (scratch)."""
    if init == "scratch":
        return None
    if init == "champion":
        if champion_path is None:
            logger.info("no champion yet: training from scratch")
            return None
        path = Path(champion_path)
        if not path.is_file():
            logger.warning("the champion's checkpoint %s is gone: training from scratch", path)
            return None
        return path
    path = Path(init)
    if not path.is_file():
        msg = f"init checkpoint {path} does not exist (use champion, scratch or a file)"
        raise RetrainError(msg)
    return path


def _train_from(
    start: Path | None,
    request: RetrainRequest,
    *,
    settings: dict[str, Any],
    parent: str | None,
    progress: ProgressFn | None = None,
) -> tuple[Any, str]:
    """Train the candidate, fine-tuning from ``start`` when it fits; (result, what it began from).

    A start checkpoint whose architecture or classes do not fit the data is not an error for
    a retrain: it trains from scratch with the default recipe and says so.
    """
    from defectscan.training.train import TrainConfig, train
    from defectscan.training.warm_start import InitMismatchError

    scratch = {**DEFAULT_RECIPE, **request.recipe, **settings}
    if start is None:
        return train(TrainConfig(**scratch), progress=progress, parent_version=parent), "scratch"
    tuned = {**DEFAULT_RECIPE, **fine_tune_recipe(), **request.recipe, **settings, "init": start}
    try:
        result = train(TrainConfig(**tuned), progress=progress, parent_version=parent)
    except InitMismatchError as exc:
        logger.warning("%s; training from scratch", exc)
        result = train(TrainConfig(**scratch), progress=progress, parent_version=parent)
        return result, f"scratch ({exc})"
    init_from = result.spec.metrics.get("init_from") or {}
    return result, f"fine-tuned from {init_from.get('version', start.name)}"


def _run_metrics(
    outcome: RetrainOutcome,
    training: dict[str, float] | None,
    progress: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "progress": progress,
        "candidate": outcome.candidate,
        "champion_before": outcome.champion_before,
        "champion_after": outcome.champion_after,
        "promoted": outcome.promoted,
        "decision": outcome.reason,
        "gate": {"metric": outcome.metric, "margin": outcome.margin},
        "holdout": outcome.side_by_side,
        "validation": training,
        "timings_s": outcome.timings_s,
        "init": outcome.init,
    }


def outcome_of_run(run: TrainingRun) -> RetrainOutcome:
    """A finished training run's row read back as an outcome (the CLI waits on deployments)."""
    m = run.metrics or {}
    gate = m.get("gate") or {}
    return RetrainOutcome(
        training_run_id=run.id,
        status="succeeded" if run.status == "succeeded" else "failed",
        promoted=bool(m.get("promoted")),
        candidate=m.get("candidate"),
        champion_before=m.get("champion_before"),
        champion_after=m.get("champion_after"),
        metric=gate.get("metric", "mean_iou"),
        margin=gate.get("margin", 0.01),
        side_by_side=m.get("holdout") or {},
        reason=m.get("decision") or "",
        dataset_stats=run.dataset_stats or {},
        timings_s=m.get("timings_s") or {},
        error=run.error,
        init=m.get("init") or "",
    )


def retrain_from_settings(
    request: RetrainRequest, *, database_url: str | None = None
) -> RetrainOutcome:
    """:func:`run_retrain` with the database, archive, base dataset and recipe from the settings.

    The database must be at the code's schema head (``defectscan db upgrade``).
    """
    from defectscan.archive import default_archive
    from defectscan.config import get_settings
    from defectscan.store.db import ensure_schema, make_engine

    settings = get_settings()
    if settings.retrain_recipe:
        request = replace(request, recipe={**settings.retrain_recipe, **request.recipe})
    engine = make_engine(database_url or settings.database_url)
    try:
        ensure_schema(engine)
        return run_retrain(
            request,
            engine=engine,
            var_dir=settings.var_dir,
            archive=default_archive(),
            base=request.data or settings.retrain_data,
            device=settings.device,
        )
    finally:
        engine.dispose()


def find_run_of_flow(
    flow_run_id: str, *, session: Session, recent: int = 200
) -> TrainingRun | None:
    """The training run a retrain flow run recorded (by the flow run id in its params)."""
    from sqlalchemy import select

    runs = session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(recent)).all()
    for run in runs:
        if (run.params or {}).get("flow_run_id") == flow_run_id:
            return run
    return None
