"""Processes as Linux shows them in /proc: alive or gone, whose children, which command."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["alive", "children", "cmdline", "monitors_of"]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def children(pid: int) -> list[int]:
    """The running children of process ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                out.append(int(entry))
    return out


def cmdline(pid: int) -> list[str]:
    """The command line of process ``pid`` (empty once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def monitors_of(pid: int) -> dict[str, int]:
    """The ``defectscan monitor --line NAME`` children of process ``pid``, by line."""
    out = {}
    for child in children(pid):
        argv = cmdline(child)
        if "monitor" in argv and "--line" in argv:
            out[argv[argv.index("--line") + 1]] = child
    return out
