"""A producer's ``line`` and ``camera`` fields on a real Redis stream: a line the plant file does
not know is refused per message (an error row, the dead-letter stream) instead of being
inspected with the model's default rules, and metric labels come only from configured lines and
cameras."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from defectscan.config import LineConfig
from defectscan.metrics import MonitorMetrics
from defectscan.monitor import LineMonitor, ModelProvider
from defectscan.pipeline import Inspector
from defectscan.sources.redis_stream import RedisStreamSource
from defectscan.store.db import make_engine, session_factory, upgrade_to_head
from helpers.line import oracle_checkpoint, part_bytes, rows

pytestmark = pytest.mark.integration

LINES = {
    "L1": LineConfig(name="L1", cameras=["cam1"]),
    "L2": LineConfig(name="L2", cameras=["cam2"], thresholds={"dark": 0.99}),
}


@pytest.fixture
def stream(redis_url: str) -> Iterator[str]:
    name = f"test:lines:{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    client.delete(name, f"{name}:dead")
    client.close()


def test_unknown_lines_are_refused_and_labels_stay_bounded(
    tmp_path: Path, redis_url: str, stream: str, sqlite_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    messages = [
        {"data": part_bytes(0, fail=True), "line": "L1", "camera": "cam1"},
        {"data": part_bytes(1, fail=False), "line": "L1", "camera": "cam1"},
        {"data": part_bytes(2, fail=True), "line": "L1x", "camera": "cam1"},  # a typo
        {"data": part_bytes(3, fail=False), "line": "L2", "camera": "cam2"},
        {"data": part_bytes(4, fail=False), "camera": "cam-typo-42"},  # the source's line
    ]
    for fields in messages:
        client.xadd(stream, fields)  # type: ignore[arg-type]
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)

    def load(path: str) -> Inspector:
        return Inspector.from_checkpoint(path, backend="torch", device="cpu", lines=LINES)

    source = RedisStreamSource(client, stream, line="L1", camera="cam1", block_ms=100)
    models = ModelProvider(
        str(model), load=load, sessions=session_factory(engine, write=True), line="L1"
    )
    metrics = MonitorMetrics()
    monitor = LineMonitor(
        source,
        models,
        engine,
        line="L1",
        batch_size=8,
        claim_timeout=0.1,
        metrics=metrics,
        lines=list(LINES),
        cameras=LINES["L1"].cameras,
    )
    monitor.run(idle_exit=0.5)
    monitor.close()

    got = rows(
        sqlite_url,
        "SELECT line, camera, status, coalesce(verdict, error_kind) FROM inspections ORDER BY id",
    )
    assert sorted(got) == sorted(
        [
            ("L1", "cam1", "ok", "fail"),
            ("L1", "cam1", "ok", "pass"),
            ("L1", "cam1", "rejected", "unknown_line"),
            ("L2", "cam2", "ok", "pass"),
            ("L1", "cam-typo-42", "ok", "pass"),
        ]
    )
    (message,) = rows(sqlite_url, "SELECT error_message FROM inspections WHERE status='rejected'")
    assert "'L1x'" in str(message[0])
    assert "plant file" in str(message[0])
    dead = client.xrange(f"{stream}:dead")
    assert [f[b"line"] for _, f in dead] == [b"L1x"]
    assert int(client.xpending(stream, "defectscan")["pending"]) == 0
    client.close()

    labels: dict[str, set[str]] = {"line": set(), "camera": set()}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            for key in labels:
                if key in sample.labels:
                    labels[key].add(sample.labels[key])
    assert labels["line"] <= {"L1", "L2"}
    assert labels["camera"] <= {"cam1", "other"}
