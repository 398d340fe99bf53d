"""A production line in miniature: oracle checkpoints, camera parts, row counts.

The oracle UNet (``helpers.oracle``) marks exactly the dark pixels as defects, so every part's
right verdict is known: parts with a dark rectangle fail, plain parts pass.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from defectscan.model.checkpoint import load_checkpoint, save_checkpoint
from defectscan.pipeline import InspectionResult, Inspector
from defectscan.sources.base import ImageRecord
from helpers.images import encode, gray_frame
from helpers.oracle import oracle_unet

__all__ = [
    "REPO",
    "Crashy",
    "HeldApi",
    "cli_env",
    "count",
    "oracle_checkpoint",
    "rows",
    "start_cli",
    "stop",
    "wait_for",
    "write_parts",
]

REPO = Path(__file__).resolve().parents[2]


def oracle_checkpoint(path: Path, *, gain: float = 60.0, name: str = "oracle") -> Path:
    """A sigmoid oracle checkpoint; another ``gain`` gives other weights (another version)."""
    net, spec = oracle_unet("sigmoid", gain=gain, tile=64, overlap=16)
    spec = spec.replace(name=name)
    save_checkpoint(net, spec, path)
    load_checkpoint(path)  # fail here, not in a subprocess, if it does not load
    return path


def part_bytes(i: int, *, fail: bool, ext: str = ".png") -> bytes:
    """Part number ``i`` (its bytes differ per i): a dark rectangle when ``fail``."""
    rects = ((10 + i % 20, 12, 16, 10),) if fail else ()
    return encode(gray_frame(72, 96, rects=rects, discs=(), seed=i).image, ext)


def write_parts(
    folder: Path, n: int, *, start: int = 0, fail_every: int = 3, tmp_then_rename: bool = True
) -> list[Path]:
    """``n`` parts written as a camera does (``*.tmp``, renamed); every ``fail_every``-th fails."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        path = folder / f"part{i:05d}.png"
        data = part_bytes(i, fail=i % fail_every == 0)
        if tmp_then_rename:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        else:
            path.write_bytes(data)
        out.append(path)
    return out


def rows(url: str, sql: str = "SELECT count(*) FROM inspections") -> list[tuple[object, ...]]:
    """Run a query on the results database (a fresh engine, so no cache hides a change)."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(sa.text(sql))]
    finally:
        engine.dispose()


def count(url: str, table: str = "inspections") -> int:
    """Rows in ``table``; 0 while the database or the table does not exist yet."""
    try:
        return int(rows(url, f"SELECT count(*) FROM {table}")[0][0])
    except sa.exc.DBAPIError:
        return 0


def cli_env(tmp_path: Path, database_url: str, **extra: str) -> dict[str, str]:
    """Environment for a ``defectscan`` subprocess writing to ``database_url``."""
    env = dict(os.environ)
    env.update(
        {
            "DEFECTSCAN_DATABASE_URL": database_url,
            "DEFECTSCAN_VAR_DIR": str(tmp_path / "var"),
            "OMP_WAIT_POLICY": "PASSIVE",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "inspect")]),
            "PYTHONUNBUFFERED": "1",
            # a native crash (SIGABRT, SIGSEGV) leaves every thread's stack in the log
            "PYTHONFAULTHANDLER": "1",
            # several monitors run side by side in the tests: no /metrics unless asked for
            "DEFECTSCAN_METRICS_PORT": "0",
        }
    )
    env.update(extra)
    return env


def start_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``defectscan ARGS`` in its own process group, output to ``log``."""
    fh = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "defectscan.cli", *args],
        env=env,
        cwd=REPO,
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL, timeout: float = 60) -> int:
    """Send ``sig`` and wait; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=timeout)


def wait_for(
    predicate: Callable[[], bool], *, timeout: float = 60.0, interval: float = 0.1, what: str = ""
) -> None:
    """Poll until ``predicate()`` holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    msg = f"timed out after {timeout:.0f} s waiting for {what or predicate}"
    raise AssertionError(msg)


class Crashy(Inspector):
    """An inspector that crashes on every record whose id or uri contains ``poison``."""

    def inspect(
        self, records: Iterable[ImageRecord], *, keep_images: bool = False
    ) -> Iterator[InspectionResult]:
        for result in super().inspect(records, keep_images=keep_images):
            rec = result.record
            if "poison" in f"{rec.id} {rec.uri}" and rec.error_kind is None:
                raise RuntimeError("segfault-like crash in a native library")
            yield result

    @classmethod
    def wrap(cls, base: Inspector) -> Crashy:
        """The same model and settings, crashing on poison."""
        return cls(
            base.backend,
            base.spec,
            model_version=base.model_version,
            checkpoint=base.checkpoint,
            batch_size=base.batch_size,
        )


class HeldApi:
    """A Prefect API on a real socket that answers nothing until released, then 503.

    A Prefect server still starting, or a hung one: ``asked`` is set once a request came in;
    ``release`` lets every held request have its answer; ``close`` ends it.
    """

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/api"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> None:
        with conn:
            conn.recv(65536)
            self.asked.set()
            self.release.wait(120)
            with contextlib.suppress(OSError):  # the client went away while held
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.release.set()
        self._sock.close()
