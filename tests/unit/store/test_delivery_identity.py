"""One row per delivery: keyed on the source identity under any model version (SQLite, PG).

A delivery that comes back after a model switch is the same row; two parts with identical
bytes are two rows; an explicit re-inspection (no source identity: ``batch``, ``inspect
--store``) stays keyed on the bytes and the model version, so re-running it stores nothing new.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from defectscan import store as repo
from defectscan.store.db import retrying
from defectscan.store.records import InspectionRecord
from defectscan.store.schema import Inspection

MakeRecord = Callable[..., InspectionRecord]
V2 = "unet-test-fedcba987654"


def register_second_model(sessions: sessionmaker[Session], version: str) -> None:
    with sessions.begin() as session:
        repo.ensure_model_version(
            session=session,
            version=version,
            sha256="fedcba987654" + "0" * 52,
            name="unet-test",
            checkpoint_path=None,
            spec={},
            activation="sigmoid",
            class_names=["scratch", "dent"],
        )


def _save(sessions: sessionmaker[Session], records: list[InspectionRecord]) -> repo.SaveResult:
    return retrying(
        lambda session: repo.save_inspections(records, session=session), sessions=sessions
    )


def _rows(sessions: sessionmaker[Session]) -> list[tuple[str | None, str, str]]:
    with sessions() as session:
        rows = session.execute(
            sa.select(Inspection.source_key, Inspection.sha256, Inspection.status).order_by(
                Inspection.id
            )
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def _keyed(record: InspectionRecord, key: str | None, **changes: object) -> InspectionRecord:
    return dataclasses.replace(record, source_key=key, **changes)  # type: ignore[arg-type]


def test_identical_bytes_of_two_deliveries_get_two_rows(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    twin = make_record(1)
    a = _keyed(twin, "folder:/cam/part-a.png:100:1")
    b = _keyed(twin, "folder:/cam/part-b.png:100:2", uri="file:///cam/part-b.png")
    assert _save(store_sessions, [a, b]) == repo.SaveResult(inserted=2, duplicates=0)
    assert _save(store_sessions, [a, b]) == repo.SaveResult(inserted=0, duplicates=2)
    assert [r[0] for r in _rows(store_sessions)] == [a.source_key, b.source_key]


def test_a_redelivery_under_another_model_version_is_the_same_row(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    register_second_model(store_sessions, V2)
    first = _keyed(make_record(1), "redis:line1:1-0")
    assert _save(store_sessions, [first]) == repo.SaveResult(inserted=1, duplicates=0)
    again = _keyed(make_record(1, model_version=V2, n_defects=0), "redis:line1:1-0")
    assert _save(store_sessions, [again]) == repo.SaveResult(inserted=0, duplicates=1)
    # the same key with other bytes is another delivery (a source that reused an identity)
    other = _keyed(make_record(2, model_version=V2), "redis:line1:1-0")
    assert _save(store_sessions, [other]) == repo.SaveResult(inserted=1, duplicates=0)

    with store_sessions() as session:
        found = repo.committed_deliveries(["redis:line1:1-0", "redis:line1:9-0"], session=session)
    assert sorted(found) == ["redis:line1:1-0"]
    by_sha = {c.sha256: c for c in found["redis:line1:1-0"]}
    assert by_sha[first.sha256].model_version == first.model_version
    assert by_sha[first.sha256].status == "ok"
    assert by_sha[other.sha256].model_version == V2


def test_explicit_inspections_stay_keyed_on_bytes_and_model_version(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    register_second_model(store_sessions, V2)
    batch = [make_record(i) for i in range(3)]
    assert _save(store_sessions, batch) == repo.SaveResult(inserted=3, duplicates=0)
    # a batch re-run under the same model: nothing new
    assert _save(store_sessions, batch) == repo.SaveResult(inserted=0, duplicates=3)
    # a re-inspection under a new model is an explicit act: rows of its own
    again = [make_record(i, model_version=V2) for i in range(3)]
    assert _save(store_sessions, again) == repo.SaveResult(inserted=3, duplicates=0)
    # a monitored delivery of the same bytes is a row of its own too
    seen = _keyed(make_record(0), "folder:/cam/x.png:1:1")
    assert _save(store_sessions, [seen]) == repo.SaveResult(inserted=1, duplicates=0)
    assert len(_rows(store_sessions)) == 7


def test_a_rejection_keeps_its_source_identity(
    store_sessions: sessionmaker[Session], make_record: MakeRecord
) -> None:
    sha = make_record(5).sha256
    kwargs = {
        "sha256": sha,
        "uri": "redis://line1/7-0",
        "model_version": make_record(5).model_version,
        "error_kind": "truncated",
        "error_message": "image data ends early",
        "source_key": "redis:line1:7-0",
    }
    first = retrying(
        lambda session: repo.record_rejection(session=session, **kwargs), sessions=store_sessions
    )
    second = retrying(
        lambda session: repo.record_rejection(session=session, **kwargs), sessions=store_sessions
    )
    assert (first.inserted, second.inserted) == (1, 0)
    assert _rows(store_sessions) == [("redis:line1:7-0", sha, "rejected")]
