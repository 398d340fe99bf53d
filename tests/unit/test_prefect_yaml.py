"""prefect.yaml declares for work pools exactly what `defectscan serve` serves, and no monitor.

A line monitor is a long-lived process, never a scheduled deployment: neither `serve` nor
prefect.yaml may declare one (each run would be a new process that reloads the model and
registers a new consumer).
"""

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


def test_no_line_monitor_is_a_deployment() -> None:
    from flows.serve import build_deployments

    from defectscan.config import load_settings

    settings = load_settings(REPO / "docker" / "plant.example.yaml")
    assert any(line.source for line in settings.lines.values())  # lines with monitors exist
    served = build_deployments(settings)
    assert all("line_monitor" not in (d.entrypoint or "") for d in served)
    assert all(not d.name.startswith("monitor-") for d in served)
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert all("line_monitor" not in d["entrypoint"] for d in declared)
    text = (REPO / "prefect.yaml").read_text()
    assert "CANCEL_NEW" not in text
    assert "interval:" not in text


def test_batch_windows_count_back_from_the_scheduled_time() -> None:
    from flows.serve import build_deployments

    from defectscan.config import load_settings

    settings = load_settings(REPO / "docker" / "plant.example.yaml")
    batches = [d for d in build_deployments(settings) if d.name.startswith("batch-")]
    assert batches
    for d in batches:
        # since/until are ages from the run's scheduled start: the window ends there
        assert d.parameters["until"] == "0s", d.name
