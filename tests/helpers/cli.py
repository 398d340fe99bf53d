"""Run the `defectscan` console entry point in process, as a user's shell would."""

from __future__ import annotations

import sys

import pytest

from defectscan.cli import main

__all__ = ["run_cli"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``defectscan ARGS``: (exit status, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["defectscan", *args]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), out, err
