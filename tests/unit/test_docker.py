"""docker/: the compose file and the images' commands hold together (no Docker engine needed).

Checks that compose.yaml parses; that every ``depends_on``, named volume and ``${VAR}`` it
references exists (services, top-level volumes, docker/.env.example); that every service has a
healthcheck; and that every ``defectscan ...`` command in compose.yaml and the Dockerfiles
(ENTRYPOINT + CMD, HEALTHCHECK) is a real command of the CLI, with real options.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"]
_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?+\-][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def cli() -> Any:
    """The click command tree of the real CLI (typer vendors click: duck-typed below)."""
    from defectscan.cli import app

    command = typer.main.get_command(app)
    assert _is_group(command)
    return command


def _is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def _env_example() -> set[str]:
    names = set()
    for raw in (DOCKER / ".env.example").read_text().splitlines():
        line = raw.strip().lstrip("#").strip()
        m = re.match(r"([A-Z_][A-Z0-9_]*)=", line)
        if m:
            names.add(m.group(1))
    return names


def _check_cli(cli: Any, argv: list[str], where: str) -> None:
    """``argv`` (after ``defectscan``) names existing (sub)commands and options."""
    command = cli
    args = list(argv)
    # root options come before the subcommand
    while args and _is_group(command):
        token = args.pop(0)
        if token.startswith("-"):
            assert _has_option(command, token), f"{where}: unknown option {token} of {command.name}"
            continue
        sub = command.commands.get(token)
        assert sub is not None, f"{where}: `defectscan {' '.join(argv)}`: no command {token!r}"
        command = sub
    assert not _is_group(command), f"{where}: {argv} stops at a command group"
    for token in args:
        if token.startswith("--"):
            assert _has_option(command, token.split("=", 1)[0]), (
                f"{where}: `defectscan {' '.join(argv)}`: {command.name} has no option {token}"
            )


def _has_option(command: Any, name: str) -> bool:
    return name == "--help" or any(
        name in p.opts or name in getattr(p, "secondary_opts", [])
        for p in command.params
        if getattr(p, "param_type_name", "") == "option"
    )


def _is_defectscan(service: dict[str, Any]) -> bool:
    return "build" in service or "defectscan" in str(service.get("image", "")).split(":")[0]


def test_compose_parses_and_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "prefect-server", "migrate", "serve", "monitor-line3"} <= set(
        services
    )
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name}: no healthcheck"
        assert check.get("test"), f"{name}: healthcheck without a test"
        assert not check.get("disable"), f"{name}: healthcheck disabled"
        assert service.get("restart"), f"{name}: no restart policy"
    assert services["migrate"]["restart"] == "no"


def test_depends_on_names_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        deps = service.get("depends_on", {})
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, f"{name} depends on missing service {dep!r}"
    for name in [n for n in services if n == "serve" or n.startswith("monitor-")]:
        migrate = services[name]["depends_on"]["migrate"]
        assert migrate["condition"] == "service_completed_successfully", name


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/", "$", "~")):
                if source.startswith("./"):
                    assert (DOCKER / source).exists(), f"{name}: bind mount {source} missing"
                continue
            assert source in declared, f"{name}: volume {source!r} not under top-level volumes"


def test_every_variable_is_documented_in_env_example() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    used = set(_VAR.findall(text))
    documented = _env_example()
    assert used, "compose.yaml uses no ${VAR}: the test is not looking"
    assert used <= documented, f"undocumented in docker/.env.example: {sorted(used - documented)}"


def test_env_example_documents_the_settings() -> None:
    from defectscan.config import Settings

    documented = _env_example()
    text = (DOCKER / ".env.example").read_text() + (DOCKER / "compose.yaml").read_text()
    for field in Settings.model_fields:
        if field == "lines":
            continue
        env = f"DEFECTSCAN_{field.upper()}"
        assert env in documented or env in text, f"{env} is not documented in .env.example"


def test_compose_commands_exist_in_the_cli(compose: dict[str, Any], cli: Any) -> None:
    checked = 0
    for name, service in compose["services"].items():
        if _is_defectscan(service):
            command = service.get("command")
            assert isinstance(command, list), f"{name}: give command as a list"
            _check_cli(cli, command, f"compose {name} command")
            checked += 1
        test = service["healthcheck"]["test"]
        if isinstance(test, list) and test[:2] == ["CMD", "defectscan"]:
            _check_cli(cli, test[2:], f"compose {name} healthcheck")
            checked += 1
    assert checked >= 6


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _exec_form(value: str) -> list[str]:
    value = value.strip()
    parsed = json.loads(value) if value.startswith("[") else shlex.split(value)
    assert isinstance(parsed, list)
    return [str(v) for v in parsed]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_commands_exist_in_the_cli(dockerfile: Path, cli: Any) -> None:
    instructions = _dockerfile_instructions(dockerfile)
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    entrypoint = [_exec_form(v) for k, v in final if k == "ENTRYPOINT"][-1]
    cmd = [_exec_form(v) for k, v in final if k == "CMD"][-1]
    assert entrypoint == ["defectscan"]
    _check_cli(cli, cmd, f"{dockerfile.name} CMD")
    health = [v for k, v in final if k == "HEALTHCHECK"][-1]
    test = _exec_form(health.split(" CMD ", 1)[1])
    assert test[0] == "defectscan"
    _check_cli(cli, test[1:], f"{dockerfile.name} HEALTHCHECK")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_non_root_with_volumes_and_passive_omp(dockerfile: Path) -> None:
    instructions = _dockerfile_instructions(dockerfile)
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    users = [v for k, v in final if k == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1] not in ("root", "0")
    volumes = " ".join(v for k, v in final if k == "VOLUME")
    for path in ("/models", "/data", "/srv/defectscan/var/archive"):
        assert f'"{path}"' in volumes
    env = " ".join(v for k, v in final if k == "ENV")
    assert "OMP_WAIT_POLICY=PASSIVE" in env


def test_prometheus_and_grafana_use_our_metric_names() -> None:
    from defectscan.metrics import MonitorMetrics

    names = {
        m.name for m in MonitorMetrics().registry.collect() if m.name.startswith("defectscan_")
    }
    dashboard = (DOCKER / "grafana" / "defectscan-dashboard.json").read_text()
    json.loads(dashboard)
    used = set(re.findall(r"defectscan_[a-z_]+", dashboard))
    # Prometheus adds _total/_bucket/_sum/_count/_info suffixes to the family names.
    suffixes = ("_total", "_bucket", "_sum", "_count", "_info", "")
    for name in used:
        assert any(name.removesuffix(s) in names for s in suffixes if name.endswith(s)), name
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    for target in targets:
        host = target.split(":")[0]
        assert host in compose["services"], target


def test_example_plant_file_passes_config_check() -> None:
    from defectscan.config import check_config_file

    assert check_config_file(DOCKER / "plant.example.yaml") == []


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_one_long_lived_monitor_per_line_each_on_its_own_metrics_port(
    compose: dict[str, Any],
) -> None:
    """Every line with a source has its own monitor service (compose restarts it), no two
    monitors share a /metrics port, Prometheus scrapes each, and serve starts no monitor."""
    from defectscan.config import load_settings

    settings = load_settings(DOCKER / "plant.example.yaml")
    lines = sorted(name for name, line in settings.lines.items() if line.source)
    services = compose["services"]
    monitors = {n: s for n, s in services.items() if n.startswith("monitor-")}
    assert sorted(monitors) == [f"monitor-{name}" for name in lines]
    ports = {}
    for name, service in monitors.items():
        command = service["command"]
        assert command[0] == "monitor", name
        assert _option(command, "--line") == name.removeprefix("monitor-"), name
        port = _option(command, "--metrics-port")
        assert port is not None, f"{name}: give it its own --metrics-port"
        assert int(port) > 0, f"{name}: /metrics off"
        ports[name] = int(port)
        assert service.get("restart") == "unless-stopped", name
    assert len(set(ports.values())) == len(ports), f"two monitors share a port: {ports}"
    assert "--no-monitors" in services["serve"]["command"]
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = set(prom["scrape_configs"][0]["static_configs"][0]["targets"])
    assert {f"{name}:{port}" for name, port in ports.items()} <= targets
