"""Idempotent writes and user queries, each on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from defectscan import store as repo
from defectscan.errors import StoreError
from defectscan.store.db import retrying
from defectscan.store.records import InspectionRecord
from defectscan.store.schema import Defect, Inspection, ModelVersion, RunMetric

MakeRecord = Callable[..., InspectionRecord]
VERSION = "unet-test-0123456789ab"
T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)


def _counts(sessions: sessionmaker[Session]) -> tuple[int, int]:
    with sessions() as session:
        n_inspections = session.scalar(sa.select(sa.func.count()).select_from(Inspection))
        n_defects = session.scalar(sa.select(sa.func.count()).select_from(Defect))
    return int(n_inspections or 0), int(n_defects or 0)


def _save(sessions: sessionmaker[Session], records: list[InspectionRecord]) -> repo.SaveResult:
    return retrying(
        lambda session: repo.save_inspections(records, session=session), sessions=sessions
    )


def test_same_batch_twice_stores_each_inspection_once(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    batch = [make_record(i, n_defects=5) for i in range(20)]
    assert _save(store_sessions, batch) == repo.SaveResult(inserted=20, duplicates=0)

    # the redelivery carries a different verdict and time: nothing may be overwritten
    again = [make_record(i, n_defects=1, verdict="pass", finished_at=T0) for i in range(20)]
    assert _save(store_sessions, again) == repo.SaveResult(inserted=0, duplicates=20)

    assert _counts(store_sessions) == (20, 100)
    with store_sessions() as session:
        stored = repo.get_inspection(batch[0].sha256, session=session)
        assert stored is not None
        assert stored.verdict == "fail"
        assert stored.n_defects == len(stored.defects) == 5
        assert stored.finished_at == batch[0].finished_at


def test_duplicates_inside_a_batch_count_once(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    batch = [make_record(i % 4) for i in range(10)]
    assert _save(store_sessions, batch) == repo.SaveResult(inserted=4, duplicates=6)
    assert _counts(store_sessions) == (4, 8)


def test_same_image_under_two_model_versions_is_two_inspections(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    other = "unet-test-ba9876543210"
    with store_sessions.begin() as session:
        repo.ensure_model_version(
            session=session,
            version=other,
            sha256="ba9876543210" + "1" * 52,
            name="unet-test",
            checkpoint_path=None,
            spec={},
            activation="softmax",
            class_names=["scratch", "dent"],
        )
    result = _save(store_sessions, [make_record(1), make_record(1, model_version=other)])
    assert result.inserted == 2


def test_rejected_input_is_recorded_once(store_sessions: sessionmaker[Session]) -> None:
    sha = hashlib.sha256(b"\x89PNG truncated").hexdigest()

    def reject(*, session: Session) -> repo.SaveResult:
        return repo.record_rejection(
            session=session,
            sha256=sha,
            uri="file:///cam/bad.png",
            model_version=VERSION,
            error_kind="truncated",
            error_message="PNG data stops after 13 bytes",
            source="folder",
        )

    assert retrying(reject, sessions=store_sessions).inserted == 1
    assert retrying(reject, sessions=store_sessions).duplicates == 1  # after a crash, again
    with store_sessions() as session:
        rows = session.scalars(sa.select(Inspection).where(Inspection.sha256 == sha)).all()
        assert len(rows) == 1
        assert (rows[0].status, rows[0].verdict, rows[0].error_kind) == (
            "rejected",
            None,
            "truncated",
        )


def test_unregistered_model_version_is_refused_and_nothing_is_written(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    batch = [make_record(1), make_record(2, model_version="nobody-000000000000")]
    with pytest.raises(StoreError, match="nobody-000000000000 not registered"):
        _save(store_sessions, batch)
    assert _counts(store_sessions) == (0, 0)


def test_invalid_records_are_refused_with_a_reason(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    naive = make_record(1)
    naive.finished_at = datetime(2026, 1, 1)  # naive: the point of the test
    bad_sha = make_record(2)
    bad_sha.sha256 = "not-a-hash"
    no_verdict = make_record(3)
    no_verdict.verdict = None
    with store_sessions() as session:
        with pytest.raises(StoreError, match="naive datetime"):
            repo.save_inspection(naive, session=session)
        with pytest.raises(StoreError, match="64 lowercase hex"):
            repo.save_inspection(bad_sha, session=session)
        with pytest.raises(StoreError, match="verdict None"):
            repo.save_inspection(no_verdict, session=session)


def test_concurrent_writers_with_overlapping_batches_leave_one_row_per_image(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    # Writer A has images 0..79, writer B 40..119: 40 images reach both, in other orders.
    rng = random.Random(7)
    a = [make_record(i, n_defects=5) for i in range(80)]
    b = [make_record(i, n_defects=5) for i in range(40, 120)]
    rng.shuffle(a)
    rng.shuffle(b)
    results: list[repo.SaveResult] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(records: list[InspectionRecord]) -> None:
        try:
            start.wait()
            for i in range(0, len(records), 10):
                results.append(_save(store_sessions, records[i : i + 10]))
        except BaseException as exc:  # reported below, with the thread's traceback lost
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(batch,)) for batch in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sum(r.inserted for r in results) == 120
    assert sum(r.duplicates for r in results) == 40
    assert _counts(store_sessions) == (120, 600)
    with store_sessions() as session:
        per_key = session.execute(
            sa.select(Inspection.sha256, sa.func.count())
            .group_by(Inspection.sha256, Inspection.model_version_id)
            .having(sa.func.count() > 1)
        ).all()
        assert per_key == []


def test_timestamps_come_back_as_the_same_instant_in_utc(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    record = make_record(1)
    record.captured_at = datetime(2026, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    _save(store_sessions, [record])
    with store_sessions() as session:
        stored = repo.get_inspection(record.sha256, session=session)
        assert stored is not None
        assert stored.captured_at == datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
        assert stored.captured_at.utcoffset() == timedelta(0)


def test_recent_inspections_filter_by_line_and_camera_newest_first(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    records = [
        make_record(
            i,
            line=f"L{i % 2}",
            camera=f"cam{i % 3}",
            finished_at=T0 + timedelta(minutes=i),
        )
        for i in range(12)
    ]
    _save(store_sessions, records)
    with store_sessions() as session:
        l1 = repo.recent_inspections(session=session, line="L1", limit=3)
        assert [r.uri for r in l1] == [records[i].uri for i in (11, 9, 7)]
        l0_cam0 = repo.recent_inspections(session=session, line="L0", camera="cam0")
        assert [r.uri for r in l0_cam0] == [records[i].uri for i in (6, 0)]
        assert all(r.model_version.version == VERSION for r in l1)


def test_get_inspection_by_id_and_sha256_with_defects(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    record = make_record(5, n_defects=3)
    _save(store_sessions, [record])
    with store_sessions() as session:
        by_sha = repo.get_inspection(record.sha256, session=session)
        assert by_sha is not None
        by_id = repo.get_inspection(by_sha.id, session=session)
        assert repo.get_inspection(str(by_sha.id), session=session) is by_id
        assert by_id is not None
        assert by_id.id == by_sha.id
        assert repo.get_inspection("f" * 64, session=session) is None
    # defects are loaded eagerly: usable after the session is closed
    assert [d.class_name for d in by_id.defects] == ["scratch", "dent", "scratch"]
    first = by_id.defects[0]
    assert first.bbox == record.defects[0].bbox
    assert first.centroid == record.defects[0].centroid
    assert first.polygon == record.defects[0].polygon


def test_defect_rates_per_class_per_hour(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    # hour 0: 4 parts, 2 with defects (2 regions each: scratch + dent); hour 1: 2 clean parts
    records = [
        make_record(i, n_defects=2 if i < 2 else 0, finished_at=T0 + timedelta(minutes=10 * i))
        for i in range(4)
    ]
    records += [
        make_record(10 + i, n_defects=0, finished_at=T0 + timedelta(hours=1)) for i in range(2)
    ]
    records.append(make_record(20, n_defects=1, line="L9", finished_at=T0))  # other line
    _save(store_sessions, records)
    with store_sessions() as session:
        rates = repo.defect_rates(
            session=session, since=T0, until=T0 + timedelta(hours=2), line="L1"
        )
    got = {(r.hour, r.class_name): (r.defects, r.affected, r.inspections, r.rate) for r in rates}
    h0, h1 = T0, T0 + timedelta(hours=1)
    assert got == {
        (h0, "dent"): (2, 2, 4, 0.5),
        (h0, "scratch"): (2, 2, 4, 0.5),
        (h1, "dent"): (0, 0, 2, 0.0),
        (h1, "scratch"): (0, 0, 2, 0.0),
    }


def test_yield_by_shift_per_line(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    day = datetime(2026, 3, 2, tzinfo=UTC)
    records = [
        make_record(1, n_defects=0, finished_at=day + timedelta(hours=7)),  # L1 day shift
        make_record(2, n_defects=1, finished_at=day + timedelta(hours=8)),
        make_record(3, n_defects=0, finished_at=day + timedelta(hours=13, minutes=59)),
        make_record(4, n_defects=0, finished_at=day + timedelta(hours=23)),  # night shift
        make_record(5, n_defects=1, finished_at=day + timedelta(days=1, hours=2)),  # same night
        make_record(6, n_defects=0, line="L2", finished_at=day + timedelta(hours=15)),
    ]
    _save(store_sessions, records)
    with store_sessions.begin() as session:
        repo.record_rejection(
            session=session,
            sha256=hashlib.sha256(b"bad").hexdigest(),
            uri="file:///bad",
            model_version=VERSION,
            error_kind="not_an_image",
            error_message="no image signature",
            line="L1",
            finished_at=day + timedelta(hours=9),
        )
    with store_sessions() as session:
        rows = repo.yield_by_shift(session=session, since=day, until=day + timedelta(days=2))
    got = [(r.line, r.shift, r.shift_start, r.passed, r.failed, r.rejected) for r in rows]
    assert got == [
        ("L1", "06-14", day + timedelta(hours=6), 2, 1, 1),
        ("L2", "14-22", day + timedelta(hours=14), 1, 0, 0),
        ("L1", "22-06", day + timedelta(hours=22), 1, 1, 0),
    ]
    assert rows[0].yield_rate == pytest.approx(2 / 3)


def test_latency_percentiles_per_model_version(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    records = [make_record(i, total_ms=float(i + 1)) for i in range(100)]  # 1..100 ms
    _save(store_sessions, records)
    with store_sessions() as session:
        stats = repo.latency_percentiles(session=session)
    assert set(stats) == {VERSION}
    s = stats[VERSION]
    # PostgreSQL's percentile_cont: linear interpolation between closest ranks
    assert (s["p50"], s["p95"], s["p99"], s["count"]) == (
        pytest.approx(50.5),
        pytest.approx(95.05),
        pytest.approx(99.01),
        100,
    )


def test_model_registry_promotion_keeps_one_champion(
    store_sessions: sessionmaker[Session],
) -> None:
    def register(session: Session, version: str, sha: str) -> ModelVersion:
        return repo.ensure_model_version(
            session=session,
            version=version,
            sha256=sha * 64,
            name="unet",
            checkpoint_path=f"/models/{version}.safetensors",
            spec={"activation": "sigmoid"},
            activation="sigmoid",
            class_names=["scratch"],
            metrics={"dice": 0.8},
        )

    with store_sessions.begin() as session:
        first = register(session, "unet-aaaaaaaaaaaa", "a")
        assert register(session, "unet-aaaaaaaaaaaa", "a").id == first.id  # idempotent
        with pytest.raises(StoreError, match="registered with weights"):
            register(session, "unet-aaaaaaaaaaaa", "b")
        register(session, "unet-bbbbbbbbbbbb", "b")
        repo.set_model_status("unet-aaaaaaaaaaaa", "champion", session=session)
    with store_sessions.begin() as session:
        repo.set_model_status("unet-bbbbbbbbbbbb", "champion", session=session)
    with store_sessions() as session:
        champion = repo.get_champion(session=session, name="unet")
        assert champion is not None
        assert champion.version == "unet-bbbbbbbbbbbb"
        old = repo.get_model_version("unet-aaaaaaaaaaaa", session=session)
        assert old is not None
        assert (old.status, old.retired_at is not None) == ("retired", True)
        assert [
            m.version for m in repo.list_model_versions(session=session, status="champion")
        ] == ["unet-bbbbbbbbbbbb"]
    # the database itself refuses a second champion of the same name
    with pytest.raises(sa.exc.IntegrityError), store_sessions.begin() as session:
        session.execute(
            sa.update(ModelVersion)
            .where(ModelVersion.version == "unet-aaaaaaaaaaaa")
            .values(status="champion")
        )


def test_training_runs_and_reviews_feed_retraining(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    _save(store_sessions, [make_record(i) for i in range(3)])
    with store_sessions.begin() as session:
        ids = [i.id for i in repo.recent_inspections(session=session)]
        for inspection_id in ids[:2]:
            repo.add_review(
                session=session,
                inspection_id=inspection_id,
                decision="reject",
                operator="ana",
                corrected_mask_path=f"/masks/{inspection_id}.png",
                note="missed scratch",
            )
        with pytest.raises(StoreError, match="does not exist"):
            repo.add_review(session=session, inspection_id=10**9, decision="confirm")
        run = repo.create_training_run(
            session=session, trigger="operator", requested_by="ana", reason="missed scratches"
        )
        run_id = run.id
    with store_sessions.begin() as session:
        reviews = repo.reviews_for_training(session=session)
        assert len(reviews) == 2
        assert all(r.inspection.defects for r in reviews)
        repo.start_training_run(run_id, session=session)
        assert repo.mark_reviews_used([r.id for r in reviews], run_id, session=session) == 2
        finished = repo.finish_training_run(
            run_id, session=session, status="succeeded", metrics={"dice": 0.91}
        )
        assert finished.started_at is not None
        assert finished.finished_at is not None
    with store_sessions() as session:
        assert repo.reviews_for_training(session=session) == []
        assert len(repo.reviews_for_training(session=session, unused_only=False)) == 2


def test_run_metrics_window_saved_twice_is_one_row(store_sessions: sessionmaker[Session]) -> None:
    window = (T0, T0 + timedelta(minutes=1))
    for processed in (10, 12):
        with store_sessions.begin() as session:
            metric = repo.save_run_metrics(
                session=session,
                flow_run_id="run-1",
                window_start=window[0],
                window_end=window[1],
                processed=processed,
                rejected=1,
                throughput_per_s=processed / 60,
                latency_p50_ms=20.0,
                latency_p95_ms=45.0,
                flow_name="line-monitor",
            )
            assert metric.processed == processed
    with store_sessions() as session:
        rows = session.scalars(sa.select(RunMetric)).all()
        assert [(r.processed, r.window_start) for r in rows] == [(12, T0)]
