"""Consumer-group bookkeeping of a Redis stream, shared by its consumers and producers.

- :func:`trim_acked` deletes the entries every consumer group has acknowledged (XTRIM MINID at
  the oldest entry some group still needs, in one Lua script, so no group can move between the
  look and the cut). A stream without any group keeps everything: nobody has read it yet.
- :func:`trim_stream` trims to a length, never below what a group still needs.
- :func:`default_consumer_name` and :class:`ConsumerLease`: a stable consumer name per host,
  line and camera, and a lease in Redis that keeps two live processes on one host from sharing
  it (the second takes ``NAME-2``); a crashed holder's lease is taken over at once, because its
  pid is gone.
- :func:`prune_consumers` deletes consumers idle longer than a limit, only when they hold no
  pending entries (checked and deleted in one script).
- :func:`reclaim_own` renews our claim on entries (XCLAIM ... JUSTID, idle reset) only where we
  still own them, optionally setting their delivery counter back (an uncharged release).

Single commands, retries and the meaning of Redis's refusals live in
:mod:`defectscan.sources.redis_commands`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import redis

from defectscan.errors import ConfigError, SourceError
from defectscan.sources.redis_commands import AUTH_ERRORS, RETRYABLE, is_oom, refused, text

__all__ = [
    "ConsumerLease",
    "default_consumer_name",
    "prune_consumers",
    "reclaim_own",
    "trim_acked",
    "trim_stream",
]

logger = logging.getLogger(__name__)


# The oldest id any group still needs: min over groups of (oldest pending, last delivered + 1).
_LUA_IDS = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a_ms, a_seq, b_ms, b_seq)
  return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
end
local function needed(stream)
  local groups = redis.call('XINFO', 'GROUPS', stream)
  if #groups == 0 then return nil end
  local cut_ms, cut_seq
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    local ms, seq = parse(info['last-delivered-id'])
    seq = seq + 1
    if tonumber(info['pending']) > 0 then
      local summary = redis.call('XPENDING', stream, info['name'])
      local p_ms, p_seq = parse(summary[2])
      if less(p_ms, p_seq, ms, seq) then ms, seq = p_ms, p_seq end
    end
    if cut_ms == nil or less(ms, seq, cut_ms, cut_seq) then cut_ms, cut_seq = ms, seq end
  end
  return cut_ms, cut_seq
end
"""

_TRIM_ACKED = (
    _LUA_IDS
    + """
local cut_ms, cut_seq = needed(KEYS[1])
if cut_ms == nil then return 0 end
local keep_ms, keep_seq = cut_ms, cut_seq
if ARGV[1] ~= '' then
  local k_ms, k_seq = parse(ARGV[1])
  if less(k_ms, k_seq, keep_ms, keep_seq) then keep_ms, keep_seq = k_ms, k_seq end
end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', keep_ms, keep_seq))
"""
)

# ARGV: group, consumer, then (id, retrycount or '') pairs. Returns the ids still ours.
_RECLAIM_OWN = """
local kept = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #row == 1 and row[1][2] == ARGV[2] then
    if ARGV[i + 1] ~= '' then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
    else
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    end
    table.insert(kept, id)
  end
end
return kept
"""

# ARGV: group, idle_ms, names to keep. Deletes idle consumers without pending entries.
_PRUNE = """
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if not keep[info['name']] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    table.insert(removed, info['name'])
  end
end
return removed
"""

# KEYS: lease; ARGV: holder, ttl ms. Keeps (or re-takes) a lease that is ours or free.
# PEXPIRE works in a full Redis (maxmemory); only re-taking a vanished lease needs a SET.
_LEASE_REFRESH = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease; ARGV: expected old holder, new holder, ttl ms. Compare-and-set.
_LEASE_TAKE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


# ---------------------------------------------------------------------- trimming


def trim_acked(stream: str, *, client: redis.Redis, keep_from: str | None = None) -> int:
    """Delete the entries every consumer group of ``stream`` has acknowledged.

    The cut is the oldest entry still pending in some group or not yet delivered to it; with
    ``keep_from``, nothing at or after that id goes either. A stream without groups keeps all.
    Returns how many entries were deleted.
    """
    script = client.register_script(_TRIM_ACKED)
    try:
        return int(script(keys=[stream], args=[keep_from or ""]))
    except redis.exceptions.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return 0
        raise refused(exc, "trimming acknowledged entries", stream) from exc
    except AUTH_ERRORS as exc:
        raise refused(exc, "trimming acknowledged entries", stream) from exc
    except RETRYABLE as exc:
        msg = f"cannot trim {stream}: Redis unreachable ({exc}); try again later"
        raise SourceError(msg) from exc


def trim_stream(stream: str, maxlen: int, *, client: redis.Redis) -> int:
    """Trim ``stream`` to ``maxlen`` entries, but never below what any group still needs.

    Entries pending in a group, and entries not delivered to it yet, are kept; a stream no
    group reads yet is not trimmed at all. Returns how many entries were removed.
    """
    if maxlen < 0:
        msg = f"maxlen must be >= 0, not {maxlen}"
        raise ConfigError(msg)
    try:
        if client.xlen(stream) <= maxlen:
            return 0
        if maxlen == 0:
            return trim_acked(stream, client=client)
        kept = client.xrevrange(stream, "+", "-", count=maxlen)
        return trim_acked(stream, client=client, keep_from=text(kept[-1][0]))
    except RETRYABLE as exc:
        msg = f"cannot trim {stream}: Redis unreachable ({exc}); try again later"
        raise SourceError(msg) from exc


# ---------------------------------------------------------------------- consumers


def default_consumer_name(line: str | None = None, camera: str | None = None) -> str:
    """``HOST-LINE-CAMERA`` (the parts that are known): the same after every restart."""
    parts = [socket.gethostname(), line, camera]
    return "-".join(p.strip().replace(" ", "_") for p in parts if p and p.strip())


def prune_consumers(
    stream: str,
    group: str,
    idle_ms: int,
    *,
    client: redis.Redis,
    keep: Iterable[str] = (),
) -> list[str]:
    """Delete consumers idle at least ``idle_ms`` that hold no pending entries; their names.

    Checked and deleted in one script: a consumer that takes an entry meanwhile is kept.
    """
    if idle_ms < 0:
        msg = f"idle_ms must be >= 0, not {idle_ms}"
        raise ConfigError(msg)
    script = client.register_script(_PRUNE)
    try:
        removed = script(keys=[stream], args=[group, idle_ms, *keep])
    except redis.exceptions.ResponseError as exc:
        if "NOGROUP" in str(exc) or "no such key" in str(exc).lower():
            return []
        raise refused(exc, "pruning consumers", stream) from exc
    names = [text(name) for name in removed]
    if names:
        logger.info("%s: deleted idle consumer(s) without pending entries: %s", stream, names)
    return names


def reclaim_own(
    stream: str,
    group: str,
    consumer: str,
    ids: Sequence[str],
    *,
    client: redis.Redis,
    retry_counts: Sequence[int | None] | None = None,
) -> list[str]:
    """Reset the idle time of the entries ``consumer`` still owns (XCLAIM JUSTID); their ids.

    An entry another consumer has reclaimed meanwhile is left to it. ``retry_counts`` sets
    each entry's delivery counter (None: unchanged).
    """
    if not ids:
        return []
    counts = retry_counts or [None] * len(ids)
    args: list[Any] = [group, consumer]
    for entry_id, count in zip(ids, counts, strict=True):
        args += [entry_id, "" if count is None else max(0, int(count))]
    script = client.register_script(_RECLAIM_OWN)
    return [text(entry_id) for entry_id in script(keys=[stream], args=args)]


class ConsumerLease:
    """Who uses a default consumer name right now: a key ``<stream>:lease:<group>:<name>``.

    The holder is ``host|pid|token``. A name whose lease is held by a live process is passed
    over (``NAME-2``, ``NAME-3``, ...); one held by a process of this host that is gone (killed,
    or this very pid in a restarted container, when no source of this process holds it) is
    taken over at once. The lease lives ``ttl_ms`` and is refreshed on every use of the source.
    """

    _MAX_SUFFIX = 64
    _held: ClassVar[set[str]] = set()  # holders of the live sources of this process

    def __init__(self, client: redis.Redis, stream: str, group: str, *, ttl_ms: int) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.ttl_ms = ttl_ms
        self.host = socket.gethostname()
        self.holder = f"{self.host}|{os.getpid()}|{uuid.uuid4().hex[:12]}"
        self.name: str | None = None
        self._refreshed = 0.0

    def key(self, name: str) -> str:
        """The lease key of consumer ``name``."""
        return f"{self.stream}:lease:{self.group}:{name}"

    def acquire(self, base: str) -> str:
        """The first free name of ``base``, ``base-2``, ...; leased to us.

        A Redis out of memory refuses new leases: then ``base`` is used without one, so a
        monitor can still start and drain the stream that filled it.
        """
        try:
            return self._acquire(base)
        except redis.exceptions.ResponseError as exc:
            if not is_oom(exc):
                raise
            logger.warning(
                "%s: Redis is out of memory: using consumer name %s without a lease",
                self.stream,
                base,
            )
            return base

    def _acquire(self, base: str) -> str:
        take = self.client.register_script(_LEASE_TAKE)
        for i in range(1, self._MAX_SUFFIX + 1):
            name = base if i == 1 else f"{base}-{i}"
            key = self.key(name)
            if self.client.set(key, self.holder, nx=True, px=self.ttl_ms):
                return self._took(name)
            held = self.client.get(key)
            if held is None:
                if self.client.set(key, self.holder, nx=True, px=self.ttl_ms):
                    return self._took(name)
                continue
            holder = text(held)
            if self._gone(holder) and take(keys=[key], args=[holder, self.holder, self.ttl_ms]):
                logger.info("%s: consumer %s was left by a dead process; taking it", key, name)
                return self._took(name)
        msg = (
            f"{self.stream}: {self._MAX_SUFFIX} live consumers named {base}[-N] on this host: "
            "give each monitor its own consumer= name"
        )
        raise SourceError(msg)

    def refresh(self, *, force: bool = False) -> None:
        """Extend the lease (at most every ttl/4 unless ``force``); warn if another took it."""
        now = time.monotonic()
        if self.name is None or (not force and now - self._refreshed < self.ttl_ms / 4000):
            return
        script = self.client.register_script(_LEASE_REFRESH)
        try:
            kept = script(keys=[self.key(self.name)], args=[self.holder, self.ttl_ms])
        except redis.exceptions.ResponseError as exc:
            if not is_oom(exc):
                raise
            self._refreshed = now  # the lease had expired and Redis is full: try again later
            return
        if kept:
            self._refreshed = now
            return
        logger.error(
            "%s: another process took consumer name %s while this one was stalled for more "
            "than %d ms; both now read as one consumer",
            self.stream,
            self.name,
            self.ttl_ms,
        )
        self._refreshed = now

    def release(self) -> None:
        """Give the name back (only if the lease is still ours)."""
        if self.name is None:
            return
        ConsumerLease._held.discard(self.holder)
        take = self.client.register_script(_LEASE_TAKE)
        take(keys=[self.key(self.name)], args=[self.holder, self.holder, 1])
        self.name = None

    def forget(self) -> None:
        """This process no longer uses the lease (it expires by itself if not released)."""
        ConsumerLease._held.discard(self.holder)

    def _took(self, name: str) -> str:
        self.name = name
        self._refreshed = time.monotonic()
        ConsumerLease._held.add(self.holder)
        return name

    def _gone(self, holder: str) -> bool:
        host, _, rest = holder.partition("|")
        pid_text = rest.partition("|")[0]
        if host != self.host or not pid_text.isdigit():
            return False  # another machine's process: only its lease's expiry tells
        pid = int(pid_text)
        if pid == os.getpid():  # a previous incarnation of this pid (a restarted container)?
            return holder not in ConsumerLease._held
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
