"""The record a source delivers and the small protocol every source implements.

A source hands out :class:`ImageRecord` values with :meth:`Source.claim`, and settles each one
exactly once after the results store committed its row: :meth:`Source.ack` for an inspected
image, :meth:`Source.reject` for input that could not be inspected (it goes to quarantine: the
folder's ``rejected/``, the stream's dead-letter stream). :meth:`Source.release` hands records
back unsettled when processing failed, so they are delivered again (and counted, unless the
failure was the plant's: ``charge=False``). :meth:`Source.renew` keeps a long batch's claim.

A record's :attr:`ImageRecord.source_key` names the delivery itself (the stream entry, or the
camera's file by name, size and mtime): a redelivery has the same key, two different parts with
identical bytes have different keys.

A source's path records are read without following symlinks, only from regular files, and only
up to ``meta["max_bytes"]`` when the source sets it (checked before reading): a FIFO cannot
block the reader, a swapped-in symlink cannot redirect it, a huge file is refused unread.

Nothing here imports torch, OpenCV or SQLAlchemy.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from defectscan.errors import ImageDecodeError, PlantFault, RejectedInputError, SourceError

__all__ = ["ImageRecord", "Source", "SourceFaultError", "read_file_safely"]

_READ_CHUNK = 1 << 20


class SourceFaultError(PlantFault, SourceError):
    """The source's side of the plant refuses work: Redis out of memory or refusing our
    credentials, an unwritable ``done/`` folder. Not the image's fault: never charge it.
    """

    kind = "plant_fault"


@dataclass(frozen=True)
class ImageRecord:
    """One image to inspect, as a source delivers it: bytes in memory or a file path.

    A source that already knows a delivery is unusable (a path that escapes its root, a
    message that failed too many times) sets ``error_kind``/``error_message``: reading such a
    record raises, so it becomes a rejected inspection with that reason, like any bad image.

    ``meta`` may carry ``source_key`` (see :attr:`source_key`), ``root`` (a path record is
    opened beneath that folder, no component followed as a symlink), ``nofollow`` (opened
    without following a symlink) and ``max_bytes``: a source's path records set them.
    """

    id: str
    uri: str
    data: bytes | None = None
    path: Path | None = None
    camera: str | None = None
    line: str | None = None
    captured_at: datetime | None = None
    source: str | None = None
    deliveries: int = 1
    error_kind: str | None = None
    error_message: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_path(
        cls, path: str | Path, *, camera: str | None = None, line: str | None = None
    ) -> ImageRecord:
        """A record that reads its bytes from ``path`` when inspected."""
        p = Path(path)
        return cls(id=str(p), uri=p.resolve().as_uri(), path=p, camera=camera, line=line)

    @property
    def source_key(self) -> str:
        """The identity of this delivery at its source, stable across redeliveries.

        ``redis:<stream>:<entry id>`` for a stream entry, ``folder:<camera dir>/<name>:<size>:
        <mtime_ns>`` for a camera file (captured at claim); else the source and the URI.
        """
        key = self.meta.get("source_key")
        if key:
            return str(key)
        return f"{self.source or 'file'}:{self.uri}"

    def read(self) -> bytes:
        """The image bytes (read from disk for path records, without following symlinks)."""
        if self.error_kind is not None:
            raise RejectedInputError(self.error_message or self.error_kind, kind=self.error_kind)
        if self.data is not None:
            return self.data
        if self.path is None:
            msg = f"record {self.id} has neither bytes nor a path"
            raise ImageDecodeError(msg)
        root = self.meta.get("root")
        max_bytes = self.meta.get("max_bytes")
        if root or max_bytes or self.meta.get("nofollow"):
            return read_file_safely(
                self.path,
                root=Path(root) if root else None,
                max_bytes=int(max_bytes) if max_bytes else None,
            )
        try:  # a path the user named (``defectscan inspect``): symlinks are theirs to use
            return self.path.read_bytes()
        except OSError as exc:
            msg = f"cannot read {self.path}: {exc.strerror or exc}"
            raise ImageDecodeError(msg) from exc


@runtime_checkable
class Source(Protocol):
    """Where images come from: claim, then ack / reject / release each record exactly once."""

    name: str

    def claim(self, n: int, *, timeout: float = 0.0) -> list[ImageRecord]:
        """Up to ``n`` records, waiting at most ``timeout`` seconds for the first one."""
        ...

    def ack(self, records: Sequence[ImageRecord]) -> None:
        """These records' rows are committed: settle them (done/, XACK)."""
        ...

    def reject(self, record: ImageRecord, error: str) -> None:
        """The record's error row is committed: quarantine it with ``error`` as the reason."""
        ...

    def release(self, records: Sequence[ImageRecord], error: str, *, charge: bool = True) -> None:
        """Processing failed before a commit: deliver these again later.

        ``charge=True`` counts the delivery toward ``max_deliveries`` (the image may be to
        blame); ``charge=False`` is a fault of the plant and does not count.
        """
        ...

    def renew(self, records: Sequence[ImageRecord]) -> None:
        """Keep the claim on records still being processed (a long batch): no-op if none."""
        ...

    def backlog(self) -> int:
        """Images waiting that no consumer has claimed yet (files waiting, entries undelivered)."""
        ...

    def close(self) -> None:
        """Stop watching and free connections; unsettled records are delivered again later."""
        ...


def read_file_safely(
    path: Path, *, root: Path | None = None, max_bytes: int | None = None
) -> bytes:
    """The bytes of regular file ``path``, opened without following a symlink.

    With ``root``, ``path`` must lie beneath it and every folder between them is opened without
    following symlinks too (a symlink swapped in after the claim is refused, not followed).
    A FIFO, device or folder is refused without blocking; a file over ``max_bytes`` is refused
    before it is read. Each refusal is a :class:`RejectedInputError` (an error row).
    """
    fd = _open_nofollow(path, root)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            msg = f"{path} is not a regular file (a FIFO, device or folder): refused"
            raise RejectedInputError(msg, kind="path")
        if max_bytes is not None and info.st_size > max_bytes:
            msg = (
                f"{path} has {info.st_size} bytes, over the source's limit of {max_bytes}: "
                "refused unread (raise max_file_bytes if such images are real)"
            )
            raise RejectedInputError(msg, kind="too_large")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, _READ_CHUNK):
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:  # grew while we read it
                msg = f"{path} grew over the source's limit of {max_bytes} bytes: refused"
                raise RejectedInputError(msg, kind="too_large")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise ImageDecodeError(msg) from exc
    finally:
        os.close(fd)


def _open_nofollow(path: Path, root: Path | None) -> int:
    """A read-only fd of ``path`` (non-blocking open, so a FIFO cannot hang us)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    dir_flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
    try:
        if root is None:
            return os.open(path, flags)
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            msg = f"{path} is not beneath the source's root {root}: refused"
            raise RejectedInputError(msg, kind="path") from None
        if not parts or ".." in parts:
            msg = f"{path} does not name a file beneath {root}: refused"
            raise RejectedInputError(msg, kind="path")
        fd = os.open(root, dir_flags)
        try:
            for part in parts[:-1]:
                nxt = os.open(part, dir_flags, dir_fd=fd)
                os.close(fd)
                fd = nxt
            return os.open(parts[-1], flags, dir_fd=fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            msg = f"{path} is (or passes through) a symbolic link: refused, not followed"
            raise RejectedInputError(msg, kind="path") from exc
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise ImageDecodeError(msg) from exc
