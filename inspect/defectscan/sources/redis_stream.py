"""A Redis stream as an image source: one stream per line, one consumer group, many consumers.

Messages carry the image bytes (field ``data``) or a path (field ``path``) relative to the
source's ``root``; optional fields: ``camera``, ``line``, ``captured_at`` (ISO 8601 or epoch
seconds), ``name``. :func:`enqueue` is the matching producer.

Delivery is at least once, and each entry is settled once after its row is committed:

- ``claim`` reads, in this order: this consumer's own pending entries (at start, and again after
  a ``release`` or a lost connection: XREADGROUP from id ``0``), entries of dead consumers idle
  longer than ``claim_idle_ms`` (XAUTOCLAIM, a pass every ``claim_idle_ms / 2``, its cursor
  followed until ``0-0``), then new entries (XREADGROUP ``>``).
- ``ack`` is XACK only. An XACK that cannot reach Redis is retried on the next call; if the
  process dies first, the entry is still pending and another consumer reclaims it (writes are
  idempotent, so the second inspection stores nothing new).
- ``reject`` moves the entry to the dead-letter stream ``<stream>:dead`` (original fields plus
  ``reason``, ``original_id``, ``deliveries``, ``consumer``, ...) and XACKs it, in one
  MULTI/EXEC transaction.
- An entry delivered more than ``max_deliveries`` times (XPENDING's counter) is handed out as
  poison (``error_kind="poison"``): it gets an error row and goes to the dead-letter stream
  instead of crash-looping the monitor. A by-path message that escapes ``root`` is handed out
  with ``error_kind="path"`` the same way.

A restarted consumer with the same name (set ``consumer`` explicitly) picks up its own pending
entries at once; with the default name (host and pid) they come back through XAUTOCLAIM after
``claim_idle_ms``, which must exceed the longest time a batch can take to inspect.

Connection loss (Redis restarted) is retried with backoff for ``retry_s`` seconds per call;
``claim`` then returns what it has (possibly nothing) and ``ack`` remembers what it owes: neither
raises to the caller. Metrics (``backlog``, ``pending``, ``lag``) and ``trim`` raise
:class:`~defectscan.errors.SourceError`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import quote

import redis

from defectscan.errors import ConfigError, SourceError
from defectscan.sources.base import ImageRecord

__all__ = ["RedisStreamSource", "enqueue", "trim_stream"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Fields = dict[bytes, bytes]

_RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_AUTOCLAIM_PAGE = 100  # Redis's own default COUNT for XAUTOCLAIM
_LAG_SCAN_CAP = 100_000
_ENQUEUE_BATCH = 64


class _UnavailableError(Exception):
    """Redis stayed unreachable for the whole retry budget."""


class RedisStreamSource:
    """Images from a Redis stream read through a consumer group (see the module docstring).

    One thread claims; settling from another thread is safe but waits while a claim blocks in
    XREADGROUP (at most ``block_ms``). The client is the caller's (closed by :meth:`close`
    only with ``owns_client``, as :func:`~defectscan.sources.open_source` sets it) and must
    not decode responses.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        *,
        group: str = "defectscan",
        consumer: str | None = None,
        line: str | None = None,
        camera: str | None = None,
        root: str | os.PathLike[str] | None = None,
        block_ms: int = 2_000,
        claim_idle_ms: int = 60_000,
        max_deliveries: int = 5,
        dead_suffix: str = ":dead",
        retry_s: float = 5.0,
        owns_client: bool = False,
    ) -> None:
        if not stream:
            msg = "the stream name is empty: pass the line's stream, e.g. 'defectscan:line1'"
            raise ConfigError(msg)
        if max_deliveries < 1 or claim_idle_ms < 1 or block_ms < 1:
            msg = "max_deliveries, claim_idle_ms and block_ms must be at least 1"
            raise ConfigError(msg)
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
            block_ms = max(1, int(socket_timeout * 500))
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.dead_stream = f"{stream}{dead_suffix}"
        self.line = line
        self.camera = camera
        self.root = None if root is None else Path(root).expanduser().resolve()
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.retry_s = retry_s
        self.name = f"redis:{stream}"
        self._owns_client = owns_client
        self._lock = threading.RLock()
        self._inflight: dict[str, Fields] = {}
        self._owed_acks: set[str] = set()
        # Where the next read of our own pending list starts; None once it is drained.
        self._history_from: str | None = "0"
        self._autoclaim_cursor: str | None = None
        self._next_autoclaim = 0.0
        try:
            self._call("create consumer group", self._ensure_group)
        except _UnavailableError as exc:
            msg = f"{self.name}: {exc}: check that Redis runs and the URL is right"
            raise SourceError(msg) from exc

    # ------------------------------------------------------------------ protocol

    def claim(self, n: int, *, timeout: float = 0.0) -> list[ImageRecord]:
        """Up to ``n`` records: own pending first, then reclaimed, then new entries."""
        if n <= 0:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        out: list[ImageRecord] = []
        with self._lock:
            try:
                self._settle_owed()
                if self._history_from is not None:
                    out += self._read_history(n)
                if len(out) < n and self._autoclaim_due():
                    out += self._autoclaim(n - len(out))
                while len(out) < n:
                    remaining = deadline - time.monotonic()
                    block = None
                    if not out and remaining > 0:
                        block = max(1, min(self.block_ms, int(remaining * 1000)))
                    out += self._read_new(n - len(out), block)
                    if out or block is None:
                        break
                    if self._autoclaim_due():  # a long wait still reclaims from the dead
                        out += self._autoclaim(n - len(out))
            except _UnavailableError as exc:
                # Something may have been delivered to us before the connection dropped:
                # re-read our own pending list once Redis answers again.
                self._history_from = "0"
                logger.warning(
                    "claim from %s: %s; returning %d record(s)", self.name, exc, len(out)
                )
        return out

    def ack(self, records: Sequence[ImageRecord]) -> None:
        """XACK the records (their rows are committed); retried later if Redis is away."""
        ids = [record.id for record in records]
        with self._lock:
            for entry_id in ids:
                self._inflight.pop(entry_id, None)
            self._owed_acks.update(ids)
            try:
                self._settle_owed()
            except _UnavailableError as exc:
                logger.warning(
                    "ack on %s: %s; %d entr(ies) stay pending and are acked on the next call",
                    self.name,
                    exc,
                    len(self._owed_acks),
                )

    def reject(self, record: ImageRecord, error: str) -> None:
        """Move the entry to the dead-letter stream and XACK it, in one transaction."""
        with self._lock:
            entry_id = record.id
            fields = self._inflight.pop(entry_id, None)
            try:
                if fields is None:
                    found = self._call(
                        "read entry", lambda: self.client.xrange(self.stream, entry_id, entry_id)
                    )
                    fields = dict(found[0][1]) if found else {}
                dead: dict[Any, Any] = dict(fields)
                dead.update(
                    {
                        b"reason": error,
                        b"error_kind": record.error_kind or "",
                        b"original_id": entry_id,
                        b"original_stream": self.stream,
                        b"group": self.group,
                        b"consumer": self.consumer,
                        b"deliveries": str(record.deliveries),
                        b"rejected_at": datetime.now(UTC).isoformat(),
                    }
                )

                self._call("dead-letter", partial(self._dead_letter, entry_id, dead))
            except _UnavailableError as exc:
                self._history_from = "0"  # still pending: delivered and rejected again later
                logger.warning("reject on %s of %s: %s", self.name, entry_id, exc)
                return
            logger.info("rejected %s %s to %s: %s", self.name, entry_id, self.dead_stream, error)

    def release(self, records: Sequence[ImageRecord], error: str) -> None:
        """Leave the entries pending; the next claim re-reads them (a new delivery)."""
        with self._lock:
            for record in records:
                self._inflight.pop(record.id, None)
            if records:
                self._history_from = "0"
                logger.info("released %d entr(ies) of %s: %s", len(records), self.name, error)

    def backlog(self) -> int:
        """Entries not yet delivered to the group plus entries delivered but not settled."""
        info = self._group_info()
        return self._lag_of(info) + int(info.get("pending") or 0)

    def pending(self) -> int:
        """Entries delivered to the group (any consumer) and not acked yet."""
        return int(self._group_info().get("pending") or 0)

    def lag(self) -> int:
        """Entries in the stream not yet delivered to the group."""
        return self._lag_of(self._group_info())

    def trim(self, maxlen: int) -> int:
        """Trim to about ``maxlen`` entries, never past anything pending or undelivered."""
        return trim_stream(self.stream, maxlen, client=self.client)

    def close(self) -> None:
        """Ack what is owed if Redis answers; close the client if this source created it."""
        with self._lock:
            if self._owed_acks:
                try:
                    self._settle_owed(budget=1.0)
                except _UnavailableError:
                    logger.warning(
                        "closing %s with %d unacked entr(ies): they will be redelivered",
                        self.name,
                        len(self._owed_acks),
                    )
            self._inflight.clear()
            if self._owns_client:
                self.client.close()

    def __enter__(self) -> RedisStreamSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def _read_history(self, n: int) -> list[ImageRecord]:
        """Our own pending entries (delivered before a crash, released, or lost in transit)."""
        out: list[ImageRecord] = []
        while len(out) < n and self._history_from is not None:
            start = self._history_from
            count = n - len(out)
            response = self._call(
                "read own pending",
                partial(
                    self.client.xreadgroup,
                    self.group,
                    self.consumer,
                    {self.stream: start},
                    count=count,
                ),
            )
            entries = _entries(response)
            if not entries:
                self._history_from = None
                break
            self._history_from = entries[-1][0]
            out += self._hand_out(entries, fresh=False)
        return out

    def _autoclaim_due(self) -> bool:
        return self._autoclaim_cursor is not None or time.monotonic() >= self._next_autoclaim

    def _autoclaim(self, need: int) -> list[ImageRecord]:
        """Take over entries idle longer than ``claim_idle_ms`` (their consumer died)."""
        out: list[ImageRecord] = []
        while len(out) < need:
            start = self._autoclaim_cursor or "0-0"
            count = min(_AUTOCLAIM_PAGE, need - len(out))
            response: Any = self._call(
                "reclaim idle entries",
                partial(
                    self.client.xautoclaim,
                    self.stream,
                    self.group,
                    self.consumer,
                    min_idle_time=self.claim_idle_ms,
                    start_id=start,
                    count=count,
                ),
            )
            cursor = _text(response[0])
            claimed = [(_text(eid), fields) for eid, fields in response[1] if eid is not None]
            deleted = [_text(eid) for eid in response[2]] if len(response) > 2 else []
            if deleted:
                # Trimmed or XDEL'ed while pending: Redis dropped them from the pending list.
                logger.warning(
                    "%s: %d pending entr(ies) were deleted from the stream before being "
                    "inspected: %s",
                    self.name,
                    len(deleted),
                    ", ".join(deleted[:10]),
                )
            if claimed:
                logger.warning(
                    "%s: reclaimed %d entr(ies) idle for more than %d ms from dead consumers",
                    self.name,
                    len(claimed),
                    self.claim_idle_ms,
                )
                out += self._hand_out(claimed, fresh=False)
            if cursor == "0-0":
                self._autoclaim_cursor = None
                self._next_autoclaim = time.monotonic() + self.claim_idle_ms / 2000
                break
            self._autoclaim_cursor = cursor
        return out

    def _read_new(self, count: int, block: int | None) -> list[ImageRecord]:
        response = self._call(
            "read new entries",
            lambda: self.client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=block
            ),
        )
        return self._hand_out(_entries(response), fresh=True)

    def _hand_out(self, entries: list[tuple[str, Fields]], *, fresh: bool) -> list[ImageRecord]:
        """Records for entries just delivered to us, skipping those already in our hands."""
        usable: list[tuple[str, Fields]] = []
        gone: list[str] = []
        for entry_id, fields in entries:
            if entry_id in self._inflight or entry_id in self._owed_acks:
                continue
            if not fields:  # deleted from the stream while pending: nothing left to inspect
                gone.append(entry_id)
            else:
                usable.append((entry_id, fields))
        if gone:
            logger.warning(
                "%s: %d pending entr(ies) were deleted from the stream: acking them",
                self.name,
                len(gone),
            )
            self._call("ack deleted", lambda: self.client.xack(self.stream, self.group, *gone))
        counts = {} if fresh else self._delivery_counts([eid for eid, _ in usable])
        records = []
        for entry_id, fields in usable:
            self._inflight[entry_id] = fields
            records.append(self._record(entry_id, fields, counts.get(entry_id, 1)))
        return records

    def _delivery_counts(self, ids: list[str]) -> dict[str, int]:
        """XPENDING's per-entry delivery counter (it includes the delivery just made)."""
        if not ids:
            return {}

        def query() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for entry_id in ids:
                pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
            return pipe.execute()

        counts: dict[str, int] = {}
        for rows in self._call("read delivery counts", query):
            for row in rows:
                counts[_text(row["message_id"])] = int(row["times_delivered"])
        return counts

    # ------------------------------------------------------------------ records

    def _record(self, entry_id: str, fields: Fields, deliveries: int) -> ImageRecord:
        uri = f"redis://{quote(self.stream, safe=':')}/{entry_id}"
        meta: dict[str, Any] = {"stream": self.stream, "entry_id": entry_id}
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
                    f"message {entry_id} on {self.stream} has both 'data' and 'path': "
                    "a producer must send one of them"
                ),
            )
        elif data is None and raw_path is None:
            error_kind, error_message = (
                "message",
                (
                    f"message {entry_id} on {self.stream} has neither 'data' (image bytes) nor "
                    "'path': nothing to inspect"
                ),
            )
        elif raw_path is not None:
            text = raw_path.decode("utf-8", errors="replace")
            meta["path"] = text
            uri += f"?path={quote(text)}"
            path, error_message = self._resolve(text, entry_id)
            if error_message is not None:
                error_kind = "path"
        failed = deliveries - 1
        if error_kind is None and failed >= self.max_deliveries:
            error_kind = "poison"
            error_message = (
                f"message {entry_id} on {self.stream} failed {failed} times without being "
                f"settled (max_deliveries={self.max_deliveries}); moved to {self.dead_stream} "
                "so it cannot stall the line"
            )
        if error_kind is not None:
            logger.warning("%s: %s", self.name, error_message)
        return ImageRecord(
            id=entry_id,
            uri=uri,
            data=data if error_kind != "message" else None,
            path=path,
            camera=_field(fields, "camera") or self.camera,
            line=_field(fields, "line") or self.line,
            captured_at=_parse_time(_field(fields, "captured_at"), entry_id),
            source="redis",
            deliveries=deliveries,
            error_kind=error_kind,
            error_message=error_message,
            meta=meta,
        )

    def _resolve(self, text: str, entry_id: str) -> tuple[Path | None, str | None]:
        """The file a by-path message names, or why it is refused."""
        where = f"message {entry_id} on {self.stream} names path {text!r}"
        if self.root is None:
            return None, (
                f"{where} but this source has no root folder: configure the source's root "
                "(the folder producers' paths are relative to) or send the image bytes"
            )
        if "\x00" in text or not text:
            return None, f"{where}, which is not a valid path"
        if ".." in PurePosixPath(text).parts or ".." in Path(text).parts:
            return None, f"{where}, which uses '..' to leave {self.root}: refused"
        candidate = Path(text)
        if not candidate.is_absolute():
            candidate = self.root / candidate
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError) as exc:  # symlink loops
            return None, f"{where}, which cannot be resolved ({exc}): refused"
        if not resolved.is_relative_to(self.root):
            how = "is outside" if not candidate.is_relative_to(self.root) else "links outside"
            return None, f"{where}, which {how} the root folder {self.root}: refused"
        return resolved, None

    # ------------------------------------------------------------------ redis plumbing

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return
            msg = f"cannot create consumer group {self.group} on {self.stream}: {exc}"
            raise SourceError(msg) from exc

    def _dead_letter(self, entry_id: str, fields: dict[Any, Any]) -> None:
        """XADD to the dead-letter stream and XACK in one MULTI/EXEC.

        Redis does not roll a transaction back when one command fails at EXEC, so the
        dead-letter key is WATCHed and its type checked first: the XACK can then only run
        together with a successful XADD.
        """
        while True:
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.dead_stream)
                    kind = _text(pipe.type(self.dead_stream))
                    if kind not in ("none", "stream"):
                        msg = (
                            f"dead-letter key {self.dead_stream} holds a {kind}, not a stream: "
                            "rename that key or choose another dead_suffix; the entry stays "
                            "pending"
                        )
                        raise SourceError(msg)
                    pipe.multi()
                    pipe.xadd(self.dead_stream, fields)
                    pipe.xack(self.stream, self.group, entry_id)
                    pipe.execute()
                    return
                except redis.exceptions.WatchError:
                    continue  # the dead-letter key changed under us: check it again

    def _settle_owed(self, *, budget: float | None = None) -> None:
        if not self._owed_acks:
            return
        ids = sorted(self._owed_acks)
        self._call("ack", lambda: self.client.xack(self.stream, self.group, *ids), budget=budget)
        self._owed_acks.difference_update(ids)

    def _call(self, what: str, fn: Callable[[], T], *, budget: float | None = None) -> T:
        """Run ``fn``, retrying lost connections with backoff; recreate a vanished group."""
        deadline = time.monotonic() + (self.retry_s if budget is None else budget)
        delay = 0.05
        recreated = False
        while True:
            try:
                return fn()
            except _RETRYABLE as exc:
                if time.monotonic() + delay > deadline:
                    msg = f"Redis unreachable during {what} ({type(exc).__name__}: {exc})"
                    raise _UnavailableError(msg) from exc
                logger.warning(
                    "%s: %s failed (%s: %s); retrying in %.2f s",
                    self.name,
                    what,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except redis.exceptions.ResponseError as exc:
                # Redis restarted without persistence, or the stream was deleted.
                if "NOGROUP" not in str(exc) or recreated:
                    msg = f"Redis refused {what} on {self.stream}: {exc}"
                    raise SourceError(msg) from exc
                logger.warning("%s: consumer group %s vanished: recreating", self.name, self.group)
                self._ensure_group()
                self._history_from = "0"
                recreated = True

    def _group_info(self) -> dict[str, Any]:
        try:
            groups = self._call("read group info", lambda: self.client.xinfo_groups(self.stream))
        except _UnavailableError as exc:
            raise SourceError(f"{self.name}: {exc}") from exc
        for info in groups:
            if _text(info.get("name")) == self.group:
                return info
        return {"pending": 0, "lag": 0}

    def _lag_of(self, info: dict[str, Any]) -> int:
        lag = info.get("lag")
        if lag is not None:
            return int(lag)
        # Redis < 7 or after deletions: count what follows the last delivered id.
        last = _text(info.get("last-delivered-id") or "0-0")
        try:
            after = self._call(
                "count undelivered",
                lambda: self.client.xrange(self.stream, f"({last}", "+", count=_LAG_SCAN_CAP),
            )
        except _UnavailableError as exc:
            raise SourceError(f"{self.name}: {exc}") from exc
        return len(after or [])


# ---------------------------------------------------------------------- producer and trimming


def enqueue(
    client: redis.Redis,
    stream: str,
    paths: Iterable[str | os.PathLike[str]],
    *,
    by_path: bool = False,
    root: str | os.PathLike[str] | None = None,
    camera: str | None = None,
    line: str | None = None,
    maxlen: int | None = None,
) -> list[str]:
    """Add one message per image file to ``stream``; returns the entry ids.

    By default a message carries the image bytes; ``by_path`` sends the path relative to
    ``root`` instead (consumers must share that folder). ``maxlen`` trims the stream
    afterwards, never past entries still pending or undelivered.
    """
    base: Path | None = None
    if by_path:
        if root is None:
            msg = "enqueue by path needs root: the folder the consumers resolve paths against"
            raise ConfigError(msg)
        base = Path(root).expanduser().resolve()
    ids: list[str] = []
    batch: list[dict[Any, Any]] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for fields in batch:
            pipe.xadd(stream, fields)
        ids.extend(_text(entry_id) for entry_id in pipe.execute())
        batch.clear()

    for item in paths:
        path = Path(item)
        fields: dict[Any, Any] = {"name": path.name}
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
        batch.append(fields)
        if len(batch) >= _ENQUEUE_BATCH:
            flush()
    if batch:
        flush()
    if maxlen is not None:
        trim_stream(stream, maxlen, client=client)
    return ids


def trim_stream(stream: str, maxlen: int, *, client: redis.Redis) -> int:
    """Trim ``stream`` to ``maxlen`` entries, but never below what any group still needs.

    Entries pending in a group, and entries not delivered to it yet, are kept: XTRIM MINID at
    the oldest of those. Returns how many entries were removed.
    """
    if maxlen < 0:
        msg = f"maxlen must be >= 0, not {maxlen}"
        raise ConfigError(msg)
    try:
        if client.xlen(stream) <= maxlen:
            return 0
        if maxlen == 0:
            newest = client.xrevrange(stream, "+", "-", count=1)
            cutoff = _successor(_text(newest[0][0])) if newest else (0, 0)
        else:
            kept = client.xrevrange(stream, "+", "-", count=maxlen)
            cutoff = _parse_id(_text(kept[-1][0]))
        for info in client.xinfo_groups(stream):
            cutoff = min(cutoff, _successor(_text(info.get("last-delivered-id") or "0-0")))
            if int(info.get("pending") or 0):
                summary = client.xpending(stream, _text(info["name"]))
                if summary.get("min") is not None:
                    cutoff = min(cutoff, _parse_id(_text(summary["min"])))
        if cutoff <= (0, 0):
            return 0
        return int(client.xtrim(stream, minid=f"{cutoff[0]}-{cutoff[1]}", approximate=False))
    except _RETRYABLE as exc:
        msg = f"cannot trim {stream}: Redis unreachable ({exc}); try again later"
        raise SourceError(msg) from exc


# ---------------------------------------------------------------------- helpers


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _field(fields: Fields, key: str) -> str | None:
    value = fields.get(key.encode())
    return None if value is None else value.decode("utf-8", errors="replace")


def _entries(response: Any) -> list[tuple[str, Fields]]:
    """XREADGROUP's entries for our one stream, in RESP2 (list) or RESP3 (dict) shape."""
    if not response:
        return []
    per_stream = response.values() if isinstance(response, dict) else (v for _, v in response)
    raw: list[Any] = []
    for value in per_stream:
        for item in value or []:
            # RESP3 wraps a stream's entry list in one more list.
            raw.extend(item if isinstance(item, list) else [item])
    return [(_text(eid), dict(fields or {})) for eid, fields in raw if eid is not None]


def _parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _successor(entry_id: str) -> tuple[int, int]:
    ms, seq = _parse_id(entry_id)
    return ms, seq + 1


def _parse_time(value: str | None, entry_id: str) -> datetime | None:
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
