"""The Redis commands of a stream's consumers and producers, and what their failures mean.

:func:`call_redis` retries lost connections with backoff; :func:`redis_fault` turns Redis's
refusals that are the plant's fault (out of memory, wrong credentials, no permission, a
read-only replica) into a :class:`~defectscan.sources.base.SourceFaultError` that says how to
fix it. The rest are single steps of :class:`~defectscan.sources.redis_stream.RedisStreamSource`:
one XAUTOCLAIM page, delivery counters, the group's XINFO row and lag, and
:func:`dead_letter` (XADD to the capped dead-letter stream and XACK, in one transaction).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from defectscan.errors import ConfigError, SourceError
from defectscan.sources.base import SourceFaultError

__all__ = [
    "AUTH_ERRORS",
    "RETRYABLE",
    "RedisUnavailableError",
    "autoclaim_page",
    "call_redis",
    "checked_block_ms",
    "dead_letter",
    "delivery_counts",
    "group_info",
    "is_oom",
    "lag_of",
    "redis_fault",
    "refused",
    "text",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
AUTH_ERRORS = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)
_OOM: Any = getattr(redis.exceptions, "OutOfMemoryError", ())  # redis-py >= 5
_LAG_SCAN_CAP = 100_000


def text(value: Any) -> str:
    """``value`` as text (Redis answers bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def is_oom(exc: BaseException) -> bool:
    """Whether Redis refused for lack of memory (``maxmemory`` with ``noeviction``)."""
    message = str(exc)
    return isinstance(exc, _OOM) or message.startswith("OOM") or "> 'maxmemory'" in message


def redis_fault(exc: redis.exceptions.RedisError, what: str, where: str) -> SourceError | None:
    """The error to raise when Redis refused ``what`` for a reason of the plant; else None."""
    message = str(exc)
    if isinstance(exc, AUTH_ERRORS) or message.startswith(("NOAUTH", "WRONGPASS")):
        msg = (
            f"Redis refused our credentials during {what} on {where} ({message}): set the "
            "password in DEFECTSCAN_REDIS_URL (redis://:PASSWORD@HOST:6379/0); a source URL "
            "that names none borrows that URL's user and password"
        )
        return SourceFaultError(msg)
    if isinstance(exc, redis.exceptions.NoPermissionError) or message.startswith("NOPERM"):
        msg = (
            f"the Redis user may not run {what} on {where} ({message}): grant it the stream "
            "commands (ACL +@stream +@scripting) and the source's keys"
        )
        return SourceFaultError(msg)
    if is_oom(exc):
        msg = (
            f"Redis is out of memory (maxmemory) during {what} on {where}: the consumers are "
            "behind or stopped (acknowledged entries are deleted), or maxmemory is too small "
            "for the streams' caps; see `defectscan health`"
        )
        return SourceFaultError(msg)
    if isinstance(exc, redis.exceptions.ReadOnlyError) or message.startswith("READONLY"):
        msg = f"Redis at {where} is a read-only replica ({message}): point the URL at the primary"
        return SourceFaultError(msg)
    return None


def refused(exc: redis.exceptions.RedisError, what: str, where: str) -> SourceError:
    """The error for a refusal of ``what`` on ``where``: a plant fault, or a plain one."""
    fault = redis_fault(exc, what, where)
    if fault is not None:
        return fault
    return SourceError(f"Redis refused {what} on {where}: {exc}")


class RedisUnavailableError(Exception):
    """Redis stayed unreachable for the whole retry budget."""


def call_redis(
    what: str,
    fn: Callable[[], T],
    *,
    where: str,
    budget: float,
    on_nogroup: Callable[[], None] | None = None,
) -> T:
    """Run ``fn``, retrying lost connections with backoff for ``budget`` seconds.

    A vanished consumer group (Redis restarted without persistence) is recreated once through
    ``on_nogroup``. Refusals of the plant (credentials, memory, permissions) raise
    :class:`~defectscan.sources.base.SourceFaultError` at once, other refusals
    :class:`~defectscan.errors.SourceError`; a Redis unreachable for the whole budget raises
    :class:`RedisUnavailableError`.
    """
    deadline = time.monotonic() + budget
    delay = 0.05
    recreated = False
    while True:
        try:
            return fn()
        except AUTH_ERRORS as exc:
            raise refused(exc, what, where) from exc
        except RETRYABLE as exc:
            if time.monotonic() + delay > deadline:
                msg = f"Redis unreachable during {what} ({type(exc).__name__}: {exc})"
                raise RedisUnavailableError(msg) from exc
            logger.warning(
                "redis:%s: %s failed (%s: %s); retrying in %.2f s",
                where,
                what,
                type(exc).__name__,
                exc,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc) or recreated or on_nogroup is None:
                raise refused(exc, what, where) from exc
            logger.warning("redis:%s: the consumer group vanished: recreating it", where)
            on_nogroup()
            recreated = True


def dead_letter(
    client: redis.Redis,
    *,
    stream: str,
    group: str,
    entry_id: str,
    fields: dict[Any, Any],
    dead_stream: str,
    max_len: int,
) -> int:
    """XADD ``fields`` to the capped ``dead_stream`` and XACK the entry, in one MULTI/EXEC.

    Redis does not roll a transaction back when one command fails at EXEC, so the dead-letter
    key is WATCHed and its type checked first: the XACK can then only run together with a
    successful XADD. What the cap pushes off is counted in ``<dead_stream>:dropped`` in the
    same transaction; returns that number.
    """
    while True:
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(dead_stream)
                kind = text(pipe.type(dead_stream))
                if kind not in ("none", "stream"):
                    msg = (
                        f"dead-letter key {dead_stream} holds a {kind}, not a stream: "
                        "rename that key or choose another dead_suffix; the entry stays pending"
                    )
                    raise SourceError(msg)
                now: Any = pipe.xlen(dead_stream) if kind == "stream" else 0  # WATCH: answers now
                length = int(now)
                dropped = max(0, length + 1 - max_len)
                pipe.multi()
                pipe.xadd(dead_stream, fields, maxlen=max_len, approximate=False)
                pipe.xack(stream, group, entry_id)
                if dropped:
                    pipe.incrby(f"{dead_stream}:dropped", dropped)
                pipe.execute()
                return dropped
            except redis.exceptions.WatchError:
                continue  # the dead-letter key changed under us: check it again


def delivery_counts(client: redis.Redis, stream: str, group: str, ids: list[str]) -> dict[str, int]:
    """XPENDING's per-entry delivery counter of ``ids`` (it includes the delivery just made)."""
    if not ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
    counts: dict[str, int] = {}
    for rows in pipe.execute():
        for row in rows:
            counts[text(row["message_id"])] = int(row["times_delivered"])
    return counts


def group_info(client: redis.Redis, stream: str, group: str) -> dict[str, Any]:
    """XINFO GROUPS's row of ``group`` (``pending`` and ``lag`` 0 when it does not exist)."""
    for info in client.xinfo_groups(stream):
        if text(info.get("name")) == group:
            return dict(info)
    return {"pending": 0, "lag": 0}


def lag_of(client: redis.Redis, stream: str, info: dict[str, Any]) -> int:
    """Entries not yet delivered to the group whose XINFO row is ``info``."""
    lag = info.get("lag")
    if lag is not None:
        return int(lag)
    # Redis < 7, or lag unknown after deletions: count what follows the last delivered id.
    last = text(info.get("last-delivered-id") or "0-0")
    return len(client.xrange(stream, f"({last}", "+", count=_LAG_SCAN_CAP) or [])


def checked_block_ms(client: redis.Redis, block_ms: int) -> int:
    """``block_ms`` fitted to ``client``, which must hand out bytes (image data) undecoded."""
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("decode_responses"):
        msg = (
            "the Redis client decodes responses to str, which corrupts image bytes: "
            "create it with decode_responses=False"
        )
        raise ConfigError(msg)
    socket_timeout = kwargs.get("socket_timeout", kwargs.get("orig_socket_timeout"))
    if socket_timeout and block_ms >= socket_timeout * 1000:
        # A blocking read longer than the socket timeout would fail as a lost connection.
        return max(1, int(socket_timeout * 500))
    return block_ms


def autoclaim_page(
    client: redis.Redis,
    stream: str,
    group: str,
    consumer: str,
    *,
    min_idle_ms: int,
    start: str,
    count: int,
) -> tuple[str, list[tuple[str, dict[bytes, bytes]]]]:
    """One XAUTOCLAIM page: the next cursor (``0-0`` at the end) and the entries taken over."""
    response: Any = client.xautoclaim(
        stream, group, consumer, min_idle_time=min_idle_ms, start_id=start, count=count
    )
    cursor = text(response[0])
    claimed = [(text(eid), fields) for eid, fields in response[1] if eid is not None]
    deleted = [text(eid) for eid in response[2]] if len(response) > 2 else []
    if deleted:
        # Trimmed or XDEL'ed while pending: Redis dropped them from the pending list.
        logger.warning(
            "redis:%s: %d pending entr(ies) were deleted from the stream before being "
            "inspected: %s",
            stream,
            len(deleted),
            ", ".join(deleted[:10]),
        )
    if claimed:
        logger.warning(
            "redis:%s: reclaimed %d entr(ies) idle for more than %d ms from dead consumers",
            stream,
            len(claimed),
            min_idle_ms,
        )
    return cursor, claimed
