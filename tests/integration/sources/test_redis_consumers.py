"""Redis consumers that live long (issue 16): stable names, leases, pruning, claim renewal,
uncharged releases, source identities, safe by-path reads and credentials from
``DEFECTSCAN_REDIS_URL``. Real Redis servers: the shared one, and private ones where a test
must set a password.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from defectscan.errors import ConfigError, RejectedInputError, SourceError
from defectscan.sources import ImageRecord, open_source
from defectscan.sources.redis_stream import RedisStreamSource
from helpers.cli import run_cli
from helpers.redis_server import PrivateRedis

pytestmark = pytest.mark.integration

MakeSource = Callable[..., RedisStreamSource]
HOST = socket.gethostname()


@pytest.fixture
def make_source(client: redis.Redis, stream: str) -> Iterator[MakeSource]:
    opened: list[RedisStreamSource] = []

    def make(**kw: object) -> RedisStreamSource:
        options: dict[str, object] = {"block_ms": 50, **kw}
        source = RedisStreamSource(client, stream, **options)  # type: ignore[arg-type]
        opened.append(source)
        return source

    yield make
    for source in opened:
        source.close()


def _add(client: redis.Redis, stream: str, n: int) -> list[str]:
    return [client.xadd(stream, {"data": f"image {i}".encode()}).decode() for i in range(n)]


def _owner(client: redis.Redis, stream: str, entry_id: str) -> str:
    [row] = client.xpending_range(stream, "defectscan", entry_id, entry_id, 1)
    return str(row["consumer"].decode())


def _make_idle(client: redis.Redis, stream: str, entry_id: str, owner: str) -> None:
    """Age a pending entry by 100 s (XCLAIM ... IDLE), as if its batch ran that long."""
    client.xclaim(stream, "defectscan", owner, 0, [entry_id], idle=100_000, justid=True)


# --------------------------------------------------------------------------- consumer names


def test_the_default_consumer_name_is_host_line_camera_and_survives_a_kill(
    redis_url: str, client: redis.Redis, stream: str
) -> None:
    ids = _add(client, stream, 3)
    script = textwrap.dedent(
        f"""
        import os, signal
        from defectscan.sources import open_source
        source = open_source({f"{redis_url}?stream={stream}"!r}, line="L1", camera="cam1")
        print(source.consumer, len(source.claim(2)), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    assert done.stdout.split() == [f"{HOST}-L1-cam1", "2"]
    # the restarted monitor (another pid) is the same consumer: its entries come back at
    # once, not after claim_idle_ms (60 s here)
    restarted = open_source(f"{redis_url}?stream={stream}", line="L1", camera="cam1")
    try:
        assert isinstance(restarted, RedisStreamSource)
        assert restarted.consumer == f"{HOST}-L1-cam1"
        records = restarted.claim(10)
        assert [r.id for r in records] == ids
        assert [r.deliveries for r in records] == [2, 2, 1]
    finally:
        restarted.close()


def test_a_second_live_process_on_the_host_gets_its_own_name(
    redis_url: str, client: redis.Redis, stream: str
) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from defectscan.sources import open_source
        source = open_source({f"{redis_url}?stream={stream}"!r}, line="L1")
        print(source.consumer, flush=True)
        sys.stdin.readline()
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == f"{HOST}-L1"
        second = open_source(f"{redis_url}?stream={stream}", line="L1")
        try:
            assert isinstance(second, RedisStreamSource)
            assert second.consumer == f"{HOST}-L1-2"  # the holder is alive
        finally:
            second.close()
    finally:
        holder.kill()
        holder.wait()
    again = open_source(f"{redis_url}?stream={stream}", line="L1")
    try:
        assert isinstance(again, RedisStreamSource)
        assert again.consumer == f"{HOST}-L1"  # its holder died: taken over at once
    finally:
        again.close()


def test_open_source_takes_the_consumer_name_and_a_spec_one(redis_url: str, stream: str) -> None:
    named = open_source(f"{redis_url}?stream={stream}&consumer=from-url", consumer="given")
    spec = open_source(f"{redis_url}?stream={stream}&consumer=from-url")
    try:
        assert isinstance(named, RedisStreamSource)
        assert isinstance(spec, RedisStreamSource)
        assert (named.consumer, spec.consumer) == ("given", "from-url")
    finally:
        named.close()
        spec.close()


def test_idle_consumers_are_pruned_only_without_pending_entries(
    client: redis.Redis, stream: str, make_source: MakeSource
) -> None:
    _add(client, stream, 2)
    holding = make_source(consumer="holding")
    [held] = holding.claim(1)
    make_source(consumer="empty").claim(1)[0]  # takes the other entry ...
    empty = make_source(consumer="empty")
    empty.ack(empty.claim(1))  # ... and settles it: no pending left
    me = make_source(consumer="me")
    assert me.claim(1) == []  # "me" is a consumer of the group now, with nothing pending
    assert me.prune_consumers(idle_ms=60_000) == []  # nobody idle that long
    removed = me.prune_consumers(idle_ms=0)
    assert removed == ["empty"]
    names = {c["name"].decode() for c in client.xinfo_consumers(stream, "defectscan")}
    assert names == {"holding", "me"}
    assert _owner(client, stream, held.id) == "holding"  # its pending entry is untouched


# --------------------------------------------------------------------------- claims


def test_renew_keeps_a_long_batch_from_being_reclaimed(
    client: redis.Redis, stream: str, make_source: MakeSource
) -> None:
    [first, second] = _add(client, stream, 2)
    slow = make_source(consumer="slow", claim_idle_ms=1_000)
    other = make_source(consumer="other", claim_idle_ms=1_000)
    records = slow.claim(2)
    for entry_id in (first, second):
        _make_idle(client, stream, entry_id, "slow")  # the batch has run for 100 s
    slow.renew(records[:1])  # renewed: no longer idle
    taken = other.claim(10)
    assert [r.id for r in taken] == [second]  # only the one that was not renewed
    assert _owner(client, stream, first) == "slow"
    slow.renew(records)  # the stolen one is not taken back
    assert _owner(client, stream, second) == "other"
    assert [r.deliveries for r in slow.claim(1)] == []


def test_an_uncharged_release_never_counts_toward_poison(
    client: redis.Redis, stream: str, make_source: MakeSource
) -> None:
    [entry] = _add(client, stream, 1)
    source = make_source(consumer="c1", max_deliveries=2)
    for _ in range(5):  # the database is down, again and again
        [record] = source.claim(1)
        assert (record.id, record.deliveries, record.error_kind) == (entry, 1, None)
        source.release([record], "database down", charge=False)
    [record] = source.claim(1)
    source.release([record], "decoder crashed")  # charged: the image may be to blame
    [record] = source.claim(1)
    assert (record.deliveries, record.error_kind) == (2, None)


def test_the_source_key_names_the_stream_entry_across_redeliveries(
    client: redis.Redis, stream: str, make_source: MakeSource
) -> None:
    ids = [client.xadd(stream, {"data": b"same bytes"}).decode() for _ in range(2)]
    source = make_source(consumer="c1")
    records = source.claim(2)
    keys = [r.source_key for r in records]
    assert keys == [f"redis:{stream}:{i}" for i in ids]  # identical bytes, two deliveries
    source.release(records, "crash")
    assert [r.source_key for r in source.claim(2)] == keys


# --------------------------------------------------------------------------- by-path reads


def _read_error(record: ImageRecord) -> BaseException | None:
    """What reading ``record`` raised, from a thread: a read that blocks (a FIFO) fails."""
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            record.read()
        except Exception as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), f"reading {record.meta.get('path')} blocked"
    return outcome[0] if outcome else None


def test_by_path_reads_refuse_swapped_symlinks_fifos_and_oversize_files(
    client: redis.Redis, stream: str, make_source: MakeSource, tmp_path: Path
) -> None:
    root = tmp_path / "images"
    (root / "cam").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    for name in ("swap.png", "ok.png"):
        (root / "cam" / name).write_bytes(b"inside")
    (root / "big.png").write_bytes(b"x" * 100)
    os.mkfifo(root / "pipe.png")
    (root / "dir").mkdir()
    (root / "dir" / "a.png").write_bytes(b"inside")
    paths = ["cam/swap.png", "cam/ok.png", "big.png", "pipe.png", "dir/a.png"]
    for path in paths:
        client.xadd(stream, {"path": path})
    source = make_source(consumer="c1", root=root, max_file_bytes=50)
    records = {r.meta["path"]: r for r in source.claim(10)}
    assert all(r.error_kind is None for r in records.values())  # all fine at claim time
    # ... then swapped under the monitor's feet before it reads them
    (root / "cam" / "swap.png").unlink()
    (root / "cam" / "swap.png").symlink_to(outside / "secret.png")
    (root / "dir").rename(tmp_path / "moved")
    (root / "dir").symlink_to(outside)
    (outside / "a.png").write_bytes(b"secret")

    assert records["cam/ok.png"].read() == b"inside"
    refused: dict[str, tuple[str, str]] = {}
    for path in ("cam/swap.png", "big.png", "pipe.png", "dir/a.png"):
        exc = _read_error(records[path])
        assert isinstance(exc, RejectedInputError), (path, exc)
        refused[path] = (exc.kind, str(exc))
    assert refused["cam/swap.png"][0] == "path"
    assert "symbolic link" in refused["cam/swap.png"][1]
    assert refused["dir/a.png"][0] == "path"
    assert refused["pipe.png"][0] == "path"
    assert "not a regular file" in refused["pipe.png"][1]
    assert refused["big.png"][0] == "too_large"
    assert "100 bytes" in refused["big.png"][1]


# --------------------------------------------------------------------------- credentials


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, password="s3cret-pw")
    server.start()
    yield server
    server.crash()


def test_every_redis_connection_borrows_the_credentials_of_defectscan_redis_url(
    locked_redis: PrivateRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from defectscan.config import get_settings
    from defectscan.health import check_redis

    monkeypatch.setenv("DEFECTSCAN_REDIS_URL", locked_redis.auth_url)
    get_settings.cache_clear()
    spec = f"{locked_redis.url}?stream=line9"  # as the plant file writes it: no password
    source = open_source(spec, line="line9")  # monitor, flows
    try:
        image = tmp_path / "a.png"
        image.write_bytes(b"part")
        code, _, err = run_cli(  # enqueue, with a --redis URL that names no password
            ["enqueue", str(image), "--stream", "line9", "--redis", locked_redis.url], capsys
        )
        assert code == 0, err
        [record] = source.claim(1, timeout=2)
        assert record.read() == b"part"
        source.ack([record])
    finally:
        source.close()
    assert check_redis(locked_redis.url).ok  # health

    code, _, err = run_cli(
        ["enqueue", str(image), "--stream", "line9", "--redis", locked_redis.auth_url], capsys
    )
    assert code == 1
    assert "holds a password" in err
    assert "s3cret-pw" not in err
    get_settings.cache_clear()


def test_a_refused_password_is_a_plant_fault_at_once_not_an_unreachable_redis(
    locked_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from defectscan.errors import PlantFault

    monkeypatch.setenv("DEFECTSCAN_REDIS_URL", f"redis://:wrong@127.0.0.1:{locked_redis.port}/0")
    started = time.monotonic()
    with pytest.raises(PlantFault, match="refused our credentials") as info:
        open_source(f"{locked_redis.url}?stream=s", line="l", retry_s=30)
    assert time.monotonic() - started < 5  # not retried for 30 s as "Redis unreachable"
    assert "DEFECTSCAN_REDIS_URL" in str(info.value)
    assert "wrong" not in str(info.value)
    assert isinstance(info.value, SourceError)


@pytest.mark.parametrize(
    "spec",
    [
        "redis://:pw@127.0.0.1:6379/0?stream=s",
        "redis://127.0.0.1:6379/0?stream=s&password=pw",
        "rediss://user:pw@redis:6380/0?stream=s",
    ],
)
def test_a_source_spec_with_a_password_is_refused(spec: str) -> None:
    with pytest.raises(ConfigError, match="DEFECTSCAN_REDIS_URL") as info:
        open_source(spec)
    assert "pw" not in str(info.value).replace("password", "")
