"""A batch that runs longer than ``claim_idle_ms`` keeps its entries: the monitor renews its
claim while it inspects, so another consumer's XAUTOCLAIM does not steal them (which would end
a slow valid image both in the dead-letter stream and with an ok row)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import redis

from defectscan.monitor import LineMonitor, ModelProvider
from defectscan.pipeline import InspectionResult, Inspector
from defectscan.sources.base import ImageRecord
from defectscan.sources.redis_stream import RedisStreamSource, enqueue
from defectscan.store.db import make_engine, session_factory, upgrade_to_head
from helpers.line import oracle_checkpoint, rows, write_parts

pytestmark = pytest.mark.integration

IDLE_MS = 600


@pytest.fixture
def stream(redis_url: str) -> Iterator[str]:
    name = f"test:renew:{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    client.delete(name, f"{name}:dead", *client.keys(f"{name}:*"))
    client.close()


class Slow(Inspector):
    """Inspects each record ``pause`` seconds late; meanwhile a rival consumer tries to claim."""

    rival: RedisStreamSource
    stolen: list[ImageRecord]
    pause = 2.5 * IDLE_MS / 1000

    def inspect(
        self, records: Iterable[ImageRecord], *, keep_images: bool = False
    ) -> Iterator[InspectionResult]:
        for result in super().inspect(records, keep_images=keep_images):
            deadline = time.monotonic() + self.pause
            while time.monotonic() < deadline:
                self.stolen += self.rival.claim(10, timeout=0.0)
                time.sleep(0.1)
            yield result


def test_a_long_batch_keeps_its_claim(
    tmp_path: Path, redis_url: str, stream: str, sqlite_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    enqueue(client, stream, write_parts(tmp_path / "parts", 2))
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    rival = RedisStreamSource(
        redis.Redis.from_url(redis_url),
        stream,
        consumer="rival",
        claim_idle_ms=IDLE_MS,
        block_ms=50,
        owns_client=True,
    )
    stolen: list[ImageRecord] = []

    def load(path: str) -> Inspector:
        base = Inspector.from_checkpoint(path, backend="torch", device="cpu")
        slow = Slow(
            base.backend, base.spec, model_version=base.model_version, checkpoint=base.checkpoint
        )
        slow.rival, slow.stolen = rival, stolen
        return slow

    source = RedisStreamSource(
        client, stream, consumer="worker", claim_idle_ms=IDLE_MS, block_ms=50
    )
    models = ModelProvider(str(model), load=load, sessions=session_factory(engine, write=True))
    monitor = LineMonitor(source, models, engine, batch_size=2, claim_timeout=0.1)
    outcome = monitor.step()
    monitor.close()
    rival.close()
    assert outcome is not None
    assert outcome.images == 2
    assert stolen == []  # renewed while it ran: nobody reclaimed the entries
    assert rows(sqlite_url) == [(2,)]
    assert client.xlen(f"{stream}:dead") == 0
    assert int(client.xpending(stream, "defectscan")["pending"]) == 0
    client.close()
