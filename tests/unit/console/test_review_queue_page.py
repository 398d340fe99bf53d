"""The console's review queue serves the filled review queue, and today's ordering without one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from defectscan.drift.review_fill import fill_line
from defectscan.store.schema import ReviewQueueItem
from helpers.console import Seeded, login


def test_queue_serves_the_filled_queue_marks_done_and_falls_back_when_empty(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    token = login(client, "operator")
    assert 'data-source="fallback"' in client.get("/queue").text
    now = datetime.now(UTC)
    with db_sessions.begin() as session:
        fill_line(
            session=session,
            line="L1",
            since=now - timedelta(hours=1),
            until=now + timedelta(minutes=1),
            budget=6,
            rng=np.random.default_rng(3),
        )
    with db_sessions() as session:
        items = list(
            session.scalars(
                sa.select(ReviewQueueItem).order_by(ReviewQueueItem.expires_at, ReviewQueueItem.id)
            )
        )
    assert len(items) >= 3
    page = client.get("/queue", params={"line": "L1"}).text
    assert 'data-source="queue"' in page
    assert [int(x) for x in _ids(page)] == [it.inspection_id for it in items]
    # The random strata's escape and false-reject estimates (none reviewed yet: no rate).
    assert any(it.stratum.startswith("random_") for it in items)
    assert 'id="queue-estimates"' in page
    assert "(0 of 1 reviewed)" in page
    first = client.get("/queue/next")
    assert first.headers["location"] == f"/review/{items[0].inspection_id}?queue=1"
    skip = client.get("/queue/next", params={"after": items[0].inspection_id})
    assert skip.headers["location"] == f"/review/{items[1].inspection_id}?queue=1"
    done = client.post(
        f"/review/{items[0].inspection_id}",
        json={"action": "accept", "queue": True},
        headers={"X-CSRF-Token": token},
    )
    assert done.status_code == 200, done.text
    with db_sessions() as session:
        row = session.get(ReviewQueueItem, items[0].id)
        assert row is not None
        assert row.state == "done"
        assert row.review_id == done.json()["review"]
    assert client.get("/queue/next").headers["location"] == (
        f"/review/{items[1].inspection_id}?queue=1"
    )
    with db_sessions.begin() as session:
        session.execute(sa.update(ReviewQueueItem).values(state="expired"))
    assert 'data-source="fallback"' in client.get("/queue").text


def _ids(html: str) -> list[str]:
    import re

    return re.findall(r'class="queue-item" data-id="(\d+)"', html)


def test_an_operator_flags_an_inspection_for_review_and_the_next_fill_takes_it(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    from defectscan.store.schema import AuditEntry, Event

    target = seeded.newest_first[-1]  # inspected 12 minutes ago: before the fill's period
    viewer = login(client, "viewer")
    assert 'id="flag-button"' not in client.get(f"/inspections/{target}").text
    flag = client.post(f"/inspections/{target}/flag", data={"csrf_token": viewer, "note": "x"})
    assert flag.status_code == 403
    client.cookies.clear()
    token = login(client, "operator")
    page = client.get(f"/inspections/{target}").text
    assert 'id="flag-button"' in page
    # Without the session's CSRF token nothing is recorded.
    assert client.post(f"/inspections/{target}/flag", data={"note": "x"}).status_code == 403
    resp = client.post(
        f"/inspections/{target}/flag", data={"csrf_token": token, "note": "odd glare on the rim"}
    )
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"].startswith(f"/inspections/{target}?msg=flagged")
    assert "flagged for review" in client.get(resp.headers["location"]).text
    with db_sessions() as session:
        (event,) = session.scalars(sa.select(Event).where(Event.kind == "review_flag")).all()
        assert event.details["inspection_id"] == target
        assert event.details["by"] == "operator"
        assert event.details["note"] == "odd glare on the rim"
        assert event.line == "L1"
        actions = [a.action for a in session.scalars(sa.select(AuditEntry))]
        assert "flag_for_review" in actions
    now = datetime.now(UTC)
    with db_sessions.begin() as session:
        result = fill_line(
            session=session,
            line="L1",
            since=now - timedelta(minutes=5),
            until=now + timedelta(minutes=1),
            budget=150,
            rng=np.random.default_rng(3),
        )
    assert result.picked.get("flagged") == 1
    with db_sessions() as session:
        item = session.scalars(
            sa.select(ReviewQueueItem).where(ReviewQueueItem.stratum == "flagged")
        ).one()
        assert item.inspection_id == target
        assert item.inclusion_probability == 1.0
