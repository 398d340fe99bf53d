"""Headless Chromium for tests that look at rendered pages (Debian's ``chromium`` package).

Without a browser the test skips, except under ``CI=true`` where that is a failure
(``.ci/browser.sh``, run by ``make test``, installs it).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

__all__ = ["chromium", "image_probe", "screenshot"]

_PROBE = (
    "<script>window.addEventListener('load', () => {"
    "const out = document.createElement('pre'); out.id = 'img-probe';"
    "out.textContent = JSON.stringify(Array.from(document.images).map("
    "i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth})));"
    "document.body.appendChild(out);});</script>"
)


def chromium() -> str:
    """The browser's path; skips (fails under CI=true) when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    msg = "headless Chromium is not installed (Debian: apt-get install chromium; `make test` does)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def _run(args: list[str], profile: Path, timeout: float = 120) -> str:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--allow-file-access-from-files",
        f"--user-data-dir={profile}",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode(errors="replace")


def image_probe(page: Path, profile: Path) -> tuple[str, list[dict[str, Any]]]:
    """Render ``page`` (a copy with a probe script beside it) -> (DOM, every img's load state)."""
    probe = page.with_name(page.stem + ".probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"))
    dom = _run(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], profile)
    m = re.search(r'<pre id="img-probe">(.*?)</pre>', dom, re.S)
    assert m, f"the probe script did not run: {dom[-500:]}"
    return dom, json.loads(html.unescape(m.group(1)))


def screenshot(page: Path, out: Path, profile: Path, *, size: str = "1280,1400") -> Path:
    """A PNG of ``page`` as the browser renders it."""
    _run(
        [f"--screenshot={out}", f"--window-size={size}", "--hide-scrollbars", page.as_uri()],
        profile,
    )
    assert out.is_file()
    assert out.stat().st_size > 0
    return out
