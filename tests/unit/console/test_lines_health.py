"""The Lines page's health: the queue read from the line's source (folder and Redis stream),
the monitor's own events (plant fault, falling behind, engine), a line nobody monitors, and the
drift panel (newest window per camera, its hint, its last alert; empty when drift is off)."""

from __future__ import annotations

import os
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from helpers.console import Seeded, login


@pytest.fixture
def camera_dir(tmp_path: Path) -> Path:
    """L1's camera folder: three images waiting (the oldest 10 minutes), and what is not one."""
    folder = tmp_path / "cam"
    (folder / "processing").mkdir(parents=True)
    (folder / "processing" / "claimed.png").write_bytes(b"x")
    for name in ("a.png", "b.jpg", "c.png"):
        (folder / name).write_bytes(b"x")
    (folder / "note.txt").write_text("not an image")
    (folder / "d.png.tmp").write_bytes(b"still being written")
    old = time.time() - 600
    os.utime(folder / "a.png", (old, old))
    return folder


@pytest.fixture
def console_settings(tmp_path: Path, db_url: str, camera_dir: Path) -> object:
    from defectscan.config import LineConfig, Settings

    return Settings(
        var_dir=tmp_path / "var",
        database_url=db_url,
        lines={
            "L1": LineConfig(name="L1", source=f"folder:{camera_dir}"),
            "L2": LineConfig(name="L2", source=f"folder:{camera_dir / 'gone'}"),
        },
    )


def _event(sessions: sessionmaker[Session], kind: str, line: str, **details: object) -> None:
    from defectscan.store.operations import record_event

    with sessions.begin() as s:
        record_event(session=s, kind=kind, line=line, message=f"{kind} on {line}", details=details)


def _badge(card: str, testid: str) -> str:
    found = re.search(rf'data-testid="{testid}"[^>]*>([^<]*)<', card)
    assert found is not None, card
    return found.group(1)


def _card(html: str, line: str) -> str:
    start = html.index(f'data-line="{line}"')
    end = html.find("</article>", start)
    return html[start:end]


def test_queue_engine_fault_and_behind_on_the_lines_page(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    login(client, "viewer")
    _event(db_sessions, "engine_in_use", "L1", engine="openvino-int8")
    l1 = _card(client.get("/lines/table").text, "L1")
    # three images wait at the folder's top level; claimed, temporary and text files do not count
    assert "3 waiting" in l1
    assert "10 min" in l1  # the oldest file's age
    assert "openvino-int8" in l1
    # the oldest image waited over two minutes: behind, though the monitor is up
    assert _badge(l1, "health") == "behind"
    assert _badge(l1, "state") == "up"
    l2 = _card(client.get("/lines/table").text, "L2")
    assert "cannot list" in l2  # the queue of a missing folder is unknown, and says why
    assert _badge(l2, "health") == "down"  # no monitor ever reported for L2
    assert "no monitor has reported" in l2

    _event(db_sessions, "plant_fault", "L1", error="ArchiveFullError: disk full")
    _event(db_sessions, "line_behind", "L1", backlog=3)
    l1 = _card(client.get("/lines/table").text, "L1")
    assert _badge(l1, "health") == "faulted"
    assert "ArchiveFullError: disk full" in l1
    assert "falling behind since" in l1

    _event(db_sessions, "plant_fault_cleared", "L1")
    _event(db_sessions, "line_caught_up", "L1", backlog=0)
    _event(db_sessions, "engine_switch", "L1", engine="torch-cpu")
    l1 = _card(client.get("/lines/table").text, "L1")
    assert "plant fault since" not in l1
    assert "falling behind since" not in l1
    assert "torch-cpu" in l1
    assert _badge(l1, "health") == "behind"  # still: the oldest image waits 10 minutes


def test_drift_panel_shows_each_cameras_newest_window_and_last_alert(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    from defectscan.store.drift_rows import save_drift_window

    login(client, "viewer")
    assert "No drift window yet" in client.get("/lines/table").text
    now = datetime.now(UTC).replace(microsecond=0)
    with db_sessions.begin() as s:
        for k, (state, hint) in enumerate(
            [("critical", "darker images"), ("ok", "back to normal")]
        ):
            end = now - timedelta(minutes=20 - 10 * k)
            save_drift_window(
                session=s,
                line="L1",
                camera="cam1",
                model_version=seeded.model_version,
                reference_id=None,
                window_start=end - timedelta(minutes=10),
                window_end=end,
                n=250,
                statistics={},
                thresholds={},
                state=state,
                hints=[hint],
            )
    panel = client.get("/lines/table").text.split('data-testid="drift"')[1]
    row = panel.split('data-camera="cam1"')[1].split("</tr>")[0]
    assert ">ok<" in row
    assert "back to normal" in row
    alert = (now - timedelta(minutes=20)).strftime("%Y-%m-%d %H:%M:%S")
    assert alert in row  # when it last alerted (the critical window)
    st = client.app.state.console  # type: ignore[attr-defined]
    st.settings = st.settings.model_copy(update={"drift": False})
    panel = client.get("/lines/table").text.split('data-testid="drift"')[1]
    assert "Drift tracking is off" in panel
    assert "back to normal" not in panel


def test_redis_queue_counts_lag_and_pending_and_the_oldest_entry(
    redis_url: str, tmp_path: Path
) -> None:
    import redis

    from defectscan.config import LineConfig, Settings
    from defectscan.console.queues import line_queue

    stream = f"test-console-queue-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_url)
    try:
        first_ms = int(time.time() * 1000) - 90_000
        client.xadd(stream, {"uri": "a"}, id=f"{first_ms}-0")
        client.xadd(stream, {"uri": "b"})
        client.xadd(stream, {"uri": "c"})
        client.xgroup_create(stream, "defectscan", id="0")
        client.xreadgroup("defectscan", "c1", {stream: ">"}, count=1)  # a: pending
        settings = Settings(
            var_dir=tmp_path,
            redis_url=redis_url,
            lines={"S1": LineConfig(name="S1", source=f"redis:{stream}")},
        )
        q = line_queue("S1", settings)
        assert (q.backlog, q.pending, q.note) == (3, 1, None)
        assert q.oldest_at is not None
        assert abs(q.oldest_at.timestamp() * 1000 - first_ms) < 1
    finally:
        client.delete(stream)
        client.close()
