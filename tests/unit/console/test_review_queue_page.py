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
