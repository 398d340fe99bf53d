"""The Redis stream source against a real Redis: groups, pending, reclaim, dead letters, trims."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from defectscan.errors import ConfigError, RejectedInputError, SourceError
from defectscan.sources import ImageRecord, open_source
from defectscan.sources.redis_stream import RedisStreamSource, enqueue, trim_stream

pytestmark = pytest.mark.integration

MakeSource = Callable[..., RedisStreamSource]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def stream(client: redis.Redis) -> Iterator[str]:
    name = f"test:sources:{uuid.uuid4().hex}"
    yield name
    client.delete(name, f"{name}:dead")


@pytest.fixture
def make_source(client: redis.Redis, stream: str) -> Iterator[MakeSource]:
    opened: list[RedisStreamSource] = []

    def make(**kw: object) -> RedisStreamSource:
        options: dict[str, object] = {"consumer": "c1", "block_ms": 50, **kw}
        use = options.pop("client", client)
        source = RedisStreamSource(use, stream, **options)  # type: ignore[arg-type]
        opened.append(source)
        return source

    yield make
    for source in opened:
        source.close()


def _add(client: redis.Redis, stream: str, n: int, **extra: str) -> list[str]:
    return [
        client.xadd(stream, {"data": f"image {i}".encode(), "name": f"{i}.png", **extra}).decode()
        for i in range(n)
    ]


def _pending_ids(client: redis.Redis, stream: str, group: str = "defectscan") -> list[str]:
    rows = client.xpending_range(stream, group, "-", "+", 10_000)
    return [row["message_id"].decode() for row in rows]


def test_messages_with_bytes_arrive_and_ack_deletes_what_all_groups_acked(
    client: redis.Redis, stream: str, make_source: MakeSource, tmp_path: Path
) -> None:
    files = []
    for i in range(2):
        files.append(tmp_path / f"f{i}.png")
        files[-1].write_bytes(f"bytes {i}".encode())
    ids = enqueue(client, stream, files, camera="cam7", line="L2")
    source = make_source(line="default-line")
    records = source.claim(5)
    assert [r.id for r in records] == ids
    first = records[0]
    assert first.read() == b"bytes 0"
    assert (first.camera, first.line, first.source) == ("cam7", "L2", "redis")
    assert first.uri == f"redis://{stream}/{ids[0]}"
    assert first.meta["name"] == "f0.png"
    assert first.captured_at is not None
    assert first.captured_at.tzinfo is not None
    assert (source.pending(), source.lag(), source.backlog()) == (2, 0, 2)

    source.ack(records[:1])
    assert _pending_ids(client, stream) == [ids[1]]
    assert client.xlen(stream) == 1  # acked by the only group: deleted
    assert [e.decode() for e, _ in client.xrange(stream)] == [ids[1]]
    assert source.backlog() == 1


def test_own_pending_entries_are_drained_before_new_ones(
    client: redis.Redis, stream: str, make_source: MakeSource
) -> None:
    old = _add(client, stream, 3)
    crashed = make_source()
    assert [r.id for r in crashed.claim(2)] == old[:2]  # then the process dies
    new = _add(client, stream, 2)
    restarted = make_source()  # same consumer name
    records = restarted.claim(10)
    assert [r.id for r in records] == [*old[:2], old[2], *new]
    assert [r.deliveries for r in records] == [2, 2, 1, 1, 1]


def test_release_redelivers_and_counts(
    client: redis.Redis, stream: str, make_source: MakeSource
) -> None:
    [entry] = _add(client, stream, 1)
    source = make_source()
    [record] = source.claim(1)
    assert source.claim(1) == []  # in our hands: not handed out twice
    source.release([record], "database down")
    [again] = source.claim(1)
    assert (again.id, again.deliveries, again.read()) == (entry, 2, b"image 0")


def test_poison_after_max_deliveries_goes_to_the_dead_letter_stream(
    client: redis.Redis, stream: str, make_source: MakeSource
) -> None:
    [entry] = _add(client, stream, 1)
    source = make_source(max_deliveries=2)
    for expected in (1, 2):
        [record] = source.claim(1)
        assert (record.deliveries, record.error_kind) == (expected, None)
        source.release([record], "worker crashed")
    [record] = source.claim(1)
    assert (record.error_kind, record.deliveries) == ("poison", 3)
    assert "failed 2 times" in (record.error_message or "")
    with pytest.raises(RejectedInputError):
        record.read()
    source.reject(record, record.error_message or "")
    [(_, fields)] = client.xrange(f"{stream}:dead")
    assert fields[b"data"] == b"image 0"
    assert fields[b"original_id"].decode() == entry
    assert fields[b"deliveries"] == b"3"
    assert fields[b"error_kind"] == b"poison"
    assert fields[b"consumer"] == b"c1"
    assert _pending_ids(client, stream) == []


def test_reject_never_acks_without_the_dead_letter(
    client: redis.Redis, stream: str, make_source: MakeSource
) -> None:
    [entry] = _add(client, stream, 1)
    source = make_source()
    [record] = source.claim(1)
    client.set(f"{stream}:dead", "not a stream")
    with pytest.raises(SourceError, match="not a stream"):
        source.reject(record, "undecodable")
    assert _pending_ids(client, stream) == [entry]  # still pending: nothing lost
    client.delete(f"{stream}:dead")
    source.reject(record, "undecodable")
    assert client.xlen(f"{stream}:dead") == 1
    assert _pending_ids(client, stream) == []


def test_path_messages_resolve_inside_root_and_refuse_escapes(
    client: redis.Redis, stream: str, make_source: MakeSource, tmp_path: Path
) -> None:
    root = tmp_path / "images"
    (root / "cam").mkdir(parents=True)
    (root / "cam" / "ok.png").write_bytes(b"inside")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"outside")
    (root / "link.png").symlink_to(secret)
    (root / "inner-link.png").symlink_to(root / "cam" / "ok.png")
    paths = {
        "relative": "cam/ok.png",
        "absolute-inside": str(root / "cam" / "ok.png"),
        "inner-link": "inner-link.png",
        "dotdot": "../secret.png",
        "dotdot-inside": "cam/../cam/ok.png",
        "absolute-outside": str(secret),
        "symlink-out": "link.png",
    }
    ids = {key: client.xadd(stream, {"path": value}).decode() for key, value in paths.items()}
    source = make_source(root=root)
    records = {r.id: r for r in source.claim(20)}
    by_key = {key: records[entry] for key, entry in ids.items()}
    for key in ("relative", "absolute-inside", "inner-link"):
        assert by_key[key].error_kind is None, key
        assert by_key[key].read() == b"inside"
    assert by_key["relative"].uri.endswith("?path=cam/ok.png")
    for key, words in (
        ("dotdot", "'..'"),
        ("dotdot-inside", "'..'"),
        ("absolute-outside", "is outside"),
        ("symlink-out", "links outside"),
    ):
        record = by_key[key]
        assert record.error_kind == "path", key
        assert words in (record.error_message or ""), record.error_message
        with pytest.raises(RejectedInputError) as info:
            record.read()
        assert info.value.kind == "path"
        source.reject(record, record.error_message or "")
    assert client.xlen(f"{stream}:dead") == 4
    dead_paths = {f[b"path"].decode() for _, f in client.xrange(f"{stream}:dead")}
    assert dead_paths == {paths[k] for k in ("dotdot", "dotdot-inside", "absolute-outside")} | {
        "link.png"
    }


def test_path_messages_need_a_root_and_messages_need_an_image(
    client: redis.Redis, stream: str, make_source: MakeSource
) -> None:
    by_path = client.xadd(stream, {"path": "cam/ok.png"}).decode()
    empty = client.xadd(stream, {"camera": "c1"}).decode()
    records = {r.id: r for r in make_source().claim(5)}
    assert records[by_path].error_kind == "path"
    assert "no root" in (records[by_path].error_message or "")
    assert records[empty].error_kind == "message"


def test_captured_at_accepts_iso_and_epoch(
    client: redis.Redis, stream: str, make_source: MakeSource
) -> None:
    client.xadd(stream, {"data": b"x", "captured_at": "2026-11-25T10:00:00+01:00"})
    client.xadd(stream, {"data": b"x", "captured_at": "1700000000.5"})
    client.xadd(stream, {"data": b"x", "captured_at": "yesterday"})
    iso, epoch, bad = make_source().claim(3)
    assert iso.captured_at == datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    assert epoch.captured_at == datetime.fromtimestamp(1700000000.5, tz=UTC)
    assert bad.captured_at is None


def test_entries_of_a_killed_consumer_are_reclaimed(
    redis_url: str, client: redis.Redis, stream: str, make_source: MakeSource
) -> None:
    ids = _add(client, stream, 4)
    script = textwrap.dedent(
        f"""
        import os, signal, redis
        from defectscan.sources.redis_stream import RedisStreamSource
        source = RedisStreamSource(redis.Redis.from_url({redis_url!r}), {stream!r},
                                   consumer="doomed")
        print(len(source.claim(3)), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    assert done.stdout.strip() == "3"
    time.sleep(0.15)  # idle longer than the survivor's claim_idle_ms
    survivor = make_source(consumer="survivor", claim_idle_ms=100)
    records = survivor.claim(10)
    assert [r.id for r in records] == ids  # reclaimed first, then the new entry
    assert [r.deliveries for r in records] == [2, 2, 2, 1]
    survivor.ack(records)
    assert _pending_ids(client, stream) == []


def test_reclaim_follows_the_cursor_across_pages_and_skips_deleted(
    client: redis.Redis, stream: str, make_source: MakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(250):
        pipe.xadd(stream, {"data": f"image {i}".encode()})
    ids = [entry.decode() for entry in pipe.execute()]
    client.xgroup_create(stream, "defectscan", id="0")
    client.xreadgroup("defectscan", "dead", {stream: ">"}, count=1000)  # then it dies
    client.xdel(stream, *ids[10:15])  # trimmed by hand while pending
    time.sleep(0.06)
    source = make_source(consumer="alive", claim_idle_ms=50)
    cursors: list[object] = []
    real = client.xautoclaim

    def spy(*args: object, **kw: object) -> object:
        cursors.append(kw["start_id"])
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "xautoclaim", spy)
    records = source.claim(1000)
    assert len(cursors) >= 3  # COUNT pages of 100: the cursor was followed to 0-0
    assert cursors[0] == "0-0"
    assert cursors[1] != "0-0"
    expected = ids[:10] + ids[15:]
    assert sorted(r.id for r in records) == sorted(expected)
    assert {r.deliveries for r in records} == {2}
    assert source.pending() == 245


def test_trim_keeps_pending_and_undelivered_entries(
    client: redis.Redis, stream: str, make_source: MakeSource
) -> None:
    ids = _add(client, stream, 20)
    client.xgroup_create(stream, "slow-group", id="0")  # keeps acked entries in the stream
    source = make_source()
    slow = make_source(group="slow-group")
    records = source.claim(5)
    source.ack([records[0], records[2]])
    assert client.xlen(stream) == 20  # slow-group has read nothing: nothing may go
    while batch := slow.claim(100):
        slow.ack(batch)  # slow-group done: now our group's pending ids[1] is the oldest needed
    assert [e.decode() for e, _ in client.xrange(stream)] == ids[1:]
    assert source.trim(3) == 0  # ids[1] is pending in our group
    source.ack([records[1], records[3], records[4]])
    assert [e.decode() for e, _ in client.xrange(stream)] == ids[5:]  # 5 acked by both groups
    client.xgroup_create(stream, "late-group", id="0")  # has read nothing yet
    assert trim_stream(stream, 3, client=client) == 0
    client.xgroup_destroy(stream, "late-group")
    assert trim_stream(stream, 3, client=client) == 0  # ids[5:] not delivered to our group
    while batch := source.claim(100):
        source.ack(batch)
    assert client.xlen(stream) == 0


def test_a_failed_ack_keeps_the_entry_pending_until_it_succeeds(
    client: redis.Redis, stream: str, make_source: MakeSource
) -> None:
    [entry] = _add(client, stream, 1)
    source = make_source(retry_s=0.1)
    [record] = source.claim(1)
    good = source.client
    source.client = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    source.ack([record])  # Redis unreachable: no exception, remembered
    assert _pending_ids(client, stream) == [entry]
    assert source.claim(1) == []  # unreachable: nothing, no exception
    source.client = good
    assert source.claim(1) == []  # not redelivered: the owed ack is settled instead
    assert _pending_ids(client, stream) == []


def test_source_recovers_after_its_connection_is_killed(
    redis_url: str,
    client: redis.Redis,
    stream: str,
    make_source: MakeSource,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"src-{uuid.uuid4().hex[:12]}"
    no_retry = redis.Redis.from_url(redis_url, client_name=name, retry=Retry(NoBackoff(), 0))

    def kill() -> int:
        killed = 0
        for info in client.client_list():
            if info.get("name") == name:
                killed += int(client.client_kill_filter(_id=info["id"]))
        return killed

    source = make_source(client=no_retry, block_ms=100)
    _add(client, stream, 1)
    records = source.claim(1)
    assert kill() >= 1
    with caplog.at_level(logging.WARNING, logger="defectscan.sources.redis_stream"):
        source.ack(records)
        assert _pending_ids(client, stream) == []

        result: list[ImageRecord] = []
        waiter = threading.Thread(target=lambda: result.extend(source.claim(1, timeout=5)))
        waiter.start()
        time.sleep(0.2)  # the claim is blocked in XREADGROUP on the connection we kill
        assert kill() >= 1
        [entry] = _add(client, stream, 1, name="after-kill")
        waiter.join(timeout=6)
        assert [r.id for r in result] == [entry]
    assert any("retrying" in r.getMessage() for r in caplog.records)
    no_retry.close()


def test_open_source_parses_redis_urls(
    redis_url: str, client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    source = open_source(f"{redis_url}?stream={stream}&group=g2&consumer=c9", line="L1")
    try:
        assert isinstance(source, RedisStreamSource)
        assert (source.stream, source.group, source.consumer) == (stream, "g2", "c9")
        _add(client, stream, 1)
        [record] = source.claim(1)
        assert record.line == "L1"
        source.ack([record])
    finally:
        source.close()
    short = open_source(f"redis:{stream}", redis_url=redis_url, root=str(tmp_path))
    try:
        assert isinstance(short, RedisStreamSource)
        assert short.root == tmp_path.resolve()
    finally:
        short.close()


def test_enqueue_by_path_sends_paths_relative_to_root(
    client: redis.Redis, stream: str, make_source: MakeSource, tmp_path: Path
) -> None:
    (tmp_path / "cam").mkdir()
    image = tmp_path / "cam" / "a.png"
    image.write_bytes(b"by path")
    [entry] = enqueue(client, stream, [image], by_path=True, root=tmp_path)
    fields = client.xrange(stream)[0][1]
    assert fields[b"path"] == b"cam/a.png"
    assert b"data" not in fields
    [record] = make_source(root=tmp_path).claim(1)
    assert (record.id, record.read()) == (entry, b"by path")
    with pytest.raises(ConfigError, match="outside root"):
        enqueue(client, stream, [image], by_path=True, root=tmp_path / "cam" / "sub")
    with pytest.raises(ConfigError, match="needs root"):
        enqueue(client, stream, [image], by_path=True)


def test_a_decoding_client_is_refused(redis_url: str, stream: str) -> None:
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ConfigError, match="decode_responses=False"):
        RedisStreamSource(decoding, stream)
    decoding.close()


def test_unreachable_redis_at_start_is_a_source_error(stream: str) -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    with pytest.raises(SourceError, match="check that Redis runs"):
        RedisStreamSource(dead, stream, retry_s=0.1)
