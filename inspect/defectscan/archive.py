"""Content-addressed image archive: the inspected bytes, found again by their sha256.

A folder source moves or deletes its files and a Redis message is gone once acknowledged, so
reviews, retraining and reports never go back to the source: the line monitor keeps the images
worth keeping here (every failed part, every close call, a share of passes, rejected inputs)
*before* it acknowledges them, and everything later reads them by sha256.

Layout: ``<root>/<aa>/<bb>/<sha256>`` holding the original bytes, written atomically (a
temporary file renamed into place), so a crash never leaves half an image under a valid name.
The root may be a mounted volume shared by several monitors: writes are idempotent (the same
bytes under the same name) and need no lock. Retention removes the oldest files beyond an age
or a total size, sparing the ones still referenced by open reviews.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from defectscan.config import ArchiveConfig
from defectscan.errors import DefectscanError

__all__ = [
    "ArchiveError",
    "ArchivePolicy",
    "ImageArchive",
    "KeepReason",
    "PruneResult",
    "default_archive",
    "image_suffix",
]

logger = logging.getLogger(__name__)

KeepReason = Literal["fail", "near_threshold", "sampled_pass", "rejected"]
_HEX = frozenset("0123456789abcdef")


class ArchiveError(DefectscanError):
    """An image is not in the archive, or the archive cannot be written."""

    kind = "archive"


@dataclass(frozen=True)
class ArchivePolicy:
    """Which inspected images the monitor keeps, and for how long."""

    #: Share of passing parts kept (chosen by sha256, so a redelivery decides the same way).
    pass_share: float = 0.02
    #: A part whose closest class peak lies within this distance of its threshold is kept.
    margin: float = 0.1
    keep_rejected: bool = True
    #: Files older than this are removed by :meth:`ImageArchive.prune` (None: no age limit).
    max_age_days: float | None = 90.0
    #: Oldest files go first once the archive is larger than this (None: no size limit).
    max_bytes: int | None = 50 * 1024**3

    def __post_init__(self) -> None:
        if not 0.0 <= self.pass_share <= 1.0:
            msg = f"archive pass_share must be in [0, 1], got {self.pass_share}"
            raise ArchiveError(msg)
        if self.margin < 0:
            msg = f"archive margin must be >= 0, got {self.margin}"
            raise ArchiveError(msg)

    @classmethod
    def from_config(cls, config: ArchiveConfig) -> ArchivePolicy:
        """The policy a plant file's (validated) ``archive`` section describes."""
        return cls(
            pass_share=config.keep_pass_share,
            margin=config.near_threshold_margin,
            keep_rejected=config.keep_rejected,
            max_age_days=config.max_age_days,
            max_bytes=None if config.max_size_gb is None else int(config.max_size_gb * 1e9),
        )

    def reason(
        self,
        *,
        sha256: str,
        status: str,
        verdict: str | None,
        decision_margin: float | None,
    ) -> KeepReason | None:
        """Why an inspected image is kept, or None when it is not."""
        if status != "ok":
            return "rejected" if self.keep_rejected else None
        if verdict == "fail":
            return "fail"
        if decision_margin is not None and decision_margin <= self.margin:
            return "near_threshold"
        if self.pass_share > 0 and _unit_interval(sha256) < self.pass_share:
            return "sampled_pass"
        return None


def _unit_interval(sha256: str) -> float:
    """A stable number in [0, 1) from a hex digest (the first 52 bits)."""
    try:
        return int(sha256[:13], 16) / float(1 << 52)
    except ValueError:
        return int(hashlib.sha256(sha256.encode()).hexdigest()[:13], 16) / float(1 << 52)


def image_suffix(data: bytes) -> str:
    """The usual file suffix for image bytes, by their magic number (``.bin`` if unknown)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data.startswith(b"BM"):
        return ".bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return ".tif"
    return ".bin"


@dataclass(frozen=True)
class PruneResult:
    """What a retention pass removed."""

    removed: int
    freed_bytes: int
    kept: int
    kept_bytes: int


class ImageArchive:
    """Images by sha256 under ``root`` (``var/archive`` by default), kept by a policy."""

    def __init__(self, root: str | Path, policy: ArchivePolicy | None = None) -> None:
        self.root = Path(root)
        self.policy = policy or ArchivePolicy()

    # ------------------------------------------------------------------ addressing

    def path(self, sha256: str) -> Path:
        """Where the bytes with this digest live (whether or not they are there)."""
        digest = sha256.lower()
        if len(digest) != 64 or not _HEX.issuperset(digest):
            msg = f"not a sha256 hex digest: {sha256!r}"
            raise ArchiveError(msg)
        return self.root / digest[:2] / digest[2:4] / digest

    def has(self, sha256: str) -> bool:
        """Whether the archive holds these bytes."""
        return self.path(sha256).is_file()

    # ------------------------------------------------------------------ read and write

    def put(self, data: bytes, sha256: str | None = None) -> Path:
        """Store ``data`` (idempotent); ``sha256``, when given, must be its digest."""
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and sha256.lower() != digest:
            msg = f"bytes given for {sha256[:12]} hash to {digest[:12]}; refusing to store them"
            raise ArchiveError(msg)
        target = self.path(digest)
        if target.is_file():
            # Refresh the age: an image seen again is in use again.
            with contextlib.suppress(OSError):
                os.utime(target)
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{digest}.{uuid.uuid4().hex[:8]}.tmp")
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            msg = (
                f"cannot write {target} ({exc.strerror or exc}): is the archive volume "
                f"{self.root} writable and not full?"
            )
            raise ArchiveError(msg) from exc
        return target

    def get(self, sha256: str) -> bytes:
        """The archived bytes, verified against their digest."""
        target = self.path(sha256)
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            msg = (
                f"image {sha256[:12]} is not in the archive {self.root}: it was not kept by "
                "the archive policy, or retention removed it"
            )
            raise ArchiveError(msg) from None
        except OSError as exc:
            msg = f"cannot read {target}: {exc.strerror or exc}"
            raise ArchiveError(msg) from exc
        if hashlib.sha256(data).hexdigest() != sha256.lower():
            msg = f"archived image {target} is corrupt (its bytes no longer match the name)"
            raise ArchiveError(msg)
        return data

    def keep(
        self,
        data: bytes,
        *,
        sha256: str,
        status: str,
        verdict: str | None,
        decision_margin: float | None = None,
    ) -> KeepReason | None:
        """Store the image if the policy keeps it; returns why (None: not kept)."""
        reason = self.policy.reason(
            sha256=sha256, status=status, verdict=verdict, decision_margin=decision_margin
        )
        if reason is not None and data:
            self.put(data, sha256)
        return reason if data else None

    # ------------------------------------------------------------------ retention

    def _files(self) -> Iterator[tuple[Path, os.stat_result]]:
        if not self.root.is_dir():
            return
        for first in self.root.iterdir():
            if not first.is_dir() or len(first.name) != 2:
                continue
            for second in first.iterdir():
                if not second.is_dir():
                    continue
                for f in second.iterdir():
                    if f.name.startswith("."):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        yield f, f.stat()

    def usage(self) -> tuple[int, int]:
        """``(files, bytes)`` held now."""
        n = size = 0
        for _, st in self._files():
            n += 1
            size += st.st_size
        return n, size

    def prune(self, *, protect: Iterable[str] = (), now: float | None = None) -> PruneResult:
        """Remove files older than the policy's age, then the oldest beyond its size.

        ``protect`` lists digests that must stay (images of reviews not yet used for training).
        Leftover temporary files of crashed writers older than an hour go too.
        """
        now = time.time() if now is None else now
        keep = {p.lower() for p in protect}
        max_age = self.policy.max_age_days
        files = sorted(self._files(), key=lambda fs: fs[1].st_mtime)
        removed = freed = 0
        survivors: list[tuple[Path, os.stat_result]] = []
        for f, st in files:
            old = max_age is not None and now - st.st_mtime > max_age * 86400
            if old and f.name not in keep:
                removed, freed = removed + 1, freed + self._unlink(f, st)
            else:
                survivors.append((f, st))
        total = sum(st.st_size for _, st in survivors)
        if self.policy.max_bytes is not None and total > self.policy.max_bytes:
            remaining: list[tuple[Path, os.stat_result]] = []
            for f, st in survivors:  # oldest first
                if total > self.policy.max_bytes and f.name not in keep:
                    total -= st.st_size
                    removed, freed = removed + 1, freed + self._unlink(f, st)
                else:
                    remaining.append((f, st))
            survivors = remaining
        self._sweep_tmp(now)
        if removed:
            logger.info("archive retention removed %d images (%d bytes)", removed, freed)
        return PruneResult(removed, freed, len(survivors), sum(st.st_size for _, st in survivors))

    @staticmethod
    def _unlink(f: Path, st: os.stat_result) -> int:
        try:
            f.unlink()
        except FileNotFoundError:
            return 0
        return st.st_size

    def _sweep_tmp(self, now: float) -> None:
        if not self.root.is_dir():
            return
        for tmp in self.root.glob("*/*/.*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > 3600:
                    tmp.unlink()


def default_archive(policy: ArchivePolicy | None = None) -> ImageArchive:
    """The archive under the settings' ``var_dir`` (``var/archive``) or ``archive_dir``."""
    from defectscan.config import get_settings

    settings = get_settings()
    root = getattr(settings, "archive_dir", None) or settings.var_dir / "archive"
    return ImageArchive(root, policy)
