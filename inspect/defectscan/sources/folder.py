"""A camera folder as an image source: claim by atomic rename, settle into done/ or rejected/.

Layout under ``root`` (only the top level of ``root`` is watched: cameras write there, and the
source's own folders live beside the images; files in other subfolders are never taken)::

    root/x.png                          written by the camera (``x.png.tmp`` then renamed, or
                                        in place: only files whose size and mtime stay steady
                                        over ``stable_polls`` polls are taken, or at once
                                        when the watcher saw the writer close the file or
                                        rename it into ``root``)
    root/processing/x.png               claimed, being inspected
    root/processing/.deliveries/x.png.json
                                        who holds it and how often it was handed out; survives
                                        kill -9, so a crash-looping image ends up poisoned
    root/processing/.owners/<owner>.lock
                                        held (flock) while that source lives: a file whose
                                        owner's lock is free belonged to a crashed run and is
                                        delivered again
    root/done/2026-11-25/x.png          inspected (``after="move"``; ``after="delete"`` removes)
    root/rejected/x.png                 quarantined, with ``x.png.error.json`` (reason, time,
                                        deliveries)

Records are path records, read without following symlinks. ``id`` is the file's name in
``processing/`` (the camera's name, with ``~N`` added only when that name is already taken),
stable across redeliveries; ``source_key`` is ``folder:<root>/<camera's name>:<size>:<mtime_ns>``
as captured at the first claim, so the same name written again later is a new delivery. ``uri`` is
the ``file:`` URI of the place the camera wrote the image (``root/x.png``): the one name an
operator knows, stable across redeliveries, whereas ``processing/`` is transient and the final
place (``done/<date>/``, ``rejected/`` or nowhere after a delete) is only decided when the record
is settled. Reviews and retraining find images by sha256 in the archive, never by this URI.

Several sources (processes, or machines sharing a local-semantics filesystem) may serve one
folder: the rename into ``processing/`` decides who won a file. Owner liveness uses ``flock``,
which network filesystems may not honour: there, run one source per folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from defectscan.errors import ConfigError, SourceError
from defectscan.sources.base import ImageRecord, SourceFaultError

__all__ = ["IMAGE_SUFFIXES", "FolderSource"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"}
)

_PROCESSING = "processing"
_DONE = "done"
_REJECTED = "rejected"
_DELIVERIES = ".deliveries"
_OWNERS = ".owners"
_RESERVED = frozenset({_PROCESSING, _DONE, _REJECTED})
# errno values meaning "this filesystem cannot hard-link": fall back to check-then-rename.
_NO_LINK = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK})


@dataclass
class _Seen:
    """What the last polls saw of one candidate file."""

    size: int
    mtime_ns: int
    polls: int
    last_poll: float


@dataclass
class _Sidecar:
    """The persistent state of one claimed file (``processing/.deliveries/<name>.json``)."""

    owner: str | None
    deliveries: int
    original: str
    last_error: str | None = None
    size: int | None = None  # the file's size and mtime at the first claim (its identity)
    mtime_ns: int | None = None

    def dump(self) -> bytes:
        data = {
            "owner": self.owner,
            "deliveries": self.deliveries,
            "original": self.original,
            "last_error": self.last_error,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
        }
        return json.dumps(data).encode()

    @classmethod
    def load(cls, raw: bytes, name: str) -> _Sidecar:
        try:
            data = json.loads(raw)
            return cls(
                owner=data.get("owner"),
                deliveries=int(data.get("deliveries", 1)),
                original=str(data.get("original") or name),
                last_error=data.get("last_error"),
                size=_int_or_none(data.get("size")),
                mtime_ns=_int_or_none(data.get("mtime_ns")),
            )
        except (ValueError, TypeError, AttributeError):
            # A damaged sidecar: the file was delivered at least once; nobody owns it.
            return cls(owner=None, deliveries=1, original=name)


class FolderSource:
    """Images from a camera folder, claimed by atomic rename into ``root/processing/``.

    ``stable_polls`` polls at least ``poll_interval`` seconds apart must see the same size and
    mtime before a file is taken (``1`` takes a file at once: for cameras that always write
    ``*.tmp`` and rename). While the folder is watched, a file is taken at once, without
    waiting for polls, when its writer closed it after writing (inotify's close-write) or
    renamed it into ``root``, and it has not changed since (``take_closed``; turn it off for
    a camera that closes and reopens a file while writing it). ``rescan_interval`` bounds how
    long a dropped filesystem event can delay a file, and how often files of crashed sources
    in ``processing/`` are looked for.
    After ``max_deliveries`` unsettled deliveries a file is handed out as poison, so it is
    rejected with an error row instead of crash-looping the monitor.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        line: str | None = None,
        camera: str | None = None,
        after: Literal["move", "delete"] = "move",
        stable_polls: int = 2,
        poll_interval: float = 0.5,
        rescan_interval: float = 5.0,
        max_deliveries: int = 5,
        suffixes: Iterable[str] | None = IMAGE_SUFFIXES,
        watch: bool = True,
        take_closed: bool = True,
    ) -> None:
        if after not in ("move", "delete"):
            msg = f"after={after!r} is not supported: use 'move' (into done/) or 'delete'"
            raise ConfigError(msg)
        if stable_polls < 1 or max_deliveries < 1:
            msg = "stable_polls and max_deliveries must be at least 1"
            raise ConfigError(msg)
        if poll_interval <= 0 or rescan_interval <= 0:
            msg = "poll_interval and rescan_interval must be positive (seconds)"
            raise ConfigError(msg)
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            msg = (
                f"camera folder {root_path} does not exist or is not a folder: "
                "create it or fix the source path"
            )
            raise ConfigError(msg)
        self.root = root_path.resolve()
        self.name = f"folder:{self.root}"
        self.line = line
        self.camera = camera
        self.after = after
        self.stable_polls = stable_polls
        self.poll_interval = poll_interval
        self.rescan_interval = rescan_interval
        self.max_deliveries = max_deliveries
        self.suffixes = None if suffixes is None else frozenset(s.lower() for s in suffixes)
        self.processing = self.root / _PROCESSING
        self.done = self.root / _DONE
        self.rejected = self.root / _REJECTED
        self._sidecars = self.processing / _DELIVERIES
        self._owners = self.processing / _OWNERS
        for folder in (self.processing, self.done, self.rejected, self._sidecars, self._owners):
            folder.mkdir(parents=True, exist_ok=True)

        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._seen: dict[str, _Seen] = {}
        self._redeliver: list[str] = []  # names in processing/ we own and must hand out again
        self._inflight: set[str] = set()
        # name -> (size, mtime_ns) when the watcher saw its writer finish (close or rename in)
        self.take_closed = take_closed
        self._complete: dict[str, tuple[int, int]] = {}
        self._complete_lock = threading.Lock()
        self._last_sweep = float("-inf")
        self._last_scan = float("-inf")
        self._closed = False
        self._owner_fd = self._hold_owner_lock()
        self._observer: Any = None
        if watch:
            self._start_watching()

    # ------------------------------------------------------------------ protocol

    def claim(self, n: int, *, timeout: float = 0.0) -> list[ImageRecord]:
        """Up to ``n`` stable files, waiting at most ``timeout`` seconds for the first one."""
        if n <= 0:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            with self._lock:
                self._check_open()
                now = time.monotonic()
                if now - self._last_sweep >= self.rescan_interval:
                    self._sweep_processing()
                    self._last_sweep = now
                records = self._take_redeliveries(n)
                unstable = False
                if len(records) < n:
                    self._wake.clear()
                    stable, unstable = self._scan(now)
                    records += self._claim_new(stable, n - len(records))
                if records:
                    return records
                idle = self.rescan_interval if self._observer is not None else self.poll_interval
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # Unstable files need another poll soon; otherwise sleep (without the lock, so
            # other threads can settle records) until a filesystem event, or the periodic
            # rescan, says something changed.
            self._wake.wait(min(self.poll_interval if unstable else idle, remaining))

    def ack(self, records: Sequence[ImageRecord]) -> None:
        """Move inspected files into ``done/<UTC date>/`` (or delete them)."""
        failures: list[str] = []
        with self._lock:
            day = datetime.now(UTC).strftime("%Y-%m-%d")
            for record in records:
                name = self._name_of(record)
                src = self.processing / name
                try:
                    if self.after == "delete":
                        src.unlink()
                    else:
                        _move_unique(src, self.done / day, name)
                except FileNotFoundError:
                    logger.warning("ack: %s is no longer in %s (settled twice?)", name, src.parent)
                except OSError as exc:
                    failures.append(f"{src}: {exc.strerror or exc}")
                    continue
                self._forget(name)
        if failures:
            msg = (
                f"could not settle {len(failures)} inspected file(s) ({'; '.join(failures)}): "
                f"check permissions and free space under {self.root}; they stay in "
                "processing/ and are delivered again on restart"
            )
            raise SourceFaultError(msg)

    def reject(self, record: ImageRecord, error: str) -> None:
        """Move the file into ``rejected/`` beside a ``<name>.error.json`` with the reason."""
        with self._lock:
            name = self._name_of(record)
            src = self.processing / name
            try:
                dst = _move_unique(src, self.rejected, name)
            except FileNotFoundError:
                logger.warning("reject: %s is no longer in %s", name, src.parent)
                self._forget(name)
                return
            except OSError as exc:
                msg = (
                    f"could not quarantine {src} into {self.rejected}: {exc.strerror or exc}; "
                    "check permissions and free space"
                )
                raise SourceFaultError(msg) from exc
            report = {
                "id": record.id,
                "original": record.meta.get("original", name),
                "uri": record.uri,
                "reason": error,
                "error_kind": record.error_kind,
                "deliveries": record.deliveries,
                "captured_at": record.captured_at.isoformat() if record.captured_at else None,
                "rejected_at": datetime.now(UTC).isoformat(),
                "source": self.name,
            }
            _write_atomic(dst.with_name(dst.name + ".error.json"), json.dumps(report, indent=2))
            self._forget(name)
            logger.info("rejected %s: %s", dst, error)

    def release(self, records: Sequence[ImageRecord], error: str, *, charge: bool = True) -> None:
        """Keep the files in ``processing/``; the next claim hands them out again.

        ``charge=False`` (a fault of the plant) takes the delivery back: it does not count
        toward ``max_deliveries``.
        """
        with self._lock:
            for record in records:
                name = self._name_of(record)
                self._inflight.discard(name)
                sidecar = self._read_sidecar(name)
                if sidecar is None or not (self.processing / name).exists():
                    logger.warning("release: %s is no longer in %s", name, self.processing)
                    continue
                sidecar.last_error = error
                if not charge:
                    sidecar.deliveries = max(0, sidecar.deliveries - 1)
                _write_atomic(self._sidecar_path(name), sidecar.dump())
                if name not in self._redeliver:
                    self._redeliver.append(name)
            self._wake.set()

    def renew(self, records: Sequence[ImageRecord]) -> None:
        """Nothing to do: a claimed file stays ours while this source's owner lock is held."""

    def backlog(self) -> int:
        """Candidate image files waiting at the top level of ``root``."""
        return sum(1 for _ in self._candidates())

    def close(self) -> None:
        """Stop watching and give up ownership: unsettled files go to the next source."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._observer is not None:
                with contextlib.suppress(Exception):  # a dying inotify thread must not block
                    self._observer.stop()
                    self._observer.join(timeout=2)
                self._observer = None
            with contextlib.suppress(OSError):
                (self._owners / f"{self.owner}.lock").unlink()
            os.close(self._owner_fd)

    def __enter__(self) -> FolderSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ scanning

    def _candidates(self) -> Iterator[os.DirEntry[str]]:
        try:
            entries = list(os.scandir(self.root))
        except OSError as exc:
            msg = f"cannot list camera folder {self.root}: {exc.strerror or exc}"
            raise SourceError(msg) from exc
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(".tmp") or name in _RESERVED:
                continue
            if self.suffixes is not None and os.path.splitext(name)[1].lower() not in self.suffixes:
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    yield entry

    def _scan(self, now: float) -> tuple[list[str], bool]:
        """Names whose size and mtime held still over ``stable_polls`` polls, oldest first."""
        seen: dict[str, _Seen] = {}
        stable: list[tuple[int, str]] = []
        unstable = False
        for entry in self._candidates():
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # claimed by another source between listing and stat
            prev = self._seen.get(entry.name)
            with self._complete_lock:
                finished = self._complete.get(entry.name)
            if finished == (st.st_size, st.st_mtime_ns):
                # Its writer closed it (or renamed it in) and it has not changed since.
                cur = _Seen(st.st_size, st.st_mtime_ns, polls=self.stable_polls, last_poll=now)
            elif prev is None or (prev.size, prev.mtime_ns) != (st.st_size, st.st_mtime_ns):
                cur = _Seen(st.st_size, st.st_mtime_ns, polls=1, last_poll=now)
            else:
                cur = prev
                if now - prev.last_poll >= self.poll_interval:
                    cur.polls += 1
                    cur.last_poll = now
            seen[entry.name] = cur
            if cur.polls >= self.stable_polls:
                stable.append((st.st_mtime_ns, entry.name))
            else:
                unstable = True
        self._seen = seen
        with self._complete_lock:
            for name in [n for n in self._complete if n not in seen]:
                del self._complete[name]  # claimed, or gone: forget it
        self._last_scan = now
        return [name for _, name in sorted(stable)], unstable

    def _claim_new(self, names: list[str], n: int) -> list[ImageRecord]:
        records: list[ImageRecord] = []
        for original in names:
            if len(records) >= n:
                break
            name = self._reserve(original)
            if name is None:
                continue
            records.append(self._hand_out(name))
        return records

    def _reserve(self, original: str) -> str | None:
        """Move ``root/original`` into ``processing/``; ``None`` if another source won it.

        The sidecar is created first (atomically, only if absent): the name is then ours, so
        the rename cannot replace another claimed file, and a file in ``processing/`` always
        has an owner unless it was put there by hand.
        """
        for name in _unique_names(original):
            if not self._create_sidecar(name, _Sidecar(self.owner, 0, original)):
                continue
            if (self.processing / name).exists():
                self._drop_sidecar(name)  # a file without sidecar: the sweep adopts it
                continue
            try:
                os.rename(self.root / original, self.processing / name)
            except FileNotFoundError:
                self._drop_sidecar(name)  # another source renamed it first
                self._seen.pop(original, None)
                return None
            except OSError as exc:
                self._drop_sidecar(name)
                logger.warning("cannot claim %s: %s", self.root / original, exc.strerror or exc)
                return None
            self._seen.pop(original, None)
            return name
        return None  # pragma: no cover - _unique_names is endless

    def _take_redeliveries(self, n: int) -> list[ImageRecord]:
        records: list[ImageRecord] = []
        while self._redeliver and len(records) < n:
            name = self._redeliver.pop(0)
            if (self.processing / name).exists():
                records.append(self._hand_out(name))
            else:
                self._drop_sidecar(name)
        return records

    def _hand_out(self, name: str) -> ImageRecord:
        """Count the delivery on disk (before anyone can crash on it), then build the record."""
        sidecar = self._read_sidecar(name) or _Sidecar(self.owner, 0, name)
        sidecar.owner = self.owner
        sidecar.deliveries += 1
        path = self.processing / name
        captured_at: datetime | None = None
        with contextlib.suppress(OSError):
            st = path.stat(follow_symlinks=False)
            captured_at = datetime.fromtimestamp(st.st_mtime, tz=UTC)
            if sidecar.size is None or sidecar.mtime_ns is None:
                sidecar.size, sidecar.mtime_ns = st.st_size, st.st_mtime_ns
        _write_atomic(self._sidecar_path(name), sidecar.dump())
        self._inflight.add(name)
        error_kind = error_message = None
        failed = sidecar.deliveries - 1
        if failed >= self.max_deliveries:
            error_kind = "poison"
            error_message = (
                f"{sidecar.original} failed {failed} times without being settled "
                f"(max_deliveries={self.max_deliveries}"
                + (f", last error: {sidecar.last_error}" if sidecar.last_error else "")
                + f"); quarantined in {self.rejected} so it cannot stall the line"
            )
            logger.warning("poison: %s", error_message)
        elif failed:
            logger.info("redelivering %s (delivery %d)", name, sidecar.deliveries)
        return ImageRecord(
            id=name,
            uri=(self.root / sidecar.original).as_uri(),
            path=path,
            camera=self.camera,
            line=self.line,
            captured_at=captured_at,
            source="folder",
            deliveries=sidecar.deliveries,
            error_kind=error_kind,
            error_message=error_message,
            meta={
                "original": sidecar.original,
                "processing": str(path),
                "nofollow": True,
                "source_key": (
                    f"folder:{self.root}/{sidecar.original}:{sidecar.size}:{sidecar.mtime_ns}"
                ),
            },
        )

    # ------------------------------------------------------------------ crash recovery

    def _sweep_processing(self) -> None:
        """Adopt files of crashed sources (free owner lock) and files without a sidecar."""
        by_owner: dict[str | None, list[str]] = {}
        for sidecar_path in _listdir(self._sidecars):
            if not sidecar_path.endswith(".json") or sidecar_path.startswith("."):
                continue
            name = sidecar_path[: -len(".json")]
            sidecar = self._read_sidecar(name)
            if sidecar is not None and sidecar.owner != self.owner:
                by_owner.setdefault(sidecar.owner, []).append(name)
        for owner, names in by_owner.items():
            if owner is None:
                self._adopt(names, expected_owner=None)
                continue
            fd = self._try_lock(owner)
            if fd is None:
                continue  # that source is alive
            try:
                self._adopt(names, expected_owner=owner)
                with contextlib.suppress(OSError):
                    (self._owners / f"{owner}.lock").unlink()
            finally:
                os.close(fd)
        # Files put into processing/ without a sidecar (by hand, or by an older layout).
        for name in _listdir(self.processing):
            if name.startswith(".") or not (self.processing / name).is_file():
                continue
            if self._sidecar_path(name).exists():
                continue
            if self._create_sidecar(name, _Sidecar(self.owner, 1, name)):
                logger.warning("adopting %s found in processing/ without an owner", name)
                self._queue(name)

    def _adopt(self, names: list[str], *, expected_owner: str | None) -> None:
        for name in names:
            sidecar = self._read_sidecar(name)
            if sidecar is None or sidecar.owner != expected_owner:
                continue  # adopted by someone else meanwhile
            if not (self.processing / name).exists():
                self._drop_sidecar(name)  # crashed after settling, before removing the sidecar
                continue
            sidecar.owner = self.owner
            _write_atomic(self._sidecar_path(name), sidecar.dump())
            logger.warning(
                "adopting %s from crashed source %s (delivered %d times)",
                name,
                expected_owner,
                sidecar.deliveries,
            )
            self._queue(name)

    def _queue(self, name: str) -> None:
        if name not in self._redeliver and name not in self._inflight:
            self._redeliver.append(name)

    def _hold_owner_lock(self) -> int:
        fd = self._try_lock(self.owner)
        if fd is None:  # pragma: no cover - the owner id is unique
            msg = f"owner lock {self.owner} is already held"
            raise SourceError(msg)
        return fd

    def _try_lock(self, owner: str) -> int | None:
        """An fd holding ``owner``'s lock, or ``None`` when that owner is alive."""
        fd = os.open(self._owners / f"{owner}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    # ------------------------------------------------------------------ sidecars

    def _sidecar_path(self, name: str) -> Path:
        return self._sidecars / f"{name}.json"

    def _read_sidecar(self, name: str) -> _Sidecar | None:
        try:
            raw = self._sidecar_path(name).read_bytes()
        except OSError:
            return None
        return _Sidecar.load(raw, name)

    def _create_sidecar(self, name: str, sidecar: _Sidecar) -> bool:
        """Create the sidecar only if none exists (atomic: written aside, then hard-linked)."""
        target = self._sidecar_path(name)
        tmp = self._sidecars / f".{name}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(sidecar.dump())
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            if target.exists():
                return False
            os.replace(tmp, target)
            return True
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return True

    def _drop_sidecar(self, name: str) -> None:
        with contextlib.suppress(OSError):
            self._sidecar_path(name).unlink()

    def _forget(self, name: str) -> None:
        self._inflight.discard(name)
        with contextlib.suppress(ValueError):
            self._redeliver.remove(name)
        self._drop_sidecar(name)

    def _name_of(self, record: ImageRecord) -> str:
        if record.path is None or record.path.parent != self.processing:
            msg = f"record {record.id} was not claimed from {self.name}: settle it at its source"
            raise SourceError(msg)
        return record.path.name

    def _check_open(self) -> None:
        if self._closed:
            msg = f"{self.name} is closed: open a new FolderSource"
            raise SourceError(msg)

    # ------------------------------------------------------------------ watching

    def _finished(self, path: str) -> None:
        """The watcher saw a file's writer finish it: remember its size and mtime then."""
        if os.path.dirname(path) != str(self.root):
            return
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return
        with self._complete_lock:
            self._complete[os.path.basename(path)] = (st.st_size, st.st_mtime_ns)

    def _start_watching(self) -> None:
        _quiet_watchdog_shutdown()
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a dependency
            logger.warning("watchdog is not installed: polling %s", self.root)
            return

        wake = self._wake
        finished = self._finished if self.take_closed else None

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                wake.set()

            def on_closed(self, event: FileSystemEvent) -> None:
                if finished is not None and not event.is_directory:
                    finished(os.fsdecode(event.src_path))

            def on_moved(self, event: FileSystemEvent) -> None:
                if finished is not None and not event.is_directory:
                    finished(os.fsdecode(event.dest_path))

        observer = Observer()
        try:
            observer.schedule(_Wake(), str(self.root), recursive=False)
            observer.daemon = True
            observer.start()
        except OSError as exc:  # inotify watch limits, unsupported filesystems
            logger.warning(
                "cannot watch %s (%s): polling every %.1f s instead",
                self.root,
                exc.strerror or exc,
                self.poll_interval,
            )
            return
        self._observer = observer


class _InactiveEmitterFilter(logging.Filter):
    """Drop watchdog's error for events that arrive while its observer stops (benign)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


def _quiet_watchdog_shutdown() -> None:
    inotify = logging.getLogger("watchdog.observers.inotify")
    if not any(isinstance(f, _InactiveEmitterFilter) for f in inotify.filters):
        inotify.addFilter(_InactiveEmitterFilter())


def _unique_names(name: str) -> Iterator[str]:
    """``x.png``, ``x~1.png``, ``x~2.png``, ... (the suffix stays last for decoders)."""
    yield name
    stem, suffix = os.path.splitext(name)
    i = 1
    while True:
        yield f"{stem}~{i}{suffix}"
        i += 1


def _move_unique(src: Path, folder: Path, name: str) -> Path:
    """Move ``src`` into ``folder`` without replacing anything there; returns the new path."""
    folder.mkdir(parents=True, exist_ok=True)
    if not src.exists():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(src))
    for candidate in _unique_names(name):
        dst = folder / candidate
        try:
            os.link(src, dst)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            if dst.exists():
                continue
            os.rename(src, dst)
            return dst
        os.unlink(src)
        return dst
    raise AssertionError("unreachable")  # pragma: no cover


def _write_atomic(path: Path, content: str | bytes) -> None:
    data = content.encode() if isinstance(content, str) else content
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _listdir(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
