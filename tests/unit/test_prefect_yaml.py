"""prefect.yaml declares for work pools exactly what `defectscan serve` serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def _served() -> dict[str, dict[str, Any]]:
    from flows.serve import build_deployments

    from defectscan.config import load_settings

    settings = load_settings(REPO / "docker" / "plant.example.yaml")
    out = {}
    for d in build_deployments(settings):
        schedules = []
        for s in d.schedules or []:
            sched = s.schedule
            if getattr(sched, "cron", None):
                schedules.append({"cron": sched.cron})
            else:
                schedules.append({"interval": int(sched.interval.total_seconds())})
        limit = d.concurrency_options
        out[d.name] = {
            "entrypoint": d.entrypoint,
            "parameters": dict(d.parameters),
            "schedules": schedules,
            "limit": d.concurrency_limit,
            "collision": limit.collision_strategy.value if limit else None,
        }
    return out


def _declared() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    out = {}
    for d in doc["deployments"]:
        file, func = d["entrypoint"].split(":")
        module = file.removesuffix(".py").replace("/", ".")
        out[d["name"]] = {
            "entrypoint": f"{module}.{func}",
            "parameters": d.get("parameters", {}),
            "schedules": [
                {k: v for k, v in s.items() if k in ("cron", "interval")} for s in d["schedules"]
            ],
            "limit": d["concurrency_limit"]["limit"],
            "collision": d["concurrency_limit"]["collision_strategy"],
        }
    return out


def test_prefect_yaml_matches_the_served_deployments() -> None:
    served, declared = _served(), _declared()
    assert sorted(declared) == sorted(served)
    for name, want in served.items():
        assert declared[name] == want, name


def test_every_entrypoint_imports() -> None:
    import importlib

    for d in _declared().values():
        module, func = d["entrypoint"].rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), func))
