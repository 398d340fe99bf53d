"""Image inputs named on a command line or in a batch: files, folders and glob patterns."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from defectscan.errors import DefectscanError

__all__ = ["IMAGE_SUFFIXES", "InputPathError", "expand_inputs"]

#: The suffixes taken from a folder (files named explicitly are taken whatever they are called).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class InputPathError(DefectscanError):
    """A named input does not exist, or a pattern matches nothing."""

    kind = "input"


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files as given, image files inside folders (sorted), and glob patterns, de-duplicated."""
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)

    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            for child in sorted(p.iterdir()):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    add(child)
        elif p.is_file():
            add(p)
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                msg = f"no files match {pattern!r}"
                raise InputPathError(msg)
            for m in matches:
                if Path(m).is_file():
                    add(Path(m))
        else:
            msg = f"{pattern}: no such file or folder"
            raise InputPathError(msg)
    return out
