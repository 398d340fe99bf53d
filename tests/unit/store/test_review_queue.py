"""The review queue in the database (SQLite and PostgreSQL): fill, serve, expire, promotion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from conftest import MODEL_VERSION, make_inspection_record, register_test_model
from defectscan.drift.review_fill import fill_line
from defectscan.drift.review_sampling import SELECTOR_VERSION, stratum_budgets
from defectscan.store.inspection_writes import save_inspections
from defectscan.store.operations import record_event
from defectscan.store.review_queue import (
    expire_queue_items,
    mark_reviewed,
    next_queue_item,
    queued_sha256,
)
from defectscan.store.schema import Event, ReviewQueueItem

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _seed(sessions: sessionmaker[Session], n: int, cameras: tuple[str, ...] = ("cam1",)) -> None:
    """``n`` images per camera, one a minute, every third a fail (one defect each)."""
    with sessions.begin() as session:
        register_test_model(session)
    records = [
        make_inspection_record(
            i * len(cameras) + k,
            camera=cam,
            n_defects=1 if i % 3 == 0 else 0,
            finished_at=NOW - timedelta(minutes=n - i),
        )
        for i in range(n)
        for k, cam in enumerate(cameras)
    ]
    with sessions.begin() as session:
        save_inspections(records, session=session)


def _fill(sessions: sessionmaker[Session], **kw: object) -> dict[str, int]:
    with sessions.begin() as session:
        result = fill_line(
            session=session,
            line="L1",
            since=NOW - timedelta(hours=24),
            until=NOW,
            rng=np.random.default_rng(0),
            now=NOW,
            **kw,  # type: ignore[arg-type]
        )
    return result.picked


def _items(sessions: sessionmaker[Session]) -> list[ReviewQueueItem]:
    with sessions() as session:
        return list(session.scalars(sa.select(ReviewQueueItem).order_by(ReviewQueueItem.id)))


def test_fill_records_strata_probabilities_never_the_holdout_and_expires_after_72_hours(
    db_sessions: sessionmaker[Session],
) -> None:
    _seed(db_sessions, 90)
    with db_sessions() as session:
        shas = sorted(session.scalars(sa.text("SELECT sha256 FROM inspections")))
    holdout = frozenset(shas[:5])
    picked = _fill(db_sessions, budget=30, holdout=holdout)
    items = _items(db_sessions)
    assert len(items) == sum(picked.values()) <= 30
    assert {"random_pass", "random_fail", "close_call"} <= set(picked)
    assert not {it.sha256 for it in items} & holdout
    for it in items:
        assert it.state == "open"
        assert it.line == "L1"
        assert it.camera == "cam1"
        assert it.model_version == MODEL_VERSION
        assert it.selector_version == SELECTOR_VERSION
        assert it.expires_at - it.created_at == timedelta(hours=72)
        assert 0 < it.inclusion_probability <= 1
    eligible = [s for s in shas if s not in holdout]
    with db_sessions() as session:
        verdicts = dict(session.execute(sa.text("SELECT sha256, verdict FROM inspections")).all())
    randoms = [it for it in items if it.stratum.startswith("random_")]
    assert randoms
    for it in randoms:
        want = "pass" if it.stratum == "random_pass" else "fail"
        assert verdicts[it.sha256] == want
        assert it.population == sum(verdicts[s] == want for s in eligible)
        assert it.inclusion_probability < 1
    # A second fill of the same day never queues an image twice.
    _fill(db_sessions, budget=30, holdout=holdout)
    again = _items(db_sessions)
    assert len({it.sha256 for it in again}) == len(again) > len(items)
    # 72 hours later everything still open has expired, and nothing is served.
    with db_sessions.begin() as session:
        assert expire_queue_items(session=session, now=NOW + timedelta(hours=72, seconds=1)) == len(
            again
        )
    assert {it.state for it in _items(db_sessions)} == {"expired"}


def test_next_item_skips_images_reviewed_elsewhere_and_a_review_marks_it_done(
    db_sessions: sessionmaker[Session],
) -> None:
    from defectscan.training.reviews import record_review

    _seed(db_sessions, 30)
    with db_sessions.begin() as session:
        fill_line(
            session=session,
            line="L1",
            since=datetime.now(UTC) - timedelta(days=400),
            until=datetime.now(UTC),
            budget=10,
            rng=np.random.default_rng(1),
        )
    with db_sessions.begin() as session:
        first = next_queue_item(session=session, line="L1")
        assert first is not None
        assert next_queue_item(session=session, line="other") is None
        # Reviewed on the inspections page: the queue notices and moves on.
        record_review(first.inspection_id, "confirm", session=session, operator="ana")
    with db_sessions.begin() as session:
        second = next_queue_item(session=session, line="L1")
        assert second is not None
        assert second.inspection_id != first.inspection_id
        assert session.get(ReviewQueueItem, first.id).state == "done"  # type: ignore[union-attr]
        after = next_queue_item(session=session, line="L1", after_id=second.id)
        assert after is not None
        assert after.id != second.id
        review = record_review(second.inspection_id, "reject", session=session, operator="ana")
        assert mark_reviewed(second.inspection_id, session=session, review_id=review.id) == 1
    with db_sessions() as session:
        row = session.get(ReviewQueueItem, second.id)
        assert row is not None
        assert (row.state, row.review_id) == ("done", review.id)
        assert second.sha256 not in queued_sha256(session=session)


def test_a_drift_alert_gives_novelty_40_percent_from_the_alerted_camera(
    db_sessions: sessionmaker[Session],
) -> None:
    _seed(db_sessions, 120, cameras=("cam1", "cam2"))

    def novelty(rows: object) -> dict[str, tuple[float, np.ndarray]]:
        # A deterministic score per image (its hash), features on a line: k-center spreads them.
        return {
            r.sha256: (int(r.sha256[:6], 16) / 2**24, np.array([int(r.sha256[:6], 16) / 2**24]))
            for r in rows  # type: ignore[attr-defined]
        }

    budget = 40
    quiet = _fill(db_sessions, budget=budget, novelty=novelty)
    assert quiet["novelty"] == stratum_budgets(budget)["novelty"] == 6
    with db_sessions.begin() as session:
        session.execute(sa.update(ReviewQueueItem).values(state="expired"))
        record_event(
            session=session,
            kind="drift",
            level="warning",
            line="L1",
            message="drift warning on cam2",
            details={"camera": "cam2"},
        )
        session.execute(sa.update(Event).values(created_at=NOW - timedelta(hours=1)))
    alerted = _fill(db_sessions, budget=budget, novelty=novelty)
    assert alerted["novelty"] == stratum_budgets(budget, drift_alert=True)["novelty"] == 16
    novel = [it for it in _items(db_sessions) if it.stratum == "novelty" and it.state == "open"]
    assert {it.camera for it in novel} == {"cam2"}


def test_promotion_expires_old_scored_items_and_queues_references(
    db_sessions: sessionmaker[Session],
) -> None:
    from defectscan.drift.reference_jobs import build_pending_references, pending_references
    from defectscan.training.registry import promote

    _seed(db_sessions, 60)
    _fill(db_sessions, budget=30)
    new = "unet-test-fedcba987654"
    with db_sessions.begin() as session:
        register_test_model(session, version=new, sha256="fe" * 32)
        promote(new, session=session, force=True)
    items = _items(db_sessions)
    stale = [it for it in items if it.stratum in ("close_call", "class_balance", "novelty")]
    assert stale
    assert all(it.state == "expired" for it in stale)
    assert all(it.state == "open" for it in items if it.stratum.startswith("random_"))
    with db_sessions() as session:
        events = list(session.scalars(sa.select(Event).where(Event.kind == "drift_reference")))
        assert [e.model_version for e in events] == [new]
        pending = pending_references(session=session, now=NOW)
    assert [(p.model_version, p.line, p.camera) for p in pending] == [(new, "L1", "cam1")]

    class _Empty:
        def has(self, sha: str) -> bool:
            return False

    for _ in range(2):  # waits, and says so once a day
        out = build_pending_references(
            sessions=db_sessions, archive=_Empty(), min_images=100, now=NOW
        )
        assert [(o["state"], o["images"]) for o in out] == [("waiting", 0)]
    with db_sessions() as session:
        waiting = session.scalars(
            sa.select(Event).where(Event.kind == "drift_reference", Event.id > events[0].id)
        ).all()
    assert len(waiting) == 1
    assert "waits: 0 of 100" in waiting[0].message


def _cli_database(url: str, records: list[Any]) -> sa.Engine:
    """A migrated database at ``url`` holding ``records`` (the CLI tests open it themselves)."""
    from defectscan.store.db import make_engine, session_factory, upgrade_to_head

    engine = make_engine(url)
    upgrade_to_head(engine)
    sessions = session_factory(engine, write=True)
    with sessions.begin() as session:
        register_test_model(session)
    with sessions.begin() as session:
        save_inspections(records, session=session)
    return engine


def test_review_fill_and_next_from_the_command_line(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from helpers.cli import run_cli

    now = datetime.now(UTC)
    _cli_database(
        sqlite_url,
        [
            make_inspection_record(i, n_defects=i % 2, finished_at=now - timedelta(minutes=i))
            for i in range(40)
        ],
    ).dispose()
    code, out, err = run_cli(["review", "next", "--db", sqlite_url], capsys)
    assert code == 3
    assert "empty" in out
    code, out, err = run_cli(
        ["review", "fill", "--no-novelty", "--no-retrains", "--no-references", "--json",
         "--hours", "24", "--db", sqlite_url],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    (filled,) = json.loads(out)["filled"]
    assert filled["total"] > 0
    assert filled["line"] == "L1"
    code, out, err = run_cli(["review", "next", "--json", "--db", sqlite_url], capsys)
    assert code == 0, err
    item = json.loads(out)
    assert item["selector_version"] == SELECTOR_VERSION
    assert item["model_version"] == MODEL_VERSION
    # `review ID --verdict` still records a review, and it takes the item off the queue.
    code, out, err = run_cli(
        ["review", str(item["inspection"]), "--verdict", "confirm", "--db", sqlite_url], capsys
    )
    assert code == 0, err
    code, out, err = run_cli(["review", "next", "--json", "--db", sqlite_url], capsys)
    assert json.loads(out)["inspection"] != item["inspection"]
    # drift status: the line's escape and false-reject estimates from the random picks.
    code, out, err = run_cli(["drift", "status", "--json", "--db", sqlite_url], capsys)
    assert code == 0, err
    (est,) = json.loads(out)["estimates"]
    assert est["line"] == "L1"
    assert est["escape"]["picked"] + est["false_reject"]["picked"] > 0
    assert est["escape"]["n"] + est["false_reject"]["n"] == int(
        item["stratum"].startswith("random_")
    )


def test_a_flagged_image_fills_the_flagged_stratum_until_reviewed_or_72_hours_old(
    db_sessions: sessionmaker[Session],
) -> None:
    from defectscan.store.review_queue import flag_for_review, flagged_sha256
    from defectscan.store.schema import Inspection
    from defectscan.training.reviews import record_review

    _seed(db_sessions, 90)
    old = make_inspection_record(500, n_defects=0, finished_at=NOW - timedelta(days=5))
    with db_sessions.begin() as session:
        save_inspections([old], session=session)
    by_sha = {}
    with db_sessions.begin() as session:
        for insp in session.scalars(sa.select(Inspection)):
            by_sha[insp.sha256] = insp.id
        stale = make_inspection_record(10).sha256
        done = make_inspection_record(20).sha256
        # An old image flagged an hour ago, one flagged 80 hours ago, one flagged and reviewed.
        for sha, age in ((old.sha256, 1), (stale, 80), (done, 2)):
            event = flag_for_review(
                session.get(Inspection, by_sha[sha]), by="ana", note="glare?", session=session
            )
            event.created_at = NOW - timedelta(hours=age)
        record_review(by_sha[done], "confirm", session=session, operator="ana")
    with db_sessions() as session:
        flags = session.scalars(sa.select(Event).where(Event.kind == "review_flag")).all()
        assert len(flags) == 3
        assert flags[0].details["by"] == "ana"
        assert flagged_sha256(session=session, line="L1", since=NOW - timedelta(hours=72)) == {
            old.sha256
        }
    picked = _fill(db_sessions, budget=150)
    assert picked["flagged"] == 1
    items = {it.sha256: it for it in _items(db_sessions)}
    # Inspected five days ago, outside the fill's day, and still taken: the operator asked.
    assert items[old.sha256].stratum == "flagged"
    assert items[old.sha256].inclusion_probability == 1.0
    assert done not in items
    assert stale not in items or items[stale].stratum != "flagged"
    # The random strata still stand for the period: 59 unreviewed passes, the old one not counted.
    random_pass = [it for it in items.values() if it.stratum == "random_pass"]
    assert random_pass
    assert {it.population for it in random_pass} == {59}
    # Queued now: a second fill does not take it again.
    again = _fill(db_sessions, budget=150)
    assert "flagged" not in again


def test_review_flag_from_the_command_line(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from defectscan.store.db import session_factory
    from defectscan.store.schema import Inspection
    from helpers.cli import run_cli

    engine = _cli_database(sqlite_url, [make_inspection_record(1)])
    sessions = session_factory(engine, write=True)
    with sessions() as session:
        (iid,) = session.scalars(sa.select(Inspection.id)).all()
    code, out, err = run_cli(
        ["review", "flag", str(iid), "--by", "ana", "--note", "glare", "--db", sqlite_url], capsys
    )
    assert code == 0, err
    assert "flagged for review by ana" in out
    code, out, err = run_cli(
        ["review", "flag", "999999", "--by", "ana", "--db", sqlite_url], capsys
    )
    assert code == 2
    assert "no inspection 999999" in out
    with sessions() as session:
        (event,) = session.scalars(sa.select(Event).where(Event.kind == "review_flag")).all()
        assert event.details == {
            "inspection_id": iid,
            "sha256": make_inspection_record(1).sha256,
            "camera": "cam1",
            "by": "ana",
            "note": "glare",
        }
    engine.dispose()
