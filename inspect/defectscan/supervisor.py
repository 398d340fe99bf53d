"""Line monitors as children of ``defectscan serve``: restarted with back-off, stopped on exit.

A line monitor is a long-lived process: it owns the line's model, its stable consumer name,
archive retention and metrics for as long as it runs, and reports its work to Prefect as
bounded flow runs from inside itself. When ``serve`` runs the monitors of a plant, it starts
one ``defectscan monitor --line NAME`` per line with a source and supervises it:

- a monitor that exits (crash, kill, a fault it cannot ride out) is started again after a
  back-off that doubles with each quick failure (``Backoff``) and resets once a monitor has
  run long enough to count as healthy; each exit is logged and recorded as an ``events`` row;
- when serve stops, each monitor gets SIGTERM (it finishes the batch in hand, settles it and
  exits 0) and SIGKILL only after a grace period;
- a monitor gets SIGTERM when serve dies, even by SIGKILL (a parent-death signal), so no
  monitor runs on unsupervised beside the next serve;
- each monitor serves /metrics on its own port (:func:`metrics_ports`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from defectscan.config import Settings
from defectscan.errors import ConfigError
from defectscan.orchestration import OWNER_ENV, spawn_dying_with_parent

__all__ = [
    "Backoff",
    "ChildExit",
    "ChildSpec",
    "MonitorSupervisor",
    "event_recorder",
    "metrics_ports",
    "monitor_children",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """How long to wait before starting a child again after it exited."""

    #: Delay after the first quick failure; it doubles with each further one.
    first_s: float = 2.0
    #: The delay never grows beyond this.
    max_s: float = 300.0
    #: A child that ran at least this long counts as healthy: the next delay is ``first_s``.
    healthy_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            msg = f"restart back-off must satisfy 0 < first ({self.first_s}) <= max ({self.max_s})"
            raise ConfigError(msg)

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` quick failures in a row (1 for the first)."""
        return float(min(self.max_s, self.first_s * 2 ** max(0, failures - 1)))


@dataclass(frozen=True)
class ChildSpec:
    """One supervised child: its name, its line and its command line."""

    name: str
    line: str
    argv: tuple[str, ...]
    metrics_port: int = 0
    env: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ChildExit:
    """A child that exited while it was meant to run."""

    spec: ChildSpec
    pid: int
    code: int
    ran_s: float
    restarts: int
    delay_s: float


@dataclass
class _Slot:
    spec: ChildSpec
    proc: subprocess.Popen[Any] | None = None
    started: float = 0.0
    failures: int = 0
    restarts: int = 0
    next_start: float = 0.0
    exits: list[ChildExit] = field(default_factory=list)


def metrics_ports(settings: Settings, lines: list[str]) -> dict[str, int]:
    """A distinct /metrics port per line: the line's ``metrics_port`` if the plant file sets
    one, else the next free port from the service's ``metrics_port`` (0 turns /metrics off)."""
    explicit: dict[str, int] = {}
    for name in lines:
        cfg = settings.line(name)
        if cfg is not None and cfg.metrics_port is not None:
            explicit[name] = cfg.metrics_port
    taken: dict[int, str] = {}
    for name, port in explicit.items():
        if port and port in taken:
            msg = (
                f"lines {taken[port]} and {name} both serve /metrics on port {port}: give each "
                "line its own metrics_port in the plant file"
            )
            raise ConfigError(msg)
        taken[port] = name
    out: dict[str, int] = {}
    base = settings.metrics_port
    candidate = base
    for name in lines:
        if name in explicit:
            out[name] = explicit[name]
            continue
        if not base:
            out[name] = 0
            continue
        while candidate in taken:
            candidate += 1
        if candidate > 65535:
            msg = f"no free metrics port above {base} for line {name}: set metrics_port per line"
            raise ConfigError(msg)
        out[name] = candidate
        taken[candidate] = name
    return out


def monitor_children(settings: Settings, *, python: str | None = None) -> list[ChildSpec]:
    """``defectscan monitor --line NAME`` for each line with a source, each on its own port."""
    lines = [name for name, cfg in sorted(settings.lines.items()) if cfg.source]
    ports = metrics_ports(settings, lines)
    env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
    out = []
    for name in lines:
        argv = (
            python or sys.executable,
            "-m",
            "defectscan.cli",
            "monitor",
            "--line",
            name,
            "--metrics-port",
            str(ports[name]),
        )
        out.append(ChildSpec(f"monitor-{name}", name, argv, ports[name], env))
    return out


class MonitorSupervisor:
    """Runs children, starts each again after it exits (with back-off), stops them on exit.

    ``start()`` starts a thread that owns the children; ``stop()`` asks each for a clean stop
    (SIGTERM), waits up to ``stop_grace_s`` and kills what is left. ``on_exit`` hears of every
    exit that was not asked for (log it, record an event).
    """

    def __init__(
        self,
        children: list[ChildSpec],
        *,
        backoff: Backoff | None = None,
        stop_grace_s: float = 60.0,
        on_exit: Callable[[ChildExit], None] | None = None,
        poll_s: float = 0.2,
    ) -> None:
        names = [c.name for c in children]
        if len(set(names)) != len(names):
            msg = f"two supervised children share a name: {names}"
            raise ConfigError(msg)
        self.backoff = backoff or Backoff()
        self.stop_grace_s = stop_grace_s
        self.on_exit = on_exit
        self.poll_s = poll_s
        self._slots = [_Slot(c) for c in children]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MonitorSupervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every child, then keep them running until :meth:`stop`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="defectscan-supervisor")
        self._thread.start()

    def stop(self) -> None:
        """SIGTERM every child, SIGKILL it after the grace period; wait for the thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def pids(self) -> dict[str, int | None]:
        """The pid of each child now (None while it waits for its restart)."""
        with self._lock:
            return {s.spec.name: (s.proc.pid if s.proc else None) for s in self._slots}

    def exits(self) -> list[ChildExit]:
        """Every exit seen so far (oldest first)."""
        with self._lock:
            return [e for s in self._slots for e in s.exits]

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                for slot in self._slots:
                    try:
                        self._tend(slot)
                    except Exception:  # one child's trouble must not end the supervision
                        logger.exception("supervising %s failed; trying again", slot.spec.name)
                        slot.next_start = time.monotonic() + self.backoff.first_s
                self._stopping.wait(self.poll_s)
        finally:
            self._terminate_all()

    def _tend(self, slot: _Slot) -> None:
        now = time.monotonic()
        if slot.proc is not None:
            code = slot.proc.poll()
            if code is None:
                return
            ran = now - slot.started
            slot.failures = 1 if ran >= self.backoff.healthy_s else slot.failures + 1
            delay = self.backoff.delay(slot.failures)
            slot.restarts += 1
            slot.next_start = now + delay
            gone = ChildExit(slot.spec, slot.proc.pid, code, ran, slot.restarts, delay)
            with self._lock:
                slot.proc = None
                slot.exits.append(gone)
            logger.warning(
                "%s (pid %d) exited with code %d after %.1f s; starting it again in %.1f s "
                "(restart %d)",
                slot.spec.name,
                gone.pid,
                code,
                ran,
                delay,
                gone.restarts,
            )
            if self.on_exit is not None:
                try:
                    self.on_exit(gone)
                except Exception:
                    logger.exception("could not report the exit of %s", slot.spec.name)
            return
        if now < slot.next_start:
            return
        proc = spawn_dying_with_parent(
            list(slot.spec.argv),
            sig=signal.SIGTERM,
            env=dict(slot.spec.env) if slot.spec.env is not None else None,
            # Its own session: a Ctrl-C at serve's terminal reaches serve, which stops the
            # children in order, instead of reaching every monitor at once.
            start_new_session=True,
        )
        with self._lock:
            slot.proc = proc
            slot.started = time.monotonic()
        logger.info(
            "started %s (pid %d, /metrics port %s)",
            slot.spec.name,
            proc.pid,
            slot.spec.metrics_port or "off",
        )

    def _terminate_all(self) -> None:
        running = [s for s in self._slots if s.proc is not None and s.proc.poll() is None]
        for slot in running:
            assert slot.proc is not None
            logger.info("stopping %s (pid %d)", slot.spec.name, slot.proc.pid)
            slot.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        for slot in running:
            assert slot.proc is not None
            try:
                slot.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s (pid %d) did not stop within %.0f s: killed",
                    slot.spec.name,
                    slot.proc.pid,
                    self.stop_grace_s,
                )
                slot.proc.kill()
                slot.proc.wait()
        with self._lock:
            for slot in self._slots:
                slot.proc = None


def event_recorder(database_url: str) -> Callable[[ChildExit], None]:
    """An ``on_exit`` that records each exit as an ``events`` row (``monitor_exited``)."""

    def record(gone: ChildExit) -> None:
        from sqlalchemy.orm import Session

        from defectscan.store.db import make_engine, retrying, session_factory
        from defectscan.store.operations import record_event

        message = (
            f"{gone.spec.name} (pid {gone.pid}) exited with code {gone.code} after "
            f"{gone.ran_s:.1f} s; serve starts it again in {gone.delay_s:.1f} s "
            f"(restart {gone.restarts})"
        )

        def unit(*, session: Session) -> None:
            record_event(
                session=session,
                kind="monitor_exited",
                level="error" if gone.code else "warning",
                message=message,
                line=gone.spec.line,
                details={
                    "pid": gone.pid,
                    "exit_code": gone.code,
                    "ran_s": round(gone.ran_s, 3),
                    "restart": gone.restarts,
                    "delay_s": gone.delay_s,
                },
            )

        engine = make_engine(database_url)
        try:
            retrying(unit, sessions=session_factory(engine, write=True), attempts=3)
        finally:
            engine.dispose()

    return record
