"""Bounded Redis streams (issue 16, point 1): entries go once every group acknowledged them and
never before, producers meet a cap with back-pressure, the dead-letter stream is capped and
counts its overflow, and Redis memory stays flat however many images pass through.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import redis

# Names that exist before issue 16 only, so these tests fail on the old code by their
# assertions (not by an ImportError); the new ones are imported inside the tests.
from defectscan.sources.redis_stream import RedisStreamSource, enqueue, trim_stream
from helpers.redis_server import PrivateRedis

pytestmark = pytest.mark.integration


def _source(client: redis.Redis, stream: str, **kw: object) -> RedisStreamSource:
    options: dict[str, object] = {"consumer": "c1", "block_ms": 50, **kw}
    return RedisStreamSource(client, stream, **options)  # type: ignore[arg-type]


def _images(folder: Path, n: int, size: int = 16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"part-{i:05d}.png"
        path.write_bytes(bytes([i % 251]) * size)
        paths.append(path)
    return paths


def _ids(client: redis.Redis, stream: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in client.xrange(stream)]


def test_entries_go_once_every_group_acknowledged_them_never_before(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    ids = enqueue(client, stream, _images(tmp_path, 6))
    line = _source(client, stream)  # group "defectscan"
    audit = _source(client, stream, group="audit")  # a second group reads the same stream
    first = line.claim(4)
    line.ack(first[:2])  # acked by one group only: the other has not even read them
    assert _ids(client, stream) == ids
    read = audit.claim(6)
    audit.ack(read)
    # acked by both groups: ids[0:2] go; ids[2:4] are pending in "defectscan", ids[4:] unread
    assert _ids(client, stream) == ids[2:]
    line.ack(first[2:])
    assert _ids(client, stream) == ids[4:]
    line.ack(line.claim(10))
    assert client.xlen(stream) == 0
    assert (line.backlog(), audit.backlog()) == (0, 0)


def test_a_stream_nobody_reads_yet_is_never_trimmed(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    enqueue(client, stream, _images(tmp_path, 5))
    assert trim_stream(stream, 0, client=client) == 0  # no consumer group: all entries unread
    assert trim_stream(stream, 2, client=client) == 0
    assert client.xlen(stream) == 5


def test_enqueue_refuses_loudly_over_the_cap(
    client: redis.Redis, stream: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from defectscan.sources import StreamFullError

    images = _images(tmp_path, 8)
    assert len(enqueue(client, stream, images[:5], max_len=5)) == 5
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="defectscan.sources.redis_producer"),
        pytest.raises(StreamFullError, match=r"is full \(5 entries, cap 5\)") as info,
    ):
        enqueue(client, stream, images[5:], max_len=5, wait_s=0.3)
    assert time.monotonic() - started >= 0.3  # it waited for the consumers before refusing
    assert "0 image(s) were queued" in str(info.value)
    assert any("waiting up to" in r.getMessage() for r in caplog.records)
    assert client.xlen(stream) == 5  # the cap held

    # entries every group acknowledged make room at once, without waiting
    source = _source(client, stream)
    source.ack(source.claim(3))
    assert len(enqueue(client, stream, images[5:], max_len=5)) == 3
    assert client.xlen(stream) == 5


def test_enqueue_waits_for_the_consumers_and_then_goes_on(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    images = _images(tmp_path, 30)
    source = _source(client, stream)
    done = threading.Event()

    def consume() -> None:
        while not done.is_set():
            source.ack(source.claim(4, timeout=0.05))

    enqueue(client, stream, images[:10], max_len=10)
    worker = threading.Thread(target=consume)
    worker.start()
    try:
        ids = enqueue(client, stream, images[10:], max_len=10, wait_s=20)
    finally:
        done.set()
        worker.join(timeout=10)
    assert len(ids) == 20
    source.ack(source.claim(100))
    assert client.xlen(stream) == 0


def test_the_dead_letter_stream_is_capped_and_counts_its_overflow(
    client: redis.Redis, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [client.xadd(stream, {"data": f"bad {i}".encode()}).decode() for i in range(5)]
    seen: list[tuple[int, str]] = []
    source = _source(
        client, stream, dead_max_len=3, on_dead_overflow=lambda n, m: seen.append((n, m))
    )
    other = _source(client, stream, consumer="c2", dead_max_len=3)
    records = source.claim(4)
    with caplog.at_level(logging.ERROR, logger="defectscan.sources.redis_stream"):
        for record in records:
            source.reject(record, "undecodable")
    [last] = other.claim(1)
    other.reject(last, "undecodable")
    dead = [f[b"original_id"].decode() for _, f in client.xrange(f"{stream}:dead")]
    assert dead == ids[2:]  # the newest three are kept
    assert source.dead_dropped == 1
    assert [n for n, _ in seen] == [1]
    assert "at its cap of 3" in seen[0][1]
    assert any("dropped" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert source.dead_letter_dropped() == 2  # counted in Redis across consumers
    assert client.xlen(stream) == 0  # every entry settled and deleted
    assert source.pending() == 0


def test_redis_memory_stays_flat_over_many_images(tmp_path: Path) -> None:
    """3,000 images of 8 KiB (24 MB) through a Redis limited to 8 MB, without eviction."""
    server = PrivateRedis(tmp_path, "--maxmemory", "8mb", "--maxmemory-policy", "noeviction")
    server.start()
    client = server.client()
    try:
        stream = "line-flat"
        images = _images(tmp_path / "parts", 50, size=8192)
        source = _source(client, stream, claim_idle_ms=60_000)
        source.ack(source.claim(1))  # the group exists; nothing in it yet
        start = int(client.info("memory")["used_memory"])
        for _ in range(60):
            assert len(enqueue(client, stream, images, max_len=200)) == 50
            while records := source.claim(32):
                source.ack(records)
        end = int(client.info("memory")["used_memory"])
        assert client.xlen(stream) == 0
        assert end <= start * 1.1 + 256 * 1024, (start, end)
    finally:
        client.close()
        server.crash()


def _fill(client: redis.Redis) -> None:
    """Make this private Redis full: maxmemory below what it uses (noeviction)."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", max(1, used - 256 * 1024))


def _drain(client: redis.Redis) -> None:
    client.config_set("maxmemory", 64 * 1024 * 1024)


def test_a_full_redis_is_a_fault_of_the_plant_not_of_the_images(tmp_path: Path) -> None:
    from defectscan.sources import SourceFaultError

    server = PrivateRedis(tmp_path, "--maxmemory", "64mb", "--maxmemory-policy", "noeviction")
    server.start()
    client = server.client()
    try:
        stream = "line-oom"
        [good] = _images(tmp_path / "one", 1, size=1024)
        _fill(client)  # over maxmemory: writes are refused
        with pytest.raises(SourceFaultError, match="out of memory"):
            enqueue(client, stream, [good])
        _drain(client)
        source = _source(client, stream)
        enqueue(client, stream, [good])
        [record] = source.claim(1)
        _fill(client)
        with pytest.raises(SourceFaultError, match="out of memory"):
            source.reject(record, "undecodable")
        assert source.pending() == 1  # still pending: nothing lost, nothing charged
        _drain(client)
        source.reject(record, "undecodable")
        assert (source.pending(), client.xlen(f"{stream}:dead")) == (0, 1)

        # a full Redis still lets a (re)started monitor in, with its default name, to drain it
        enqueue(client, stream, _images(tmp_path / "more", 3, size=1024))
        source.close()
        _fill(client)
        restarted = RedisStreamSource(client, stream, line="L1", camera="c1", block_ms=50)
        records = restarted.claim(10)
        assert len(records) == 3
        restarted.ack(records)
        assert client.xlen(stream) == 0  # drained: room again
        restarted.close()
    finally:
        client.close()
        server.crash()
