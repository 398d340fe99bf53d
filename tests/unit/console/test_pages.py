"""The console's pages and actions against a real database and archive: what each page shows,
what each action stores (review rows, masks, rules, pauses, promotions, retrain requests)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from helpers.console import H, Seeded, W, login


def _ids_on(html: str) -> list[int]:
    import re

    return [int(x) for x in re.findall(r'class="thumb [a-z]+" href="/inspections/(\d+)"', html)]


def test_lines_page_shows_each_line_with_its_last_image(client: TestClient, seeded: Seeded) -> None:
    login(client, "viewer")
    page = client.get("/lines")
    assert page.status_code == 200
    last = seeded.newest_first[0]
    assert f"/images/{seeded.sha256[last]}/thumb/{last}.jpg" in page.text
    assert 'hx-trigger="every 5s"' in page.text
    table = client.get("/lines/table", headers={"HX-Request": "true"})
    assert table.status_code == 200
    assert "L1 · cam1" in table.text
    assert "unet-console-0123456789ab" in table.text
    assert "Pause" not in table.text  # a viewer gets no pause button


def test_gallery_filters_and_keyset_pages(client: TestClient, seeded: Seeded) -> None:
    login(client, "viewer")
    page = client.get("/inspections")
    shown = _ids_on(page.text)
    assert shown == seeded.newest_first
    fails = _ids_on(client.get("/inspections", params={"verdict": "fail"}).text)
    assert sorted(fails) == seeded.fails
    dents = _ids_on(client.get("/inspections", params={"class_name": "dent"}).text)
    assert dents
    assert set(dents) < set(seeded.fails)
    high = _ids_on(client.get("/inspections", params={"score_min": "0.9"}).text)
    assert high
    assert set(high) < set(seeded.fails)
    assert _ids_on(client.get("/inspections", params={"line": "L2"}).text) == []
    assert _ids_on(client.get("/inspections", params={"reviewed": "yes"}).text) == []
    # keyset pages: 5 at a time through the items endpoint, nothing twice, nothing left out
    from defectscan.store.console_queries import GalleryFilters, gallery_page

    app_state = client.app.state.console  # type: ignore[attr-defined]
    seen: list[int] = []
    cursor = None
    with app_state.read() as session:
        while True:
            p = gallery_page(GalleryFilters(), session=session, cursor=cursor, limit=5)
            seen += [it.id for it in p.items]
            cursor = p.next_cursor
            if cursor is None:
                break
    assert seen == seeded.newest_first
    more = client.get("/inspections/items", params={"cursor": "garbage"})
    assert more.status_code == 200


def test_detail_page_and_images(client: TestClient, seeded: Seeded) -> None:
    login(client, "viewer")
    i = seeded.fails[0]
    sha = seeded.sha256[i]
    page = client.get(f"/inspections/{i}")
    assert page.status_code == 200
    assert 'id="overlay-toggle"' in page.text
    assert 'id="overlay-opacity"' in page.text
    assert "scratch" in page.text or "dent" in page.text
    img = client.get(f"/images/{sha}")
    assert img.status_code == 200
    assert img.headers["content-type"] == "image/png"
    decoded = cv2.imdecode(np.frombuffer(img.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape[:2] == (H, W)
    overlay = client.get(f"/images/{sha}/overlay/{i}.png")
    o = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert o.shape == (H, W, 4)
    assert o[13, 14, 3] == 255
    assert o[0, 0, 3] == 0
    thumb = client.get(f"/images/{sha}/thumb/{i}.jpg")
    assert thumb.headers["content-type"] == "image/jpeg"
    cache = Path(client.app.state.console.images.cache_dir)  # type: ignore[attr-defined]
    assert list((cache / "thumbs").rglob(f"{sha}.*.jpg"))  # cached on disk by sha256
    assert client.get("/inspections/999999").status_code == 404


def test_a_review_with_a_painted_mask_is_a_new_row(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    token = login(client, "operator")
    i = seeded.fails[0]
    with db_sessions() as s:
        before = s.execute(sa.text("SELECT * FROM inspections WHERE id = :i"), {"i": i}).one()
    start = client.get(f"/review/{i}/mask").json()
    assert (start["width"], start["height"]) == (W, H)
    mask = np.zeros((H, W), np.uint8)
    mask[30:40, 40:52] = 2  # a dent the model missed; the model's scratch erased
    from defectscan.console.images import encode_rle

    resp = client.post(
        f"/review/{i}",
        json={"action": "accept", "mask": encode_rle(mask), "comment": "missed dent"},
        headers={"X-CSRF-Token": token},
    )
    assert resp.status_code == 200, resp.text
    review_id = resp.json()["review"]
    with db_sessions() as s:
        row = (
            s.execute(sa.text("SELECT * FROM reviews WHERE id = :r"), {"r": review_id})
            .one()
            ._mapping
        )
        after = s.execute(sa.text("SELECT * FROM inspections WHERE id = :i"), {"i": i}).one()
    assert before == after  # the inspection row is never edited
    assert row["operator"] == "operator"
    assert row["decision"] == "reject"  # a corrected mask: the result was wrong
    assert row["note"] == "missed dent"
    stored = cv2.imread(row["corrected_mask_path"], cv2.IMREAD_UNCHANGED)
    assert stored.shape == (H, W)
    assert (stored == mask).all()
    import json

    details = row["details"] if isinstance(row["details"], dict) else json.loads(row["details"])
    assert details["verdict"] == "fail"
    [d] = details["defects"]
    assert d["class"] == "dent"
    assert d["area"] == 120
    assert d["bbox"] == [40, 30, 12, 10]
    # the next review starts from the corrected mask
    again = client.get(f"/review/{i}/mask").json()
    from defectscan.console.images import decode_rle

    assert (decode_rle(again["rle"], (H, W), 2) == mask).all()


def test_a_class_change_and_an_overrule(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    token = login(client, "operator")
    i = seeded.fails[0]
    with db_sessions() as s:
        defect_id, cls = s.execute(
            sa.text("SELECT id, class_name FROM defects WHERE inspection_id = :i"), {"i": i}
        ).one()
    new = "dent" if cls == "scratch" else "scratch"
    resp = client.post(
        f"/review/{i}",
        json={"action": "overrule", "classes": {str(defect_id): new}},
        headers={"X-CSRF-Token": token},
    )
    assert resp.status_code == 200, resp.text
    bad = client.post(
        f"/review/{i}",
        json={"action": "accept", "classes": {str(defect_id): "no-such-class"}},
        headers={"X-CSRF-Token": token},
    )
    assert bad.status_code == 422
    with db_sessions() as s:
        mask_path, details = s.execute(
            sa.text("SELECT corrected_mask_path, details FROM reviews ORDER BY id DESC")
        ).first()
    import json

    details = details if isinstance(details, dict) else json.loads(details)
    assert details["verdict"] == "pass"
    assert details["class_changes"] == {str(defect_id): new}
    assert details["defects"][0]["class"] == new
    assert cv2.imread(mask_path, cv2.IMREAD_UNCHANGED)[13, 14] == (1 if new == "scratch" else 2)


def test_review_queue_order_and_stepping(client: TestClient, seeded: Seeded) -> None:
    token = login(client, "operator")
    from defectscan.store.console_queries import review_queue

    with client.app.state.console.read() as session:  # type: ignore[attr-defined]
        items = review_queue(session=session)
    kinds = [it.kind for it in items]
    assert kinds == sorted(kinds, key=["close", "fail", "pass"].index)
    assert {it.id for it in items if it.kind != "pass"} == set(seeded.fails)
    close = [it.peak for it in items if it.kind == "close"]
    assert close == sorted(close)
    assert all(p <= 0.65 for p in close)
    first = client.get("/queue/next")
    assert first.headers["location"] == f"/review/{items[0].id}?queue=1"
    skip = client.get("/queue/next", params={"after": items[0].id})
    assert skip.headers["location"] == f"/review/{items[1].id}?queue=1"
    done = client.post(
        f"/review/{items[0].id}",
        json={"action": "accept", "queue": True},
        headers={"X-CSRF-Token": token},
    )
    assert done.json()["next"] == f"/queue/next?after={items[0].id}"
    assert client.get("/queue/next").headers["location"] == f"/review/{items[1].id}?queue=1"
    assert f'data-id="{items[0].id}"' not in client.get("/queue").text


def test_pause_and_resume_a_line(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    token = login(client, "operator")
    assert client.post("/lines/L1/pause", data={"csrf_token": token}).status_code == 303
    table = client.get("/lines/table").text
    assert "paused by operator" in table
    assert "last event: " in table
    assert "line_paused</a>" in table
    from defectscan.store.line_rules import line_paused

    with db_sessions() as s:
        assert line_paused("L1", session=s)
    client.post("/lines/L1/resume", data={"csrf_token": token})
    with db_sessions() as s:
        assert not line_paused("L1", session=s)
        kinds = [k for (k,) in s.execute(sa.text("SELECT kind FROM events ORDER BY id"))]
        audit = [a for (a,) in s.execute(sa.text("SELECT action FROM audit ORDER BY id"))]
    assert kinds == ["line_paused", "line_resumed"]
    assert audit[-2:] == ["pause", "resume"]
    events = client.get("/events", params={"kind": "line_paused"})
    assert "operator paused line L1" in events.text
    assert "resumed" not in events.text.split("<tbody>")[1]


def test_retrain_records_requester_and_reason(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    token = login(client, "operator")
    assert client.post("/retrain", data={"csrf_token": token, "reason": " "}).status_code == 303
    resp = client.post("/retrain", data={"csrf_token": token, "reason": "darker parts"})
    assert resp.status_code == 303
    assert "error=" not in resp.headers["location"], resp.headers["location"]
    deadline = time.monotonic() + 60
    row = None
    while time.monotonic() < deadline:
        with db_sessions() as s:
            row = s.execute(
                sa.text("SELECT trigger, requested_by, reason, status FROM training_runs")
            ).first()
        if row is not None and row[3] != "running":
            break
        time.sleep(0.2)
    assert row is not None
    assert tuple(row[:3]) == ("operator", "operator", "darker parts")
    # no base dataset and no reviews here: the run fails, and says so on the page
    assert row[3] == "failed"
    assert "darker parts" in client.get("/models").text


def test_promote_forced_and_rollback_as_engineer(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    from defectscan.store.model_versions import ensure_model_version

    with db_sessions.begin() as s:
        ensure_model_version(
            session=s,
            version="unet-console-candidate",
            sha256="cd" * 32,
            name="unet",
            checkpoint_path=None,
            spec={},
            activation="sigmoid",
            class_names=["scratch", "dent"],
        )
    token = login(client, "engineer")
    refused = client.post(
        "/models/unet-console-candidate/promote", data={"csrf_token": token, "force": "1"}
    )
    assert "error=" in refused.headers["location"]  # forcing needs a reason
    gate = client.post("/models/unet-console-candidate/promote", data={"csrf_token": token})
    assert "error=" in gate.headers["location"]  # no holdout to compare on: refused
    resp = client.post(
        "/models/unet-console-candidate/promote",
        data={"csrf_token": token, "force": "1", "reason": "line trial"},
    )
    assert "msg=" in resp.headers["location"], resp.headers["location"]
    with db_sessions() as s:
        status = dict(s.execute(sa.text("SELECT version, status FROM model_versions")).all())
    assert status == {"unet-console-0123456789ab": "retired", "unet-console-candidate": "champion"}
    back = client.post("/models/rollback", data={"csrf_token": token, "name": "unet"})
    assert "msg=" in back.headers["location"], back.headers["location"]
    with db_sessions() as s:
        status = dict(s.execute(sa.text("SELECT version, status FROM model_versions")).all())
        audit = [a for (a,) in s.execute(sa.text("SELECT action FROM audit ORDER BY id"))]
    assert status["unet-console-0123456789ab"] == "champion"
    page = client.get("/models")  # a rolled-back version's metrics render too
    assert page.status_code == 200
    assert "unet-console-candidate" in page.text
    assert audit[-2:] == ["promote", "rollback"]


def test_threshold_what_if_and_apply(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    token = login(client, "engineer")
    page = client.get("/thresholds", params={"line": "L1", "class_name": "scratch"})
    assert page.status_code == 200
    assert "(plant file)" in page.text
    assert "0.600" in page.text
    low = client.get(
        "/thresholds", params={"line": "L1", "class_name": "scratch", "threshold": "0.0"}
    )
    assert 'class="hist"' in low.text
    resp = client.post(
        "/thresholds/apply",
        data={
            "csrf_token": token,
            "line": "L1",
            "class_name": "scratch",
            "threshold": "0.7",
            "reason": "fewer false rejects",
        },
    )
    assert "msg=" in resp.headers["location"]
    from defectscan.store.line_rules import effective_thresholds

    with db_sessions() as s:
        rule = effective_thresholds("L1", session=s)["scratch"]
        assert (rule.threshold, rule.version, rule.created_by) == (0.7, 1, "engineer")
    page = client.get("/thresholds", params={"line": "L1", "class_name": "scratch"})
    assert "console rule v1 by engineer" in page.text
    bad = client.post(
        "/thresholds/apply",
        data={"csrf_token": token, "line": "L1", "class_name": "scratch", "threshold": "2"},
    )
    assert "error=" in bad.headers["location"]


def test_what_if_rates(db_sessions: sessionmaker[Session], seeded: Seeded) -> None:
    from defectscan.store.console_queries import threshold_what_if
    from defectscan.store.training_runs import add_review

    with db_sessions.begin() as s:
        for i in seeded.fails[:2]:
            add_review(session=s, inspection_id=i, decision="reject", operator="t")
    with db_sessions() as s:
        w = threshold_what_if("L1", "scratch", 0.01, session=s)
        none_fail = threshold_what_if("L1", "scratch", 1.0, session=s)
    assert w.samples == len(seeded.ids)
    assert w.reviewed == 2
    scratch_fails = [i for i in seeded.fails[:2] if (i - seeded.ids[0]) % 2 == 0]
    assert w.false_reject_rate == len(scratch_fails) / 2
    assert none_fail.fail_rate == 0.0
    assert none_fail.false_reject_rate == 0.0


def test_trends_and_events_pages(client: TestClient, seeded: Seeded) -> None:
    login(client, "viewer")
    page = client.get("/trends", params={"line": "L1"})
    assert page.status_code == 200
    assert "<polyline" in page.text
    assert "defect rate by class" in page.text
    assert client.get("/trends", params={"span": "7d"}).status_code == 200
    assert client.get("/events").status_code == 200


def test_the_week_fail_rate_comes_from_monitor_windows_when_there_are_any(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    from datetime import UTC, datetime, timedelta

    from defectscan.store.console_queries import lines_overview
    from defectscan.store.operations import save_run_metrics

    with client.app.state.console.read() as session:  # type: ignore[attr-defined]
        [before] = lines_overview(session=session, lines=["L1"])
    assert before.fail_rate_week == len(seeded.fails) / len(seeded.ids)  # from the rows
    now = datetime.now(UTC)
    with db_sessions.begin() as s:
        for m in range(3):
            save_run_metrics(
                session=s,
                flow_run_id="run-1",
                line="L1",
                window_start=now - timedelta(minutes=m + 1),
                window_end=now - timedelta(minutes=m),
                processed=110,
                rejected=10,
                failed=25,
                latency_p95_ms=42.0,
            )
    with client.app.state.console.read() as session:  # type: ignore[attr-defined]
        [after] = lines_overview(session=session, lines=["L1", "L9"])[:1]
        cards = lines_overview(session=session, lines=["L1", "L9"])
    assert after.fail_rate_week == 0.25  # 75 failed of 300 inspected
    assert after.latency_p95_ms == 42.0
    assert after.state == "up"
    assert [(c.line, c.state) for c in cards] == [("L1", "up"), ("L9", "down")]
