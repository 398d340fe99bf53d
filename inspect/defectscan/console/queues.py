"""What waits in a line's queue, read by the console from the line's source, never claimed.

The Lines page shows each line's backlog and the age of its oldest waiting item. They are read
here, from the source the plant file names, not from what the monitor last said: a monitor that
is down says nothing, and that is when the queue matters most.

- A camera folder: the image files waiting at its top level (what the folder source would
  claim next; ``processing/``, ``done/`` and ``rejected/`` are not counted), and the oldest
  file's mtime. At most :data:`SCAN_CAP` entries are looked at (the count is then a floor).
- A Redis stream: the group's lag (entries not yet delivered) plus its pending entries
  (delivered, not acked), and the time in the id of the oldest of them (producers let Redis
  make ids, which are milliseconds since the epoch).

Nothing is created, claimed or acknowledged; answers are cached for :data:`CACHE_S` seconds
(the page refreshes every 5 s, in every open browser), failures for :data:`FAILED_CACHE_S`,
and Redis gets a short timeout.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from defectscan.config import Settings, SourceSpec, mask_url
from defectscan.inputs import IMAGE_SUFFIXES

__all__ = ["CACHE_S", "SCAN_CAP", "QueueState", "line_queue"]

#: Seconds a queue reading is reused.
CACHE_S = 3.0
#: Seconds a failed reading is reused: an unreachable Redis costs its timeout once, not at
#: every refresh of every open page.
FAILED_CACHE_S = 30.0
#: Folder entries looked at, at most.
SCAN_CAP = 20_000
#: Redis connect and read timeout, seconds: a page must not hang on an unreachable server.
REDIS_TIMEOUT_S = 0.5
_RESERVED = frozenset({"processing", "done", "rejected"})
_cache: dict[str, tuple[float, QueueState]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class QueueState:
    """A line's queue: items waiting (None: unknown, then ``note`` says why)."""

    backlog: int | None = None
    pending: int | None = None
    oldest_at: datetime | None = None
    capped: bool = False
    note: str | None = None


def _folder(path: Path) -> QueueState:
    count, oldest, capped = 0, None, False
    try:
        with os.scandir(path) as entries:
            for seen, entry in enumerate(entries):
                if seen >= SCAN_CAP:
                    capped = True
                    break
                name = entry.name
                if name.startswith(".") or name.endswith(".tmp") or name in _RESERVED:
                    continue
                if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # claimed between listing and stat
                if not entry.is_file(follow_symlinks=False):
                    continue
                count += 1
                oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
    except OSError as exc:
        return QueueState(note=f"cannot list {path}: {exc.strerror or exc}")
    when = datetime.fromtimestamp(oldest, UTC) if oldest is not None else None
    return QueueState(backlog=count, oldest_at=when, capped=capped)


def _id_time(entry_id: Any) -> datetime | None:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    ms, _, _ = text.partition("-")
    try:
        return datetime.fromtimestamp(int(ms) / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _stream(spec: SourceSpec, settings: Settings) -> QueueState:
    import redis

    from defectscan.sources.redis_commands import group_info, lag_of

    url = spec.redis_url_with_credentials(settings.redis_url)
    group = dict(parse_qsl(urlsplit(spec.text).query)).get("group") or "defectscan"
    stream = spec.stream or ""
    client = redis.Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        decode_responses=False,
    )
    try:
        if not client.exists(stream):
            return QueueState(backlog=0, pending=0)
        info = group_info(client, stream, group)
        pending = int(info.get("pending") or 0)
        lag = lag_of(client, stream, info)
        oldest: list[datetime] = []
        if pending:
            summary: Any = client.xpending(stream, group)
            when = _id_time(summary.get("min")) if summary and summary.get("min") else None
            if when is not None:
                oldest.append(when)
        if lag:
            last = info.get("last-delivered-id") or b"0-0"
            last = last.decode() if isinstance(last, bytes) else str(last)
            first = client.xrange(stream, f"({last}", "+", count=1)
            when = _id_time(first[0][0]) if first else None
            if when is not None:
                oldest.append(when)
    except redis.RedisError as exc:
        return QueueState(note=f"Redis {mask_url(url)}: {type(exc).__name__}: {exc}"[:300])
    finally:
        client.close()
    return QueueState(backlog=lag + pending, pending=pending, oldest_at=min(oldest, default=None))


def line_queue(line: str, settings: Settings) -> QueueState:
    """What waits in ``line``'s source (cached for :data:`CACHE_S` seconds)."""
    config = settings.lines.get(line)
    if config is None or not config.source:
        return QueueState(note="no source for this line in the plant file")
    key = f"{line}\0{config.source}"
    now = time.monotonic()
    with _lock:
        hit = _cache.get(key)
    if hit is not None and now - hit[0] < (FAILED_CACHE_S if hit[1].note else CACHE_S):
        return hit[1]
    try:
        spec = config.source_spec
        assert spec is not None
        if spec.kind == "folder":
            assert spec.path is not None
            found = _folder(spec.path.expanduser())
        else:
            found = _stream(spec, settings)
    except Exception as exc:  # the page shows why, it never fails on a queue
        found = QueueState(note=f"queue unknown: {type(exc).__name__}: {exc}"[:300])
    with _lock:
        _cache[key] = (time.monotonic(), found)
    return found
