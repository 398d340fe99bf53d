"""Browser tests of the console: Playwright for Python driving Debian's chromium.

The browser is the system's (``.ci/browser.sh`` installs Debian's ``chromium``), launched through
``executable_path``; Playwright never downloads one. Without chromium or the playwright package
these tests skip, except under ``CI=true`` where that is a failure.

Each test gets ``defectscan console`` as a real process (uvicorn) on a free port over a fresh
database with seeded inspections (images in the archive) and one user per role. Every request
the page makes is recorded; a test fails when one leaves the console's origin.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.orm import Session, sessionmaker

from helpers.browser import chromium
from helpers.console import PASSWORDS, Seeded, make_users, seed

REPO = Path(__file__).resolve().parents[3]
DESKTOP = {"width": 1366, "height": 900}
TABLET = {"width": 820, "height": 1180}


def _missing(msg: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    """Where the tests write their screenshots (DEFECTSCAN_SCREENSHOT_DIR, else a tmp folder)."""
    out = Path(os.environ.get("DEFECTSCAN_SCREENSHOT_DIR") or "/tmp/defectscan-console-screens")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium under Playwright (never a downloaded browser).

    Module-scoped: Playwright's sync API runs an event loop in the main thread while it is
    open, and Prefect's sync-or-async calls (``deployment.apply()``, ``asyncio.run``) made by
    tests that run after the browser tests would see it and fail. It closes with the module.
    """
    path = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=path,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Console:
    """A running ``defectscan console`` and what it serves."""

    url: str
    seeded: Seeded
    sessions: sessionmaker[Session]
    var_dir: Path
    process: subprocess.Popen[bytes]
    database_url: str
    plant: Path
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def console(tmp_path: Path, db_url: str, db_sessions: sessionmaker[Session]) -> Iterator[Console]:
    """``defectscan console`` over a seeded database, as its own process."""
    var = tmp_path / "var"
    make_users(db_sessions)
    seeded = seed(db_sessions, var / "archive")
    port = _free_port()
    plant = tmp_path / "plant.yaml"
    plant.write_text(
        yaml.safe_dump(
            {
                "lines": {"L1": {}},
                "console": {"host": "127.0.0.1", "port": port},
            }
        )
    )
    env = {
        **os.environ,
        "DEFECTSCAN_VAR_DIR": str(var),
        "DEFECTSCAN_DATABASE_URL": db_url,
        "DEFECTSCAN_CONFIG": str(plant),
        "PREFECT_API_URL": "",
    }
    env.pop("PREFECT_API_URL")
    log = (tmp_path / "console.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "defectscan.cli", "console"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"console did not start:\n{(tmp_path / 'console.log').read_text()[-3000:]}")
        time.sleep(0.2)
    c = Console(
        url=url,
        seeded=seeded,
        sessions=db_sessions,
        var_dir=var,
        process=proc,
        database_url=db_url,
        plant=plant,
    )
    try:
        yield c
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def page(browser: Any, console: Console) -> Iterator[Any]:
    """A desktop-sized page that records every request; no request may leave the origin."""
    context = browser.new_context(viewport=DESKTOP, base_url=console.url)
    p = context.new_page()
    p.set_default_timeout(15_000)
    p.on("request", lambda req: console.requests.append(req.url))
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on(
        "console",
        lambda msg: (
            errors.append(msg.text) if msg.type == "error" and "403" not in msg.text else None
        ),
    )
    yield p
    context.close()
    foreign = [
        u for u in console.requests if not (u.startswith((console.url + "/", "data:", "blob:")))
    ]
    assert not foreign, f"requests left the console's origin: {foreign}"
    csp = [e for e in errors if "Content Security Policy" in e]
    assert not csp, f"the page broke its own CSP: {csp}"
    assert not [e for e in errors if "Uncaught" in e or "Error" in e], errors


def log_in(page: Any, name: str, password: str | None = None) -> None:
    """Log in through the form as ``name``."""
    page.goto("/login")
    page.fill("#username", name)
    page.fill("#password", password or PASSWORDS[name])
    page.click("#login")
    page.wait_for_url("**/lines")
