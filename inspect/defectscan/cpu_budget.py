"""Hold a background process to a share of a core while the line is busy.

A low priority (``nice``) is not enough on a 2-core line: the monitor's threads leave short
idle moments between and inside batches, and a niced job fills them, taking about a third of
a core and a fifth of the line's speed. :class:`CpuBudget` meters the job instead: a token
bucket of CPU seconds, filled at ``share`` cores, drained by what the job used (its
``utime + stime`` from ``/proc/<pid>/stat``); while the line is busy and the job has overspent,
it is held with ``SIGSTOP`` until the bucket refills, then released with ``SIGCONT``. When the
line is idle the job runs free. :meth:`CpuBudget.stop` always releases a held job, so that a
job that is terminated or waited for next is never left stopped.

On a system without ``/proc`` (not Linux) the budget is not enforced; the niceness still is.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["CpuBudget", "process_cpu_seconds"]

logger = logging.getLogger(__name__)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far, all its threads; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class CpuBudget:
    """Meter process ``pid`` to ``share`` cores while ``busy()`` (see the module docstring).

    :meth:`step` takes one decision; :meth:`start` calls it every ``tick`` seconds in a
    daemon thread. ``burst`` is how many CPU seconds the job may run ahead of its share
    before it is held (a short burst keeps the holds short: a job held for long while it
    holds no lock the line needs is harmless, but short holds keep its progress even).
    """

    def __init__(
        self,
        pid: int,
        share: float,
        *,
        busy: Callable[[], bool],
        burst: float = 0.1,
        cpu_seconds: Callable[[int], float | None] = process_cpu_seconds,
        clock: Callable[[], float] = time.monotonic,
        send: Callable[[int, int], None] = os.kill,
    ) -> None:
        if share <= 0:
            msg = f"share must be > 0 cores, not {share}"
            raise ValueError(msg)
        self.pid = pid
        self.share = share
        self.burst = burst
        self._busy = busy
        self._cpu_seconds = cpu_seconds
        self._clock = clock
        self._send = send
        self._lock = threading.Lock()
        self._tokens = burst
        self._last_t = clock()
        first = cpu_seconds(pid)
        self._last_cpu = 0.0 if first is None else first
        self.held = False
        self._held_since = 0.0
        self._held_total = 0.0
        self.holds = 0
        self.gone = first is None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def held_s(self) -> float:
        """Seconds the job has been held so far (it made no progress then)."""
        with self._lock:
            extra = self._clock() - self._held_since if self.held else 0.0
            return self._held_total + extra

    def step(self) -> None:
        """Refill the bucket, charge what the job used, hold or release it."""
        with self._lock:
            if self.gone:
                return
            now = self._clock()
            cpu = self._cpu_seconds(self.pid)
            if cpu is None:  # the job ended
                self.gone = True
                self._mark_released(now)
                return
            dt, used = now - self._last_t, cpu - self._last_cpu
            self._last_t, self._last_cpu = now, cpu
            self._tokens = min(self._tokens + self.share * dt - used, self.burst)
            if not self._busy():
                self._tokens = self.burst  # an idle line forgives the debt
                self._release(now)
            elif self._tokens < 0:
                self._hold(now)
            else:
                self._release(now)

    def start(self, tick: float = 0.05) -> CpuBudget:
        """Step every ``tick`` seconds in a daemon thread until :meth:`stop`."""

        def loop() -> None:
            while not self._stop.wait(tick):
                try:
                    self.step()
                except Exception:  # metering must never take the job (or the line) down
                    logger.exception("CPU budget of pid %d: step failed; released", self.pid)
                    self.stop(join=False)
                    return

        self._thread = threading.Thread(target=loop, name="defectscan-cpu-budget", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, join: bool = True) -> None:
        """Stop metering and release the job if it is held (before it is terminated or waited)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if join and thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        with self._lock:
            self._release(self._clock())

    # ------------------------------------------------------------------ signals

    def _hold(self, now: float) -> None:
        if self.held:
            return
        try:
            self._send(self.pid, signal.SIGSTOP)
        except ProcessLookupError:
            self.gone = True
            return
        self.held, self._held_since = True, now
        self.holds += 1

    def _release(self, now: float) -> None:
        if not self.held:
            return
        try:
            self._send(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            self.gone = True
        self._mark_released(now)

    def _mark_released(self, now: float) -> None:
        if self.held:
            self._held_total += now - self._held_since
            self.held = False
