"""Stream entries to :class:`~defectscan.sources.base.ImageRecord` values, and back again.

A message carries the image bytes (field ``data``) or a path (field ``path``) relative to the
consumer's ``root``; optional fields: ``camera``, ``line``, ``captured_at`` (ISO 8601 or epoch
seconds), ``name``. :func:`build_record` checks a message and marks an unusable one
(``error_kind`` ``message``, ``path`` or ``poison``), so it becomes an error row instead of
stalling the line. A by-path record is read later beneath the root without following symlinks,
and refused unread over ``max_bytes`` (see :func:`~defectscan.sources.base.read_file_safely`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from defectscan.sources.base import ImageRecord
from defectscan.sources.redis_commands import text

__all__ = ["Fields", "MessageRules", "build_record", "dead_fields", "entries", "parse_time"]

logger = logging.getLogger(__name__)

Fields = dict[bytes, bytes]


@dataclass(frozen=True)
class MessageRules:
    """What a consumer accepts: where paths resolve, how big a file, how many deliveries."""

    stream: str
    dead_stream: str
    root: Path | None
    max_deliveries: int
    max_file_bytes: int | None
    line: str | None = None
    camera: str | None = None


def build_record(
    entry_id: str, fields: Fields, deliveries: int, rules: MessageRules
) -> ImageRecord:
    """The record of one delivered entry (``deliveries`` counts this delivery)."""
    stream = rules.stream
    uri = f"redis://{quote(stream, safe=':')}/{entry_id}"
    meta: dict[str, Any] = {
        "stream": stream,
        "entry_id": entry_id,
        "source_key": f"redis:{stream}:{entry_id}",
    }
    name = _field(fields, "name")
    if name:
        meta["name"] = name
    data = fields.get(b"data")
    raw_path = fields.get(b"path")
    path: Path | None = None
    error_kind: str | None = None
    error_message: str | None = None
    if data is not None and raw_path is not None:
        error_kind, error_message = (
            "message",
            (
                f"message {entry_id} on {stream} has both 'data' and 'path': "
                "a producer must send one of them"
            ),
        )
    elif data is None and raw_path is None:
        error_kind, error_message = (
            "message",
            (
                f"message {entry_id} on {stream} has neither 'data' (image bytes) nor "
                "'path': nothing to inspect"
            ),
        )
    elif raw_path is not None:
        path_text = raw_path.decode("utf-8", errors="replace")
        meta["path"] = path_text
        uri += f"?path={quote(path_text)}"
        path, error_message = _resolve(path_text, entry_id, rules)
        if error_message is not None:
            error_kind = "path"
        else:
            meta["root"] = str(rules.root)
            if rules.max_file_bytes is not None:
                meta["max_bytes"] = rules.max_file_bytes
    failed = deliveries - 1
    if error_kind is None and failed >= rules.max_deliveries:
        error_kind = "poison"
        error_message = (
            f"message {entry_id} on {stream} failed {failed} times without being "
            f"settled (max_deliveries={rules.max_deliveries}); moved to {rules.dead_stream} "
            "so it cannot stall the line"
        )
    if error_kind is not None:
        logger.warning("redis:%s: %s", stream, error_message)
    return ImageRecord(
        id=entry_id,
        uri=uri,
        data=data if error_kind != "message" else None,
        path=path,
        camera=_field(fields, "camera") or rules.camera,
        line=_field(fields, "line") or rules.line,
        captured_at=parse_time(_field(fields, "captured_at"), entry_id),
        source="redis",
        deliveries=deliveries,
        error_kind=error_kind,
        error_message=error_message,
        meta=meta,
    )


def dead_fields(
    fields: Fields, record: ImageRecord, error: str, *, group: str, consumer: str
) -> dict[Any, Any]:
    """A dead-letter message: the original fields plus why, when and by whom it was refused."""
    dead: dict[Any, Any] = dict(fields)
    dead.update(
        {
            b"reason": error,
            b"error_kind": record.error_kind or "",
            b"original_id": record.id,
            b"original_stream": record.meta.get("stream", ""),
            b"group": group,
            b"consumer": consumer,
            b"deliveries": str(record.deliveries),
            b"rejected_at": datetime.now(UTC).isoformat(),
        }
    )
    return dead


def _resolve(path_text: str, entry_id: str, rules: MessageRules) -> tuple[Path | None, str | None]:
    """The file a by-path message names, or why it is refused."""
    root = rules.root
    where = f"message {entry_id} on {rules.stream} names path {path_text!r}"
    if root is None:
        return None, (
            f"{where} but this source has no root folder: configure the source's root "
            "(the folder producers' paths are relative to) or send the image bytes"
        )
    if "\x00" in path_text or not path_text:
        return None, f"{where}, which is not a valid path"
    if ".." in PurePosixPath(path_text).parts or ".." in Path(path_text).parts:
        return None, f"{where}, which uses '..' to leave {root}: refused"
    candidate = Path(path_text)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops
        return None, f"{where}, which cannot be resolved ({exc}): refused"
    if not resolved.is_relative_to(root):
        how = "is outside" if not candidate.is_relative_to(root) else "links outside"
        return None, f"{where}, which {how} the root folder {root}: refused"
    return resolved, None


def _field(fields: Fields, key: str) -> str | None:
    value = fields.get(key.encode())
    return None if value is None else value.decode("utf-8", errors="replace")


def entries(response: Any) -> list[tuple[str, Fields]]:
    """XREADGROUP's entries for our one stream, in RESP2 (list) or RESP3 (dict) shape."""
    if not response:
        return []
    per_stream = response.values() if isinstance(response, dict) else (v for _, v in response)
    raw: list[Any] = []
    for value in per_stream:
        for item in value or []:
            # RESP3 wraps a stream's entry list in one more list.
            raw.extend(item if isinstance(item, list) else [item])
    return [(text(eid), dict(fields or {})) for eid, fields in raw if eid is not None]


def parse_time(value: str | None, entry_id: str) -> datetime | None:
    """``captured_at`` as an aware UTC datetime (ISO 8601 or epoch seconds)."""
    if not value:
        return None
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        logger.warning("message %s: captured_at %r is neither ISO 8601 nor epoch", entry_id, value)
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
