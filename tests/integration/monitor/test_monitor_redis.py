"""The monitor on Redis streams: consumers dying, Redis restarting, PostgreSQL connections
killed, bad messages, poison messages. Real Redis servers, real `defectscan monitor` processes.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from defectscan.sources.redis_stream import enqueue
from helpers.line import (
    cli_env,
    count,
    oracle_checkpoint,
    part_bytes,
    rows,
    start_cli,
    stop,
    wait_for,
    write_parts,
)
from helpers.redis_server import PrivateRedis

pytestmark = pytest.mark.integration


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.crash()


@pytest.fixture
def stream(redis_url: str) -> Iterator[str]:
    name = f"test:monitor:{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    client.delete(name, f"{name}:dead")
    client.close()


def _pending(url: str, stream: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.xpending(stream, "defectscan")["pending"])
    finally:
        client.close()


def _source(url: str, stream: str, **params: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"stream": stream, **params}.items())
    return f"{url}?{query}"


def _monitor_args(source: str, model: Path, *extra: str) -> list[str]:
    return [
        "monitor",
        "--source",
        source,
        "--model",
        str(model),
        "--line",
        "L1",
        "--batch-size",
        "4",
        "--no-prefect",
        *extra,
    ]


def test_two_consumers_one_killed_the_other_reclaims_none_lost(
    tmp_path: Path, redis_url: str, stream: str, sqlite_url: str
) -> None:
    n = 60
    files = write_parts(tmp_path / "parts", n)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    client = redis.Redis.from_url(redis_url)
    enqueue(client, stream, files)
    env = cli_env(tmp_path, sqlite_url)
    src = _source(redis_url, stream, claim_idle_ms=1500)
    log = tmp_path / "monitor.log"
    a = start_cli(_monitor_args(src + "&consumer=a", model), env, log)
    b = start_cli(_monitor_args(src + "&consumer=b", model, "--idle-exit", "6"), env, log)
    try:
        wait_for(lambda: count(sqlite_url) >= 8, timeout=120, what="both consumers working")
        stop(a, signal.SIGKILL)
        assert b.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        stop(a)
        stop(b)
    assert rows(sqlite_url) == [(n,)]
    assert rows(sqlite_url, "SELECT count(DISTINCT sha256) FROM inspections") == [(n,)]
    assert _pending(redis_url, stream) == 0
    consumers = {
        c["name"].decode(): c["pending"] for c in client.xinfo_consumers(stream, "defectscan")
    }
    assert consumers.get("a", 0) == 0
    client.close()


def test_redis_crash_and_restart_mid_run_nothing_lost_or_doubled(
    tmp_path: Path, private_redis: PrivateRedis, sqlite_url: str
) -> None:
    n = 80
    stream = "line1"
    files = write_parts(tmp_path / "parts", n)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    client = redis.Redis.from_url(private_redis.url)
    enqueue(client, stream, files)
    client.close()
    env = cli_env(tmp_path, sqlite_url)
    log = tmp_path / "monitor.log"
    src = _source(private_redis.url, stream, consumer="m1", socket_timeout=3)
    proc = start_cli(_monitor_args(src, model, "--idle-exit", "8"), env, log)
    try:
        wait_for(lambda: count(sqlite_url) >= 10, timeout=120, what="the monitor under way")
        private_redis.crash()
        time.sleep(2.0)  # the monitor keeps running without Redis
        assert proc.poll() is None, log.read_text()[-3000:]
        private_redis.start()
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        stop(proc)
    assert rows(sqlite_url) == [(n,)]
    assert rows(sqlite_url, "SELECT count(DISTINCT sha256) FROM inspections") == [(n,)]
    assert _pending(private_redis.url, stream) == 0


def test_postgres_connections_killed_during_a_run_recovers(
    tmp_path: Path, redis_url: str, stream: str, pg_url: str
) -> None:
    from defectscan.store.db import upgrade_to_head

    upgrade_to_head(pg_url)
    n = 60
    files = write_parts(tmp_path / "parts", n)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    client = redis.Redis.from_url(redis_url)
    enqueue(client, stream, files)
    client.close()
    env = cli_env(tmp_path, pg_url)
    log = tmp_path / "monitor.log"
    proc = start_cli(_monitor_args(_source(redis_url, stream), model, "--idle-exit", "5"), env, log)
    database = sa.engine.make_url(pg_url).database
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    killed = 0
    try:
        wait_for(lambda: count(pg_url) >= 4, timeout=120, what="the monitor writing")
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and count(pg_url) < n:
            with admin.connect() as c:
                killed += c.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid() "
                        "AND application_name = 'defectscan'"
                    ),
                    {"db": database},
                ).scalar_one()
            time.sleep(0.3)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        stop(proc)
        admin.dispose()
    assert killed > 0
    assert rows(pg_url) == [(n,)]
    assert rows(pg_url, "SELECT count(DISTINCT sha256) FROM inspections") == [(n,)]
    assert _pending(redis_url, stream) == 0


def test_bad_messages_get_error_rows_and_the_dead_letter_stream(
    tmp_path: Path, redis_url: str, stream: str, sqlite_url: str
) -> None:
    import struct
    import zlib

    root = tmp_path / "shared"
    root.mkdir()
    good = write_parts(root, 3)
    (tmp_path / "secret.png").write_bytes(part_bytes(99, fail=False))
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    # a PNG header announcing 100k x 100k pixels: a decompression bomb
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + b"IHDR"
        + ihdr
        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
        + b"\x00" * 64
    )
    client = redis.Redis.from_url(redis_url)
    enqueue(client, stream, good, by_path=True, root=root)
    for fields in (
        {"data": b""},
        {"data": part_bytes(5, fail=True)[:300]},
        {"data": b"GIF89a not what we take"},
        {"data": bomb},
        {"path": "../secret.png"},
        {"path": str(tmp_path / "secret.png")},
        {"path": "link.png"},
    ):
        client.xadd(stream, fields)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    env = cli_env(tmp_path, sqlite_url)
    log = tmp_path / "monitor.log"
    proc = start_cli(
        _monitor_args(_source(redis_url, stream), model, "--root", str(root), "--idle-exit", "3"),
        env,
        log,
    )
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    got = rows(sqlite_url, "SELECT status, coalesce(verdict, error_kind) FROM inspections")
    assert sorted(got) == sorted(
        [
            ("ok", "fail"),
            ("ok", "pass"),
            ("ok", "pass"),
            ("rejected", "empty"),
            ("rejected", "truncated"),
            ("rejected", "not_an_image"),
            ("rejected", "too_large"),
            ("rejected", "path"),
            ("rejected", "path"),
            ("rejected", "path"),
        ]
    )
    dead = client.xrange(f"{stream}:dead")
    assert len(dead) == 7
    assert all(b"reason" in f for _, f in dead)
    assert _pending(redis_url, stream) == 0
    client.close()


def test_a_message_that_crashes_processing_ends_in_the_dead_letter_stream(
    tmp_path: Path, redis_url: str, stream: str, sqlite_url: str
) -> None:
    from defectscan.monitor import LineMonitor, ModelProvider
    from defectscan.pipeline import Inspector
    from defectscan.sources.redis_stream import RedisStreamSource
    from defectscan.store.db import make_engine, session_factory, upgrade_to_head
    from helpers.line import Crashy

    files = write_parts(tmp_path / "parts", 6)
    poison = files[2].rename(files[2].with_name("poison.png"))
    files[2] = poison
    client = redis.Redis.from_url(redis_url)
    enqueue(client, stream, files, by_path=True, root=tmp_path / "parts")
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)

    def load(path: str) -> Inspector:
        return Crashy.wrap(Inspector.from_checkpoint(path, backend="torch", device="cpu"))

    source = RedisStreamSource(
        client, stream, root=tmp_path / "parts", max_deliveries=3, block_ms=100
    )
    models = ModelProvider(str(model), load=load, sessions=session_factory(engine, write=True))
    monitor = LineMonitor(source, models, engine, batch_size=4, claim_timeout=0.1)
    summary = monitor.run(idle_exit=1.0)
    monitor.close()
    assert summary.failed_batches >= 3
    got = rows(sqlite_url, "SELECT uri, status, error_kind FROM inspections")
    assert len(got) == 6
    (poison_row,) = [r for r in got if "poison" in str(r[0])]
    assert poison_row[1:] == ("rejected", "poison")
    dead = client.xrange(f"{stream}:dead")
    assert len(dead) == 1
    assert b"poison" in dead[0][1][b"path"]
    assert b"failed" in dead[0][1][b"reason"]
    assert _pending(redis_url, stream) == 0
    client.close()


def test_kill_9_and_restart_on_a_stream_leaves_nothing_pending(
    tmp_path: Path, redis_url: str, stream: str, pg_url: str
) -> None:
    from defectscan.store.db import upgrade_to_head

    upgrade_to_head(pg_url)
    n = 40
    files = write_parts(tmp_path / "parts", n)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    client = redis.Redis.from_url(redis_url)
    enqueue(client, stream, files)
    env = cli_env(tmp_path, pg_url)
    log = tmp_path / "monitor.log"
    # a stable consumer name: the restarted monitor drains its own pending entries first
    src = _source(redis_url, stream, consumer="line1-host1")
    first = start_cli(_monitor_args(src, model), env, log)
    try:
        wait_for(
            lambda: count(pg_url) >= 4 and _pending(redis_url, stream) > 0,
            timeout=120,
            interval=0.02,
            what="a batch in hand",
        )
    finally:
        stop(first, signal.SIGKILL)
    second = start_cli(_monitor_args(src, model, "--idle-exit", "3"), env, log)
    assert second.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert rows(pg_url) == [(n,)]
    assert rows(pg_url, "SELECT count(DISTINCT sha256) FROM inspections") == [(n,)]
    assert _pending(redis_url, stream) == 0
    client.close()
