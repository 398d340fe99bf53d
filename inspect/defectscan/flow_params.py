"""Every flow parameter checked before a flow does anything, with an error that says the fix.

A flow run can be started by anyone who reaches the Prefect UI or API, with any parameters,
so the flows check what they are given before they read, write or promote anything:

- ranges and shapes: the flows' signatures carry them (``Annotated[..., Field(ge=0)]``), so
  Prefect refuses a bad value before the run starts and the UI shows the limits; the functions
  here check the same again for callers outside Prefect, and everything a schema cannot say;
- places: batch inputs (files, folders, glob patterns) and report folders must lie under an
  allowed root (:func:`allowed_roots`: ``var_dir`` and the plant file's ``batch_roots``, else
  the working directory), after symlinks are followed; a pattern may not start its walk above
  a root;
- names: a line must be a line of the plant file (its rules apply), a model a checkpoint file
  or ``champion[:NAME]``, a retrain recipe only TrainConfig fields with valid values.
"""

from __future__ import annotations

import glob
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from defectscan.config import Settings
from defectscan.errors import DefectscanError

__all__ = [
    "MANAGED_RECIPE_KEYS",
    "SHA256_PATTERN",
    "FlowParameterError",
    "allowed_roots",
    "check_batch",
    "check_batch_paths",
    "check_line",
    "check_model_ref",
    "check_monitor",
    "check_report_dir",
    "check_retrain",
    "check_under_roots",
]

#: A sha256 as the flows accept it (case-insensitive).
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
#: Retrain recipe keys the retrain sets itself (a recipe may not override them).
MANAGED_RECIPE_KEYS = frozenset({"data", "out", "name", "training_run", "resume"})
_TEXT = re.compile(r"^[^\x00-\x1f\x7f]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_METRIC = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9._-]+)?$")


class FlowParameterError(DefectscanError):
    """A flow was given a parameter it cannot run with (the message says what to give)."""

    kind = "flow_parameter"


def _fail(msg: str) -> None:
    raise FlowParameterError(msg)


def allowed_roots(settings: Settings) -> list[Path]:
    """Folders batch inputs and reports may lie under (resolved)."""
    roots = [Path(settings.var_dir), *(settings.batch_roots or [Path.cwd()])]
    out: list[Path] = []
    for root in roots:
        resolved = root.expanduser().resolve()
        if resolved not in out:
            out.append(resolved)
    return out


def _roots_text(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def check_under_roots(path: str | Path, roots: Sequence[Path], *, what: str) -> Path:
    """``path`` resolved (symlinks followed); an error unless it lies under one of ``roots``."""
    resolved = Path(path).expanduser().resolve()
    if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
        shown = f"{path}" if str(path) == str(resolved) else f"{path} ({resolved})"
        _fail(
            f"{what} {shown} is outside the allowed roots ({_roots_text(roots)}): "
            "move it there, or add its folder to batch_roots in the plant file"
        )
    return resolved


def _fixed_prefix(pattern: str) -> Path:
    """The part of a glob pattern before its first wildcard (where its walk starts)."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def check_batch_paths(patterns: Iterable[str], roots: Sequence[Path]) -> None:
    """Every file, folder and glob pattern, and everything it matches, under ``roots``."""
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip():
            _fail(f"batch input {pattern!r}: give a file, folder or glob pattern")
        if "\x00" in pattern:
            _fail(f"batch input {pattern!r}: a path cannot hold a NUL character")
        if glob.has_magic(pattern):
            check_under_roots(
                _fixed_prefix(pattern), roots, what=f"the pattern {pattern!r} starts at"
            )
            matches = [Path(m) for m in glob.iglob(pattern, recursive=True)]
        else:
            p = Path(pattern)
            check_under_roots(p, roots, what="batch input")
            matches = sorted(p.iterdir()) if p.is_dir() else [p]
        for m in matches:
            check_under_roots(m, roots, what=f"{pattern!r} leads to")


def check_report_dir(report_dir: str | Path, roots: Sequence[Path]) -> Path:
    """The report folder (resolved); it must lie under ``roots`` and not be a file."""
    resolved = check_under_roots(report_dir, roots, what="report folder")
    if resolved.exists() and not resolved.is_dir():
        _fail(f"report folder {report_dir} is a file: give a folder")
    return resolved


def check_line(line: str | None, settings: Settings, *, what: str = "line") -> None:
    """A line the plant file declares (its rules apply to the lot); None is allowed."""
    if line is None:
        return
    if not _NAME.match(line) or len(line) > 100:
        _fail(f"{what} {line!r}: a line name is 1-100 letters, digits, '.', '_', ':' or '-'")
    if settings.lines and line not in settings.lines:
        known = ", ".join(sorted(settings.lines))
        _fail(f"{what} {line!r} is not a line of the plant file ({known}): check the spelling")


def _check_name(value: str | None, *, what: str) -> None:
    if value is not None and (not _NAME.match(value) or len(value) > 100):
        _fail(f"{what} {value!r}: use 1-100 letters, digits, '.', '_', ':' or '-'")


def _check_text(value: str | None, *, what: str, max_len: int) -> None:
    if value is not None and (len(value) > max_len or not _TEXT.match(value)):
        _fail(f"{what}: at most {max_len} characters, no control characters")


def check_model_ref(model: str) -> None:
    """``champion``, ``champion:NAME`` or an existing checkpoint file."""
    if model == "champion":
        return
    if model.startswith("champion:"):
        name = model.split(":", 1)[1]
        if not name:
            _fail("model 'champion:' names no model: give champion or champion:NAME")
        _check_name(name, what="champion name")
        return
    if not model or not Path(model).is_file():
        _fail(f"model {model!r}: give champion, champion:NAME or an existing checkpoint file")


def _check_count(value: float | None, *, what: str, low: float, strict: bool = False) -> None:
    if value is None:
        return
    bad = not math.isfinite(value) or (value <= low if strict else value < low)
    if bad:
        sign = ">" if strict else ">="
        _fail(f"{what} must be {sign} {low:g}, got {value}")


def check_batch(
    settings: Settings,
    *,
    paths: Sequence[str],
    sha256: Sequence[str],
    query_line: str | None,
    camera: str | None,
    since: datetime | None,
    until: datetime | None,
    verdict: str | None,
    model: str,
    line: str | None,
    report_dir: str | None,
    title: str | None,
) -> None:
    """The batch-inspection flow's parameters (times already parsed)."""
    roots = allowed_roots(settings)
    check_batch_paths(paths, roots)
    for sha in sha256:
        if not re.match(SHA256_PATTERN, sha.strip()):
            _fail(f"sha256 {sha!r}: give 64 hexadecimal digits (see `defectscan batch --help`)")
    _check_name(query_line, what="query line")
    _check_name(camera, what="camera")
    if since is not None and until is not None and since >= until:
        _fail(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
    if verdict is not None and verdict not in ("pass", "fail", "rejected"):
        _fail(f"verdict {verdict!r}: use pass, fail or rejected")
    check_model_ref(model)
    check_line(line, settings)
    if report_dir is not None:
        check_report_dir(report_dir, roots)
    _check_text(title, what="title", max_len=200)


def check_retrain(
    *,
    reason: str | None,
    requested_by: str | None,
    data: str | None,
    recipe: Mapping[str, Any],
    metric: str,
    margin: float,
) -> None:
    """The retrain flow's parameters: the gate's margin, the metric, the recipe, the data."""
    _check_text(reason, what="reason", max_len=500)
    _check_text(requested_by, what="requested_by", max_len=100)
    if not math.isfinite(margin) or not 0.0 <= margin <= 1.0:
        _fail(
            f"margin {margin}: the promotion gate's margin must be in [0, 1] (a negative "
            "margin would promote a candidate that is worse than the champion)"
        )
    if not _METRIC.match(metric):
        _fail(f"metric {metric!r}: give a holdout metric such as mean_iou or iou/scratch")
    if data is not None and not Path(data).is_dir():
        _fail(f"data {data}: no such folder (give a dataset with images/ and masks/)")
    managed = sorted(MANAGED_RECIPE_KEYS & set(recipe))
    if managed:
        _fail(f"recipe sets {', '.join(managed)}: the retrain chooses these itself")
    from pydantic import ValidationError

    from defectscan.training.run import TrainConfig

    unknown = sorted(set(recipe) - set(TrainConfig.model_fields))
    if unknown:
        _fail(f"recipe keys {', '.join(unknown)} are not TrainConfig fields (see `train --help`)")
    try:
        TrainConfig(data=Path("."), out=Path("model.safetensors"), **dict(recipe))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        _fail(f"recipe: {problems}")


def check_monitor(
    settings: Settings,
    *,
    model: str,
    line: str | None,
    camera: str | None,
    batch_size: int,
    max_images: int | None,
    max_seconds: float | None,
    idle_exit: float | None,
    root: str | None,
    retention_every_s: float,
) -> None:
    """The line-monitor flow's parameters."""
    check_model_ref(model)
    check_line(line, settings)
    _check_name(camera, what="camera")
    _check_count(batch_size, what="batch_size", low=1)
    _check_count(max_images, what="max_images", low=1)
    _check_count(max_seconds, what="max_seconds", low=0, strict=True)
    _check_count(idle_exit, what="idle_exit", low=0)
    _check_count(retention_every_s, what="retention_every_s", low=0, strict=True)
    if root is not None and not Path(root).is_dir():
        _fail(f"root {root}: no such folder (the folder by-path messages are read under)")
