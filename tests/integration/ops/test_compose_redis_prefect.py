"""docker/compose.yaml's Redis and Prefect server (issue 16, points 1 and 4): Redis bounded with
``maxmemory`` and ``noeviction``; the Prefect server, which has no authentication of its own,
reachable only on the compose network; the README says how to put authentication in front.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    return dict(compose["services"])


def test_redis_has_a_memory_limit_and_never_evicts(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]
    assert command[command.index("--maxmemory") + 1]  # a size, from REDIS_MAXMEMORY
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--requirepass" in command
    assert "REDIS_MAXMEMORY=" in (REPO / "docker" / ".env.example").read_text()


def test_the_prefect_server_is_not_published_on_the_host(services: dict[str, Any]) -> None:
    prefect = services["prefect-server"]
    assert not prefect.get("ports"), "the Prefect API has no authentication: do not publish it"
    assert prefect.get("network_mode") != "host"
    readme = (REPO / "README.md").read_text()
    assert "### The Prefect UI and authentication" in readme
    for advice in ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING", "reverse proxy"):
        assert advice in readme
