"""Trends: rejects by reason as an hourly series over 24 hours and 7 days (failed parts by the
class of their defects, refused inputs by why), every hour of the span a point."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from helpers.console import Seeded, login


def _polylines(html: str, figure: str) -> dict[str, list[float]]:
    """The y values of each named polyline of figure ``figure`` (SVG y: 140 is zero)."""
    part = html.split(f'id="{figure}"')[1].split("</figure>")[0]
    out = {}
    for points, name in re.findall(r'points="([^"]*)"><title>([^<]*)</title>', part):
        out[name] = [140.0 - float(p.split(",")[1]) for p in points.split()]
    return out


def test_rejects_by_reason_per_hour(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    from defectscan.store.inspection_writes import save_inspections
    from defectscan.store.records import InspectionRecord

    three_hours_ago = datetime.now(UTC) - timedelta(hours=3)
    with db_sessions.begin() as s:
        save_inspections(
            [
                InspectionRecord(
                    sha256=f"{k:064x}",
                    uri=f"file:///cam/bad{k}.png",
                    model_version=seeded.model_version,
                    status="rejected",
                    verdict=None,
                    line="L1",
                    camera="cam1",
                    finished_at=three_hours_ago,
                    error_kind="decode",
                    error_message="not an image",
                )
                for k in range(2)
            ],
            session=s,
        )
    login(client, "viewer")
    page = client.get("/trends", params={"line": "L1"}).text
    series = _polylines(page, "rejects-by-reason")
    assert set(series) == {"fail: scratch", "fail: dent", "rejected: decode"}
    assert all(len(v) == 25 for v in series.values())  # every hour of the 24, zeros included
    decode = series["rejected: decode"]
    assert sum(1 for y in decode if y > 0) == 1  # one hour had the refused inputs ...
    assert decode.index(max(decode)) in (20, 21, 22)  # ... three hours before the last point
    assert max(series["fail: scratch"][-2:]) > 0  # the seeded fails are in the last minutes
    table = page.split('id="reasons"')[1].split("</table>")[0]
    assert "<td>rejected: decode</td><td>2</td>" in table
    assert "<td>fail: scratch</td><td>4</td>" in table
    assert "<td>fail: dent</td><td>4</td>" in table
    week = client.get("/trends", params={"line": "L1", "span": "7d"}).text
    series = _polylines(week, "rejects-by-reason")
    assert len(series["rejected: decode"]) == 169  # 7 days of hours
    assert "Rejects by reason, 7 days" in week
