"""Prefect's environment for defectscan, and the processes and flow runs Prefect leaves behind.

Without a server (no ``PREFECT_API_URL``) flows run on Prefect's ephemeral API: a temporary
local server whose state lives under ``PREFECT_HOME`` (``var/prefect``), with telemetry off and
Prefect's own INFO chatter (server start, every task state) kept off the terminal, so an
operator sees defectscan's progress. Anything already set in the environment wins: a user
who wants Prefect's logs sets ``PREFECT_LOGGING_LEVEL=INFO``.

Two things Prefect does not clean up by itself, handled here:

- **the ephemeral API server outlives a killed process**: Prefect starts it as a plain child
  (``uvicorn``) and stops it at exit; after SIGKILL it stays, reparented to init, about 230 MB
  each. :func:`guard_ephemeral_server` makes it die with the process that started it
  (Linux ``PR_SET_PDEATHSIG``).
- **flow runs of a killed ``serve`` stay Running** and hold their deployment's concurrency slot.
  Each serve process has a :class:`ServeIdentity`: its deployments carry the instance's tag,
  the runs it executes record the instance and process as labels, and a restarted serve
  (:func:`crash_orphaned_runs`) marks crashed only the runs its own instance left, never
  those of another serve that serves deployments of the same names.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import types
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import IO, Any

from defectscan.errors import ConfigError

__all__ = [
    "OWNER_ENV",
    "OWNER_LABEL",
    "OWNER_PROCESS_LABEL",
    "ServeIdentity",
    "configure_prefect",
    "crash_orphaned_runs",
    "die_with_parent",
    "guard_ephemeral_server",
    "label_run_owner",
    "prefect_server_configured",
    "prefect_server_reachable",
    "retire_monitor_deployments",
    "serve_lock",
    "spawn_dying_with_parent",
]

logger = logging.getLogger(__name__)

_DONE = False

#: Environment variable a serve process passes to the flow runs it starts (``instance|process``).
OWNER_ENV = "DEFECTSCAN_SERVE_OWNER"
#: Flow run label: the serve instance that executes the run.
OWNER_LABEL = "defectscan.serve"
#: Flow run label: the serve process (host:pid:nonce) that executes the run.
OWNER_PROCESS_LABEL = "defectscan.serve-process"
_TAG_PREFIX = "serve:"
_PR_SET_PDEATHSIG = 1


def prefect_server_configured() -> bool:
    """Whether flows report to a Prefect server (``PREFECT_API_URL`` is set)."""
    return bool(os.environ.get("PREFECT_API_URL"))


def configure_prefect(var_dir: Path | None = None) -> None:
    """Set Prefect's environment defaults (idempotent; call before ``import prefect``)."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    if var_dir is None:
        from defectscan.config import get_settings

        var_dir = get_settings().var_dir
    defaults = {
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
        # The temporary server of the ephemeral API starts in seconds on an idle machine, but
        # far slower on 2 busy cores: Prefect's 20 s default fails a monitor for nothing.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        # Results of our tasks are small summaries; nothing needs persisting.
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    }
    if not prefect_server_configured():
        defaults["PREFECT_HOME"] = str(Path(var_dir, "prefect").resolve())
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "PREFECT_HOME" in os.environ:
        # Prefect creates only the last folder of its home; var/ may not exist yet.
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    if os.environ["PREFECT_SERVER_LOGGING_LEVEL"] == "CRITICAL":
        # The temporary server's pool logs a cancelled connection reset when it stops: noise
        # from Prefect's own database (our engines use the synchronous QueuePool).
        logging.getLogger("sqlalchemy.pool.impl.AsyncAdaptedQueuePool").setLevel(logging.CRITICAL)


def prefect_server_reachable(timeout_s: float = 3.0) -> bool:
    """Whether ``PREFECT_API_URL`` is set and its server answers ``/health``."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return False
    from defectscan.health import check_prefect

    return check_prefect(url, timeout_s=timeout_s).ok


# --------------------------------------------------------------------------- child processes


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes a child receive ``sig`` when its parent dies (Linux).

    The kernel sends the signal when the *thread* that forked the child ends, so start such
    children with :func:`spawn_dying_with_parent` (a thread that lives as long as the process).
    A parent that died before the child armed the signal is caught too. None elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), sig)

    return arm


class _Spawner:
    """A daemon thread that starts children and lives as long as the process."""

    def __init__(self) -> None:
        self._jobs: SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="defectscan-spawner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            fn, future = self._jobs.get()
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)

    def call(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._thread:
            return fn()
        future: Future[Any] = Future()
        self._jobs.put((fn, future))
        return future.result()


_SPAWNER: _Spawner | None = None
_SPAWNER_LOCK = threading.Lock()


def spawn_dying_with_parent(
    args: Any, *, sig: int = signal.SIGKILL, **popen: Any
) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **popen)`` for a child that gets ``sig`` when this process dies.

    The child is forked from one long-lived thread of this process, so the parent-death signal
    does not fire when a short-lived worker thread that asked for it ends.
    """
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = _Spawner()
        spawner = _SPAWNER
    arm = die_with_parent(sig)
    chained = popen.pop("preexec_fn", None)
    if arm is not None or chained is not None:

        def preexec() -> None:
            if arm is not None:
                arm()
            if chained is not None:
                chained()

        popen["preexec_fn"] = preexec
    child: subprocess.Popen[Any] = spawner.call(lambda: subprocess.Popen(args, **popen))
    return child


def guard_ephemeral_server() -> bool:
    """Make Prefect's ephemeral API server die with the process that starts it.

    Prefect (3.x) starts the temporary server of the ephemeral API with ``subprocess.Popen``
    from ``prefect.server.api.server``; that module's ``subprocess`` is replaced by one whose
    ``Popen`` starts the child with :func:`spawn_dying_with_parent`. Nothing happens when a
    server is configured (``PREFECT_API_URL``). Returns whether the guard is in place.
    """
    if prefect_server_configured():
        return False
    if not sys.platform.startswith("linux"):
        logger.debug(
            "no parent-death signal on %s: the ephemeral server is not guarded", sys.platform
        )
        return False
    import prefect.server.api.server as server_module

    current = getattr(server_module, "subprocess", None)
    if isinstance(current, _GuardedSubprocess):
        return True
    if current is not subprocess:
        logger.warning(
            "Prefect's ephemeral server module has changed (no subprocess module to guard): a "
            "killed monitor may leave its ephemeral Prefect server running"
        )
        return False
    server_module.subprocess = _GuardedSubprocess()
    return True


class _GuardedSubprocess(types.ModuleType):
    """``subprocess`` as Prefect's server module sees it: children die with this process."""

    def __init__(self) -> None:
        super().__init__("subprocess")

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args: Any, **popen: Any) -> subprocess.Popen[Any]:  # noqa: N802 - Popen's name
        return spawn_dying_with_parent(args, **popen)


# --------------------------------------------------------------------------- serve identity


@dataclass(frozen=True)
class ServeIdentity:
    """Who a ``defectscan serve`` process is: a stable instance and this one process.

    ``instance`` stays the same when the serve restarts on the same host with the same
    ``var_dir`` (or is named with ``--instance``); ``process`` is new each start. A restarted
    serve crashes only the runs of its own instance (see :func:`crash_orphaned_runs`).
    """

    instance: str
    process: str

    @classmethod
    def current(cls, var_dir: Path, instance: str | None = None) -> ServeIdentity:
        """This process's identity; the instance defaults to the host and the var folder."""
        host = socket.gethostname()
        if instance is None:
            digest = hashlib.sha256(str(Path(var_dir).resolve()).encode()).hexdigest()[:6]
            instance = f"{host}-{digest}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", instance):
            msg = (
                f"serve instance {instance!r}: use 1-63 letters, digits, '.', '_' or '-' "
                "(starting with a letter or digit)"
            )
            raise ConfigError(msg)
        return cls(instance=instance, process=f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}")

    @property
    def tag(self) -> str:
        """The tag of this instance's deployments (flow runs created from them inherit it)."""
        return _TAG_PREFIX + self.instance

    def encode(self) -> str:
        """The value of :data:`OWNER_ENV` for the flow runs this process starts."""
        return f"{self.instance}|{self.process}"

    @classmethod
    def decode(cls, value: str) -> ServeIdentity | None:
        """The identity :meth:`encode` wrote, or None for anything else."""
        instance, sep, process = value.partition("|")
        return cls(instance, process) if sep and instance and process else None


@contextlib.contextmanager
def serve_lock(identity: ServeIdentity, var_dir: Path) -> Iterator[None]:
    """Hold the instance's lock while serving: one live serve per instance on this host.

    With the lock held, a run recorded under this instance by another process was left by a
    serve that is gone. The lock goes with the process, also after SIGKILL.
    """
    folder = Path(var_dir) / "serve"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{identity.instance}.lock"
    handle: IO[str] = path.open("a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            msg = (
                f"serve instance {identity.instance!r} is already served by {holder}: stop it "
                f"first, or give this serve another --instance (lock {path})"
            )
            raise ConfigError(msg) from None
        handle.seek(0)
        handle.truncate()
        handle.write(identity.process + "\n")
        handle.flush()
        yield
    finally:
        handle.close()


def label_run_owner() -> dict[str, str]:
    """Inside a flow run started by a serve process: record that serve on the run (labels).

    Returns the labels set (empty outside serve or outside a flow run). Never raises: the
    record helps a later cleanup and must not fail the run.
    """
    owner = ServeIdentity.decode(os.environ.get(OWNER_ENV, ""))
    if owner is None:
        return {}
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if not run_id:
        return {}
    labels = {OWNER_LABEL: owner.instance, OWNER_PROCESS_LABEL: owner.process}
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(uuid.UUID(str(run_id)), labels)  # type: ignore[arg-type]
    except Exception:  # a missing label costs a cleanup, not the run
        logger.warning("could not label flow run %s with its serve process", run_id, exc_info=True)
        return {}
    return labels


def _owner_of(labels: dict[str, Any], tags: list[str]) -> str | None:
    """The serve instance a run belongs to: its label, else the tag its deployment gave it."""
    owner = labels.get(OWNER_LABEL)
    if isinstance(owner, str) and owner:
        return owner
    tagged = [t.removeprefix(_TAG_PREFIX) for t in tags if t.startswith(_TAG_PREFIX)]
    return tagged[0] if len(tagged) == 1 else None


def crash_orphaned_runs(
    deployments: list[str], *, instance: str, reason: str | None = None
) -> list[str]:
    """Mark the runs of ``instance`` left Running, Pending or Cancelling as Crashed.

    Called when ``defectscan serve`` starts, holding :func:`serve_lock`: a serve process that
    was killed cannot report its runs' end, and a run that stays Running holds its
    deployment's concurrency slot (one retrain at a time) forever. Only runs of these
    deployments (``flow/deployment``) that belong to this instance are touched: a run
    executed by another serve (its label), or created from another serve's registration and
    not yet started (its tag), is left alone. Returns the names of the runs marked.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    message = reason or (
        f"left running by defectscan serve instance {instance}, which stopped without ending it"
    )
    marked: list[str] = []
    with get_client(sync_client=True) as client:
        names = []
        for full in deployments:
            try:
                names.append(client.read_deployment_by_name(full).name)
            except ObjectNotFound:
                continue
        if not names:
            return marked
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names)),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(
                        any_=[StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]
                    )
                )
            ),
        )
        for run in runs:
            owner = _owner_of(dict(run.labels or {}), list(run.tags or []))
            if owner != instance:
                logger.info(
                    "flow run %s (%s) is %s under serve %s, not %s: left alone",
                    run.name,
                    run.id,
                    run.state_name,
                    owner or "unknown",
                    instance,
                )
                continue
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            logger.warning(
                "flow run %s (%s) was left %s: marked crashed", run.name, run.id, run.state_name
            )
            marked.append(run.name)
    return marked


def retire_monitor_deployments(lines: list[str]) -> list[str]:
    """Pause the schedules of ``line-monitor/monitor-<line>`` deployments an older serve left.

    Monitors are long-lived processes now, not deployments: a scheduled monitor deployment
    would keep creating a run every interval that nobody serves (or, with a worker, a new
    process per run beside the real monitor). Returns the names of the deployments paused.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowFilter,
        FlowFilterName,
    )

    if not lines:
        return []
    paused: list[str] = []
    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["line-monitor"])),
            deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=[f"monitor-{line}" for line in lines])
            ),
        )
        for deployment in found:
            if deployment.paused:
                continue
            client.pause_deployment(deployment.id)
            paused.append(f"line-monitor/{deployment.name}")
            logger.warning(
                "paused the schedule of deployment line-monitor/%s: line monitors are long-lived "
                "processes, not deployments (serve supervises them); delete it with `prefect "
                "deployment delete line-monitor/%s`",
                deployment.name,
                deployment.name,
            )
    return paused
