"""The producer side of a line's Redis stream: :func:`enqueue`, with a cap and back-pressure.

A stream holds at most ``max_len`` entries. Consumers delete what every group has acknowledged
(:func:`~defectscan.sources.redis_groups.trim_acked`), so the length is what is still waiting
or in work. When a batch does not fit, the producer first deletes acknowledged entries itself,
then waits for the consumers (logging a warning every few seconds) for up to ``wait_s``, and
then refuses with :class:`StreamFullError`: images wait at the camera or gateway instead of
Redis running out of memory and refusing every write. The check and the XADDs run in one Lua
script, so producers together never push a stream past its cap.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from defectscan.errors import ConfigError, SourceError
from defectscan.sources.redis_commands import RETRYABLE, redis_fault, text
from defectscan.sources.redis_groups import trim_acked, trim_stream

__all__ = ["DEFAULT_MAX_LEN", "StreamFullError", "enqueue", "trim_stream"]

logger = logging.getLogger(__name__)

#: The default cap of a stream, in entries (``Settings.stream_max_len`` for the CLI).
DEFAULT_MAX_LEN = 10_000
_ENQUEUE_BATCH = 64
_WARN_EVERY_S = 5.0

# KEYS: stream; ARGV: cap, then per message: number of fields, field, value, ...
# Adds the messages that fit under the cap; returns {length after, id, id, ...}.
_ADD_CAPPED = """
local length = redis.call('XLEN', KEYS[1])
local room = tonumber(ARGV[1]) - length
local out = {0}
local i = 2
while i <= #ARGV and room > 0 do
  local n = tonumber(ARGV[i])
  local args = {}
  for k = 1, 2 * n do args[k] = ARGV[i + k] end
  table.insert(out, redis.call('XADD', KEYS[1], '*', unpack(args)))
  i = i + 1 + 2 * n
  room = room - 1
  length = length + 1
end
out[1] = length
return out
"""


class StreamFullError(SourceError):
    """The stream stayed at its cap for the whole wait: the consumers are behind or stopped."""

    kind = "stream_full"


def enqueue(
    client: redis.Redis,
    stream: str,
    paths: Iterable[str | os.PathLike[str]],
    *,
    by_path: bool = False,
    root: str | os.PathLike[str] | None = None,
    camera: str | None = None,
    line: str | None = None,
    max_len: int = DEFAULT_MAX_LEN,
    wait_s: float = 0.0,
) -> list[str]:
    """Add one message per image file to ``stream``; returns the entry ids.

    By default a message carries the image bytes; ``by_path`` sends the path relative to
    ``root`` instead (consumers must share that folder). The stream never grows past
    ``max_len`` entries: when it is full the call waits up to ``wait_s`` seconds for the
    consumers, warning as it waits, and then raises :class:`StreamFullError` (the images
    queued before stay queued; the error says how many).
    """
    if max_len < 1:
        msg = f"max_len must be at least 1, not {max_len}"
        raise ConfigError(msg)
    base: Path | None = None
    if by_path:
        if root is None:
            msg = "enqueue by path needs root: the folder the consumers resolve paths against"
            raise ConfigError(msg)
        base = Path(root).expanduser().resolve()
    ids: list[str] = []
    batch: list[dict[str, Any]] = []
    deadline = time.monotonic() + max(wait_s, 0.0)
    for item in paths:
        batch.append(_message(Path(item), base, camera=camera, line=line))
        if len(batch) >= _ENQUEUE_BATCH:
            ids += _add(client, stream, batch, max_len=max_len, deadline=deadline, queued=ids)
            batch = []
    if batch:
        ids += _add(client, stream, batch, max_len=max_len, deadline=deadline, queued=ids)
    return ids


def _message(
    path: Path, base: Path | None, *, camera: str | None, line: str | None
) -> dict[str, Any]:
    fields: dict[str, Any] = {"name": path.name}
    try:
        mtime = path.stat().st_mtime
        if base is not None:
            resolved = path.resolve()
            if not resolved.is_relative_to(base):
                msg = f"{path} is outside root {base}: consumers could not read it"
                raise ConfigError(msg)
            fields["path"] = resolved.relative_to(base).as_posix()
        else:
            fields["data"] = path.read_bytes()
    except OSError as exc:
        msg = f"cannot enqueue {path}: {exc.strerror or exc}"
        raise SourceError(msg) from exc
    fields["captured_at"] = datetime.fromtimestamp(mtime, tz=UTC).isoformat()
    if camera is not None:
        fields["camera"] = camera
    if line is not None:
        fields["line"] = line
    return fields


def _add(
    client: redis.Redis,
    stream: str,
    batch: list[dict[str, Any]],
    *,
    max_len: int,
    deadline: float,
    queued: list[str],
) -> list[str]:
    """XADD ``batch`` under the cap, trimming acknowledged entries and waiting as needed."""
    script = client.register_script(_ADD_CAPPED)
    added: list[str] = []
    delay = 0.05
    warned = float("-inf")
    while batch:
        args: list[Any] = [max_len]
        for fields in batch:
            args.append(len(fields))
            for key, value in fields.items():
                args += [key, value]
        try:
            reply = script(keys=[stream], args=args)
        except (redis.exceptions.ResponseError, redis.exceptions.AuthenticationError) as exc:
            fault = redis_fault(exc, "XADD", stream)
            if fault is not None:
                raise fault from exc
            msg = f"Redis refused XADD on {stream}: {exc}"
            raise SourceError(msg) from exc
        except RETRYABLE as exc:
            msg = (
                f"cannot enqueue on {stream}: Redis unreachable ({exc}); "
                f"{len(queued) + len(added)} image(s) were queued before"
            )
            raise SourceError(msg) from exc
        length, new = int(reply[0]), [text(entry_id) for entry_id in reply[1:]]
        added += new
        del batch[: len(new)]
        if not batch:
            break
        if trim_acked(stream, client=client):
            continue  # acknowledged entries made room
        now = time.monotonic()
        if now >= deadline:
            msg = (
                f"stream {stream} is full ({length} entries, cap {max_len}): its consumers "
                "are behind or stopped. Start or scale out the line's monitors, or raise the "
                f"cap; {len(queued) + len(added)} image(s) were queued, the rest were not"
            )
            raise StreamFullError(msg)
        if now - warned >= _WARN_EVERY_S:
            logger.warning(
                "stream %s is at its cap (%d entries, cap %d): waiting up to %.0f s for the "
                "consumers to catch up",
                stream,
                length,
                max_len,
                deadline - now,
            )
            warned = now
        time.sleep(min(delay, max(deadline - now, 0.0)))
        delay = min(delay * 2, 1.0)
    return added
