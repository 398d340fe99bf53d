"""Fixtures of the source integration tests: a client of the shared Redis and a fresh stream."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test Redis."""
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def stream(client: redis.Redis) -> Iterator[str]:
    """A stream name of this test's own; every key under it is deleted afterwards."""
    name = f"test:sources:{uuid.uuid4().hex}"
    yield name
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
