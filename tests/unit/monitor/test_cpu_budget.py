"""A background job held to its share of a core while the line inspects (SIGSTOP/SIGCONT)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from defectscan.cpu_budget import CpuBudget, process_cpu_seconds
from defectscan.engine_upgrade import EngineOptions, EngineUpgrader

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


class _Job:
    """A job whose CPU use and clock the test moves by hand; records the signals sent."""

    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0
        self.sent: list[int] = []

    def run(self, seconds: float, cores: float) -> None:
        self.now += seconds
        if not self.sent or self.sent[-1] != signal.SIGSTOP:
            self.cpu += seconds * cores

    def budget(self, busy: list[bool], share: float = 0.2) -> CpuBudget:
        return CpuBudget(
            1234,
            share,
            busy=lambda: busy[0],
            burst=0.1,
            cpu_seconds=lambda _pid: self.cpu,
            clock=lambda: self.now,
            send=lambda _pid, sig: self.sent.append(sig),
        )


def test_a_busy_line_holds_the_job_to_its_share_and_an_idle_one_frees_it() -> None:
    job, busy = _Job(), [True]
    budget = job.budget(busy)
    # a job that would take a whole core gets about 0.2 of one over a minute
    for _ in range(1200):
        job.run(0.05, cores=1.0)
        budget.step()
    assert 0.17 <= job.cpu / job.now <= 0.23
    assert budget.holds > 10
    assert 0.7 * job.now <= budget.held_s <= 0.9 * job.now
    # the line goes idle: the job is released at the next step and runs free
    busy[0] = False
    job.run(0.05, cores=1.0)
    budget.step()
    assert not budget.held
    before = job.cpu
    for _ in range(20):
        job.run(0.05, cores=1.0)
        budget.step()
    assert job.cpu - before == pytest.approx(1.0)
    assert not budget.held
    # busy again: no debt was carried over from the idle time, the burst runs first
    busy[0] = True
    job.run(0.05, cores=1.0)
    budget.step()
    assert not budget.held
    job.run(0.1, cores=1.0)
    budget.step()
    assert budget.held
    # stop() always releases a held job
    budget.stop()
    assert job.sent[-1] == signal.SIGCONT
    assert not budget.held


def test_a_job_under_its_share_is_never_held_and_an_ended_one_is_let_be() -> None:
    job, busy = _Job(), [True]
    budget = job.budget(busy, share=0.5)
    for _ in range(200):
        job.run(0.05, cores=0.3)
        budget.step()
    assert job.sent == []
    job.cpu = None  # type: ignore[assignment]  # /proc/<pid> is gone
    budget.step()
    assert budget.gone
    budget.stop()
    assert job.sent == []


def _spin() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_real_job_is_held_to_its_share_and_runs_again_after_stop() -> None:
    proc = _spin()
    try:
        time.sleep(0.3)
        start = process_cpu_seconds(proc.pid)
        assert start is not None
        budget = CpuBudget(proc.pid, 0.2, busy=lambda: True).start(tick=0.05)
        t0 = time.monotonic()
        time.sleep(3.0)
        used = (process_cpu_seconds(proc.pid) or 0.0) - start
        elapsed = time.monotonic() - t0
        budget.stop()
        # the share, a burst and a tick or two of slack; unmetered it would take ~3 s
        assert used <= 0.2 * elapsed + 0.35, used
        assert budget.holds > 0
        assert _state(proc.pid) != "T"  # released
        resumed = process_cpu_seconds(proc.pid) or 0.0
        time.sleep(0.5)
        assert (process_cpu_seconds(proc.pid) or 0.0) > resumed
    finally:
        proc.kill()
        proc.wait(10)


def test_closing_the_monitor_releases_a_held_job_before_terminating_it() -> None:
    """A held (SIGSTOPped) job would not see SIGTERM: close() releases it first."""
    upgrader = EngineUpgrader(EngineOptions(), line="L1", event=lambda *_a: None)
    proc = _spin()
    spent = [0.0]

    def overspent(_pid: int) -> float:  # the job is always past its share
        spent[0] += 1.0
        return spent[0]

    budget = CpuBudget(proc.pid, 0.1, busy=lambda: True, cpu_seconds=overspent)
    budget.step()
    assert budget.held
    deadline = time.monotonic() + 5
    while _state(proc.pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _state(proc.pid) == "T"
    upgrader._proc, upgrader._budget = proc, budget
    t0 = time.monotonic()
    upgrader.close()
    # ended by the SIGTERM at once, not by the SIGKILL that follows a 10 s wait
    assert proc.returncode == -signal.SIGTERM
    assert time.monotonic() - t0 < 5


def test_time_held_does_not_count_towards_the_job_timeout() -> None:
    upgrader = EngineUpgrader(EngineOptions(), line="L1", event=lambda *_a: None)
    job, busy = _Job(), [True]
    budget = job.budget(busy)
    upgrader._job_started = time.monotonic() - 100.0
    for _ in range(400):  # 20 s, held most of them
        job.run(0.05, cores=1.0)
        budget.step()
    upgrader._budget = budget
    assert budget.held_s > 10
    assert upgrader._job_running_s() == pytest.approx(100.0 - budget.held_s, abs=1.0)
    # and the line counts as busy for a while after its last image only
    assert not upgrader._line_busy()
    upgrader._last_image = time.monotonic()
    assert upgrader._line_busy()
