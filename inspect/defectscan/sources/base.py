"""The record a source delivers and the small protocol every source implements.

A source hands out :class:`ImageRecord` values with :meth:`Source.claim`, and settles each one
exactly once after the results store committed its row: :meth:`Source.ack` for an inspected
image, :meth:`Source.reject` for input that could not be inspected (it goes to quarantine: the
folder's ``rejected/``, the stream's dead-letter stream). :meth:`Source.release` hands records
back unsettled when processing failed, so they are delivered again (and counted).

Nothing here imports torch, OpenCV or SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from defectscan.errors import ImageDecodeError, RejectedInputError

__all__ = ["ImageRecord", "Source"]


@dataclass(frozen=True)
class ImageRecord:
    """One image to inspect, as a source delivers it: bytes in memory or a file path.

    A source that already knows a delivery is unusable (a path that escapes its root, a
    message that failed too many times) sets ``error_kind``/``error_message``: reading such a
    record raises, so it becomes a rejected inspection with that reason, like any bad image.
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

    def read(self) -> bytes:
        """The image bytes (read from disk for path records)."""
        if self.error_kind is not None:
            raise RejectedInputError(self.error_message or self.error_kind, kind=self.error_kind)
        if self.data is not None:
            return self.data
        if self.path is None:
            msg = f"record {self.id} has neither bytes nor a path"
            raise ImageDecodeError(msg)
        try:
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

    def release(self, records: Sequence[ImageRecord], error: str) -> None:
        """Processing failed before a commit: deliver these again later (counts a delivery)."""
        ...

    def backlog(self) -> int:
        """Images waiting that no consumer has claimed yet (files waiting, entries undelivered)."""
        ...

    def close(self) -> None:
        """Stop watching and free connections; unsettled records are delivered again later."""
        ...
