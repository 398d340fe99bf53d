"""The operator console over a real database and archive, for the console's tests.

:func:`seed` stores real PNG images in the archive and real inspection rows (through the
store's own writer) for them: fails with a rectangular defect whose polygon is known, and
passes. :func:`make_users` adds one user per role with known passwords.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["PASSWORDS", "Seeded", "login", "make_users", "seed"]

PASSWORDS = {
    "admin": "admin-password-1",
    "engineer": "engineer-password-1",
    "operator": "operator-password-1",
    "viewer": "viewer-password-1",
}

W, H = 64, 48


@dataclass
class Seeded:
    """What :func:`seed` stored."""

    ids: list[int]
    fails: list[int]
    passes: list[int]
    sha256: dict[int, str]
    model_version: str
    #: ids by finished_at, newest first (ids follow the writer's key order, not time)
    newest_first: list[int]


def make_users(sessions: sessionmaker[Session]) -> None:
    """One user per role, named after the role."""
    from defectscan.console.security import hash_password
    from defectscan.store.console_users import add_user

    with sessions.begin() as session:
        for role, password in PASSWORDS.items():
            add_user(role, password_hash=hash_password(password), role=role, session=session)


def _image(i: int) -> bytes:
    rng = np.random.default_rng(i)
    img = rng.integers(60, 120, size=(H, W, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def seed(
    sessions: sessionmaker[Session],
    archive_root: Path,
    *,
    n: int = 12,
    line: str = "L1",
    camera: str = "cam1",
    now: datetime | None = None,
) -> Seeded:
    """``n`` inspections (every third a pass), newest last, images in the archive."""
    from defectscan.archive import ImageArchive
    from defectscan.store.inspection_writes import save_inspections
    from defectscan.store.model_versions import ensure_model_version
    from defectscan.store.records import DefectRecord, InspectionRecord
    from defectscan.store.schema import Inspection

    archive = ImageArchive(archive_root)
    now = now or datetime.now(UTC)
    version = "unet-console-0123456789ab"
    records = []
    for i in range(n):
        data = _image(i)
        sha = archive.put(data).name
        assert sha == hashlib.sha256(data).hexdigest()
        fail = i % 3 != 0
        score = 0.55 + 0.4 * (i % 5) / 4 if fail else 0.0
        defects = (
            [
                DefectRecord(
                    class_index=1 + i % 2,
                    class_name=("scratch", "dent")[i % 2],
                    area=10 * 8,
                    bbox=(10, 10, 10, 8),
                    centroid=(14.5, 13.5),
                    perimeter=32.0,
                    mean_score=score - 0.05,
                    max_score=score,
                    polygon=[[10, 10], [19, 10], [19, 17], [10, 17]],
                )
            ]
            if fail
            else []
        )
        records.append(
            InspectionRecord(
                sha256=sha,
                uri=f"file:///nonexistent/cam/{i}.png",
                model_version=version,
                status="ok",
                verdict="fail" if fail else "pass",
                camera=camera,
                line=line,
                width=W,
                height=H,
                channels=3,
                received_at=now - timedelta(minutes=n - i),
                finished_at=now - timedelta(minutes=n - i) + timedelta(seconds=1),
                timings_ms={"total": 20.0 + i},
                defects=defects,
            )
        )
    with sessions.begin() as session:
        ensure_model_version(
            session=session,
            version=version,
            sha256="ab" * 32,
            name="unet",
            checkpoint_path=None,
            spec={"activation": "sigmoid", "class_names": ["scratch", "dent"]},
            activation="sigmoid",
            class_names=["scratch", "dent"],
            status="champion",
        )
        save_inspections(records, session=session)
    with sessions() as session:
        rows = session.query(
            Inspection.id, Inspection.sha256, Inspection.verdict, Inspection.finished_at
        ).all()
    ids = sorted(r[0] for r in rows)
    return Seeded(
        ids=ids,
        fails=sorted(r[0] for r in rows if r[2] == "fail"),
        passes=sorted(r[0] for r in rows if r[2] == "pass"),
        sha256={r[0]: r[1] for r in rows},
        model_version=version,
        newest_first=[r[0] for r in sorted(rows, key=lambda r: (r[3], r[0]), reverse=True)],
    )


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token a page carries in its forms."""
    m = _CSRF.search(html)
    assert m, "no csrf_token field on the page"
    return m.group(1)


def login(client: object, name: str, password: str | None = None) -> str:
    """Log ``client`` (a TestClient) in as ``name``; returns the session's CSRF token."""
    page = client.get("/login")  # type: ignore[attr-defined]
    resp = client.post(  # type: ignore[attr-defined]
        "/login",
        data={
            "csrf_token": csrf_of(page.text),
            "username": name,
            "password": password or PASSWORDS[name],
            "next": "/lines",
        },
        follow_redirects=False,
    )
    assert resp.status_code == 303, resp.text[:500]
    lines = client.get("/lines")  # type: ignore[attr-defined]
    assert lines.status_code == 200
    return csrf_of(lines.text)
