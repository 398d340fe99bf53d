"""A Redis stream as an image source: one stream per line, one consumer group, many consumers.

Messages carry the image bytes or a path under the source's ``root``
(:mod:`~defectscan.sources.redis_messages`); :func:`~defectscan.sources.redis_producer.enqueue`
is the matching producer. Delivery is at least once; each entry is settled once, after its row
is committed:

- ``claim`` reads this consumer's own pending entries (at start, and again after a ``release``
  or a lost connection), then entries of dead consumers idle longer than ``claim_idle_ms``
  (XAUTOCLAIM, a pass every ``claim_idle_ms / 2``), then new entries. ``renew`` keeps a long
  batch's claim (XCLAIM JUSTID on what this consumer still owns).
- ``ack`` XACKs, then deletes what every group has acknowledged (XTRIM MINID, never past
  anything pending or undelivered). An XACK that cannot reach Redis is retried on the next call.
- ``reject`` moves the entry to the dead-letter stream ``<stream>:dead`` (the original fields
  plus ``reason``, ``original_id``, ``deliveries``, ...) and XACKs it, in one transaction. That
  stream keeps ``dead_max_len`` entries; what falls off is counted (``<stream>:dead:dropped``,
  :attr:`RedisStreamSource.dead_dropped`, ``on_dead_overflow``) and logged as an error.
- ``release`` leaves the entries pending and counts a delivery; ``charge=False`` (a fault of
  the plant) sets the counter back (XCLAIM RETRYCOUNT). An entry delivered more than
  ``max_deliveries`` times is handed out as poison, a by-path message that escapes ``root`` as
  ``error_kind="path"``: each gets an error row and goes to the dead-letter stream.

The default consumer name is ``HOST-LINE-CAMERA``, leased so two live processes never share it
(:class:`~defectscan.sources.redis_groups.ConsumerLease`): a restarted monitor gets its own
pending entries back at once. :meth:`RedisStreamSource.prune_consumers` deletes consumers idle
longer than ``consumer_idle_ms`` that hold no pending entries.

A lost connection is retried for ``retry_s`` seconds per call; ``claim`` then returns what it has
and ``ack`` remembers what it owes. Refusals of the plant (out of memory, wrong password, no
permission) raise :class:`~defectscan.sources.base.SourceFaultError` at once; metrics
(``backlog``, ``pending``, ``lag``) and ``trim`` raise :class:`~defectscan.errors.SourceError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import redis

from defectscan.errors import ConfigError, SourceError
from defectscan.sources.base import ImageRecord
from defectscan.sources.redis_commands import (
    RedisUnavailableError,
    autoclaim_page,
    call_redis,
    checked_block_ms,
    dead_letter,
    delivery_counts,
    group_info,
    is_oom,
    lag_of,
    redis_fault,
)
from defectscan.sources.redis_groups import (
    ConsumerLease,
    default_consumer_name,
    prune_consumers,
    reclaim_own,
    trim_acked,
    trim_stream,
)
from defectscan.sources.redis_messages import (
    Fields,
    MessageRules,
    build_record,
    dead_fields,
    entries,
)
from defectscan.sources.redis_producer import enqueue

__all__ = ["RedisStreamSource", "enqueue", "trim_stream"]  # the producer's, kept importable here

logger = logging.getLogger(__name__)

T = TypeVar("T")

_AUTOCLAIM_PAGE = 100  # Redis's own default COUNT for XAUTOCLAIM
_MIN_LEASE_MS = 120_000


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
        dead_max_len: int = 10_000,
        max_file_bytes: int | None = 256 * 1024 * 1024,
        consumer_idle_ms: int = 600_000,
        on_dead_overflow: Callable[[int, str], None] | None = None,
        retry_s: float = 5.0,
        owns_client: bool = False,
    ) -> None:
        if not stream:
            msg = "the stream name is empty: pass the line's stream, e.g. 'defectscan:line1'"
            raise ConfigError(msg)
        if min(max_deliveries, claim_idle_ms, block_ms, dead_max_len) < 1:
            msg = "max_deliveries, claim_idle_ms, block_ms and dead_max_len must be at least 1"
            raise ConfigError(msg)
        if (max_file_bytes is not None and max_file_bytes < 1) or consumer_idle_ms < 0:
            msg = "max_file_bytes must be at least 1 and consumer_idle_ms at least 0"
            raise ConfigError(msg)
        block_ms = checked_block_ms(client, block_ms)
        self.client = client
        self.stream = stream
        self.group = group
        self.dead_stream = f"{stream}{dead_suffix}"
        self.line = line
        self.camera = camera
        self.root = None if root is None else Path(root).expanduser().resolve()
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.dead_max_len = dead_max_len
        self.max_file_bytes = max_file_bytes
        self.consumer_idle_ms = consumer_idle_ms
        self.on_dead_overflow = on_dead_overflow
        #: Entries this source pushed off the capped dead-letter stream.
        self.dead_dropped = 0
        self.retry_s = retry_s
        self.name = f"redis:{stream}"
        self._rules = MessageRules(
            stream=stream,
            dead_stream=self.dead_stream,
            root=self.root,
            max_deliveries=max_deliveries,
            max_file_bytes=max_file_bytes,
            line=line,
            camera=camera,
        )
        self._owns_client = owns_client
        self._lock = threading.RLock()
        self._inflight: dict[str, Fields] = {}
        self._owed_acks: set[str] = set()
        # Where the next read of our own pending list starts; None once it is drained.
        self._history_from: str | None = "0"
        self._autoclaim_cursor: str | None = None
        self._next_autoclaim = 0.0
        self._lease: ConsumerLease | None = None
        try:
            if consumer:
                self.consumer = consumer
            else:
                ttl = max(2 * claim_idle_ms, _MIN_LEASE_MS)
                self._lease = ConsumerLease(client, stream, group, ttl_ms=ttl)
                base = default_consumer_name(line, camera)
                self.consumer = self._call(
                    "lease a consumer name", partial(self._lease.acquire, base)
                )
            self._call("create consumer group", self._ensure_group)
        except RedisUnavailableError as exc:
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
                self._refresh_lease()
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
            except RedisUnavailableError as exc:
                # Something may have been delivered to us before the connection dropped:
                # re-read our own pending list once Redis answers again.
                self._history_from = "0"
                logger.warning(
                    "claim from %s: %s; returning %d record(s)", self.name, exc, len(out)
                )
        return out

    def ack(self, records: Sequence[ImageRecord]) -> None:
        """XACK the records (rows committed), then delete what every group has acknowledged."""
        ids = [record.id for record in records]
        with self._lock:
            for entry_id in ids:
                self._inflight.pop(entry_id, None)
            self._owed_acks.update(ids)
            try:
                self._settle_owed()
            except RedisUnavailableError as exc:
                logger.warning(
                    "ack on %s: %s; %d entr(ies) stay pending and are acked on the next call",
                    self.name,
                    exc,
                    len(self._owed_acks),
                )

    def reject(self, record: ImageRecord, error: str) -> None:
        """Move the entry to the (capped) dead-letter stream and XACK it, in one transaction."""
        with self._lock:
            entry_id = record.id
            fields = self._inflight.pop(entry_id, None)
            try:
                if fields is None:
                    found = self._call(
                        "read entry", lambda: self.client.xrange(self.stream, entry_id, entry_id)
                    )
                    fields = dict(found[0][1]) if found else {}
                dead = dead_fields(fields, record, error, group=self.group, consumer=self.consumer)
                move = partial(dead_letter, self.client, stream=self.stream, group=self.group)
                dropped = self._call(
                    "dead-letter",
                    partial(
                        move,
                        entry_id=entry_id,
                        fields=dead,
                        dead_stream=self.dead_stream,
                        max_len=self.dead_max_len,
                    ),
                )
            except RedisUnavailableError as exc:
                self._history_from = "0"  # still pending: delivered and rejected again later
                logger.warning("reject on %s of %s: %s", self.name, entry_id, exc)
                return
            logger.info("rejected %s %s to %s: %s", self.name, entry_id, self.dead_stream, error)
            if dropped:
                self._dead_overflow(dropped)
            self._trim_acked()

    def release(self, records: Sequence[ImageRecord], error: str, *, charge: bool = True) -> None:
        """Leave the entries pending; the next claim re-reads them (a new delivery).

        ``charge=False``: a fault of the plant, not of these images: their delivery counters
        are set back, so the next delivery does not count toward ``max_deliveries``.
        """
        with self._lock:
            for record in records:
                self._inflight.pop(record.id, None)
            if not records:
                return
            self._history_from = "0"
            if not charge:
                counts = [max(0, record.deliveries - 1) for record in records]
                try:
                    self._reclaim_own([record.id for record in records], counts)
                except RedisUnavailableError as exc:
                    logger.warning("release on %s: %s; the delivery stays counted", self.name, exc)
            logger.info(
                "released %d entr(ies) of %s%s: %s",
                len(records),
                self.name,
                "" if charge else " (not charged: a fault of the plant)",
                error,
            )

    def renew(self, records: Sequence[ImageRecord]) -> None:
        """Reset the idle time of entries still in work, so no other consumer reclaims them."""
        ids = [record.id for record in records]
        if not ids:
            return
        with self._lock:
            try:
                self._refresh_lease(force=True)
                kept = self._reclaim_own(ids)
            except RedisUnavailableError as exc:
                logger.warning("renew on %s: %s", self.name, exc)
                return
        lost = sorted(set(ids) - set(kept))
        if lost:
            logger.warning(
                "%s: %d entr(ies) were reclaimed by another consumer before this one renewed "
                "its claim (renew more often than claim_idle_ms=%d): %s",
                self.name,
                len(lost),
                self.claim_idle_ms,
                ", ".join(lost[:10]),
            )

    def prune_consumers(self, idle_ms: int | None = None) -> list[str]:
        """Delete other consumers idle at least ``idle_ms`` (default ``consumer_idle_ms``)
        that hold no pending entries; returns their names."""
        idle = self.consumer_idle_ms if idle_ms is None else idle_ms
        prune = partial(prune_consumers, self.stream, self.group, client=self.client)
        with self._lock:
            return self._call_or_raise("prune", partial(prune, idle, keep=[self.consumer]))

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

    def dead_letter_dropped(self) -> int:
        """Entries pushed off this stream's capped dead-letter stream, by every consumer."""
        raw = self._call_or_raise(
            "read dead-letter overflow", lambda: self.client.get(self._dropped_key)
        )
        return int(raw or 0)

    def trim(self, maxlen: int) -> int:
        """Trim to about ``maxlen`` entries, never past anything pending or undelivered."""
        return trim_stream(self.stream, maxlen, client=self.client)

    def close(self) -> None:
        """Ack what is owed if Redis answers; close the client if this source created it."""
        with self._lock:
            if self._owed_acks:
                try:
                    self._settle_owed(budget=1.0)
                except RedisUnavailableError:
                    logger.warning(
                        "closing %s with %d unacked entr(ies): they will be redelivered",
                        self.name,
                        len(self._owed_acks),
                    )
            self._inflight.clear()
            if self._lease is not None:
                self._lease.forget()
                if not self._owed_acks:
                    with contextlib.suppress(RedisUnavailableError, SourceError):  # it expires
                        self._call("release the consumer name", self._lease.release, budget=1.0)
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
        read = partial(self.client.xreadgroup, self.group, self.consumer)
        while len(out) < n and self._history_from is not None:
            since = {self.stream: self._history_from}
            found = entries(
                self._call("read own pending", partial(read, since, count=n - len(out)))
            )
            if not found:
                self._history_from = None
                break
            self._history_from = found[-1][0]
            out += self._hand_out(found, fresh=False)
        return out

    def _autoclaim_due(self) -> bool:
        return self._autoclaim_cursor is not None or time.monotonic() >= self._next_autoclaim

    def _autoclaim(self, need: int) -> list[ImageRecord]:
        """Take over entries idle longer than ``claim_idle_ms`` (their consumer died)."""
        out: list[ImageRecord] = []
        while len(out) < need:
            page = partial(autoclaim_page, self.client, self.stream, self.group, self.consumer)
            cursor, claimed = self._call(
                "reclaim idle entries",
                partial(
                    page,
                    min_idle_ms=self.claim_idle_ms,
                    start=self._autoclaim_cursor or "0-0",
                    count=min(_AUTOCLAIM_PAGE, need - len(out)),
                ),
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
        return self._hand_out(entries(response), fresh=True)

    def _hand_out(self, found: list[tuple[str, Fields]], *, fresh: bool) -> list[ImageRecord]:
        """Records for entries just delivered to us, skipping those already in our hands."""
        usable: list[tuple[str, Fields]] = []
        gone: list[str] = []
        for entry_id, fields in found:
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
        ids = [eid for eid, _ in usable]
        counts = (
            {}
            if fresh or not ids
            else self._call(
                "read delivery counts",
                partial(delivery_counts, self.client, self.stream, self.group, ids),
            )
        )
        records = []
        for entry_id, fields in usable:
            self._inflight[entry_id] = fields
            records.append(build_record(entry_id, fields, counts.get(entry_id, 1), self._rules))
        return records

    # ------------------------------------------------------------------ redis plumbing

    @property
    def _dropped_key(self) -> str:
        return f"{self.dead_stream}:dropped"

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return
            if is_oom(exc) and "name" in group_info(self.client, self.stream, self.group):
                return  # a full Redis refuses XGROUP CREATE even when the group exists
            msg = f"cannot create consumer group {self.group} on {self.stream}: {exc}"
            raise redis_fault(exc, "creating the consumer group", self.stream) or SourceError(
                msg
            ) from exc

    def _dead_overflow(self, dropped: int) -> None:
        self.dead_dropped += dropped
        message = (
            f"dead-letter stream {self.dead_stream} is at its cap of {self.dead_max_len} "
            f"entries: the {dropped} oldest were dropped ({self.dead_dropped} by this consumer "
            f"so far, total in {self._dropped_key}); inspect and empty it, or raise dead_max_len"
        )
        logger.error("%s: %s", self.name, message)
        if self.on_dead_overflow is not None:
            try:
                self.on_dead_overflow(dropped, message)
            except Exception:  # a failing hook must not lose the settled entry
                logger.exception("%s: the dead-letter overflow hook failed", self.name)

    def _settle_owed(self, *, budget: float | None = None) -> None:
        if not self._owed_acks:
            return
        ids = sorted(self._owed_acks)
        self._call("ack", lambda: self.client.xack(self.stream, self.group, *ids), budget=budget)
        self._owed_acks.difference_update(ids)
        self._trim_acked()

    def _trim_acked(self) -> None:
        """Delete what every group acknowledged; a failure only delays it to the next ack."""
        try:
            trim_acked(self.stream, client=self.client)
        except SourceError as exc:
            logger.warning("%s: acknowledged entries not deleted yet: %s", self.name, exc)

    def _reclaim_own(self, ids: list[str], counts: list[int] | None = None) -> list[str]:
        own = partial(reclaim_own, self.stream, self.group, self.consumer, client=self.client)
        return self._call("renew claims", partial(own, ids, retry_counts=counts))

    def _refresh_lease(self, *, force: bool = False) -> None:
        if self._lease is not None:
            self._call("refresh the consumer lease", partial(self._lease.refresh, force=force))

    def _call(self, what: str, fn: Callable[[], T], *, budget: float | None = None) -> T:
        """Run ``fn`` with retries (see :func:`~defectscan.sources.redis_commands.call_redis`)."""
        return call_redis(
            what,
            fn,
            where=self.stream,
            budget=self.retry_s if budget is None else budget,
            on_nogroup=self._recreate_group,
        )

    def _recreate_group(self) -> None:
        self._ensure_group()
        self._history_from = "0"

    def _call_or_raise(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return self._call(what, fn)
        except RedisUnavailableError as exc:
            raise SourceError(f"{self.name}: {exc}") from exc

    def _group_info(self) -> dict[str, Any]:
        info = partial(group_info, self.client, self.stream, self.group)
        return self._call_or_raise("read group info", info)

    def _lag_of(self, info: dict[str, Any]) -> int:
        return self._call_or_raise(
            "count undelivered", partial(lag_of, self.client, self.stream, info)
        )
