"""The command line's surface stays put: every command, option, default and help line.

``tests/helpers/golden/cli_help.json`` is the surface as it was when the CLI became a package
(issue 15), plus the help lines that were missing then. A change to a command's options or help
shows up here as a diff to review; regenerate the file only for a deliberate change:
``DEFECTSCAN_UPDATE_GOLDEN=1 pytest tests/unit/cli/test_cli_help.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import typer

from defectscan.cli import app

GOLDEN = Path(__file__).resolve().parents[2] / "helpers" / "golden" / "cli_help.json"


def _params(command: Any) -> list[dict[str, Any]]:
    rows = []
    for p in command.params:
        default = p.default
        rows.append(
            {
                "kind": p.param_type_name,
                "name": p.name,
                "opts": list(p.opts) + list(getattr(p, "secondary_opts", [])),
                "help": getattr(p, "help", None),
                "default": None if callable(default) else repr(default),
                "required": bool(p.required),
            }
        )
    return rows


def _surface() -> dict[str, Any]:
    root = typer.main.get_command(app)
    out: dict[str, Any] = {}

    def walk(command: Any, path: list[str]) -> None:
        out[" ".join(path) or "defectscan"] = {
            "help": command.help,
            "params": _params(command),
        }
        if hasattr(command, "list_commands"):
            ctx = type(command).context_class(command)
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), [*path, name])

    walk(root, [])
    return out


def test_every_command_and_option_is_as_recorded() -> None:
    surface = _surface()
    if os.environ.get("DEFECTSCAN_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(surface, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(GOLDEN.read_text())
    assert sorted(surface) == sorted(recorded), "commands added or removed"
    for name, expected in recorded.items():
        assert surface[name] == expected, f"`{name}` changed its help or options"


def test_every_option_has_a_help_line() -> None:
    missing = [
        f"{name}: {'/'.join(p['opts'])}"
        for name, entry in _surface().items()
        for p in entry["params"]
        if p["kind"] == "option" and not p["help"]
    ]
    assert missing == []


@pytest.mark.parametrize("command", sorted(json.loads(GOLDEN.read_text())))
def test_help_renders(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.cli import run_cli

    args = [] if command == "defectscan" else command.split()
    code, stdout, _ = run_cli([*args, "--help"], capsys)
    assert code == 0
    assert "Usage:" in stdout
