"""A batch of parts as a quality engineer sees it: rows once, and a report that renders.

The report is opened in headless Chromium: every overlay image loads, and the counts on the
rendered page are the database's.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from defectscan.archive import ArchivePolicy, ImageArchive
from defectscan.batch import BatchSelection, run_batch
from defectscan.pipeline import Inspector
from defectscan.store.db import make_engine, upgrade_to_head
from helpers.browser import image_probe, screenshot
from helpers.line import oracle_checkpoint, rows, write_parts


def _lot(tmp_path: Path) -> Path:
    lot = tmp_path / "lot"
    write_parts(lot, 9, fail_every=3)
    (lot / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (lot / "notes.png").write_bytes(b"operator notes, not an image")
    return lot


def test_batch_rows_once_and_report_renders_with_database_counts(
    tmp_path: Path, sqlite_url: str
) -> None:
    lot = _lot(tmp_path)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    inspector = Inspector.from_checkpoint(model, backend="torch", device="cpu")
    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    archive = ImageArchive(tmp_path / "archive", ArchivePolicy(pass_share=1.0))
    selection = BatchSelection(paths=(str(lot),))
    try:
        first = run_batch(
            selection,
            inspector=inspector,
            engine=engine,
            report_dir=tmp_path / "r1",
            archive=archive,
            line="L1",
            camera="cam-a",
        )
        again = run_batch(
            selection,
            inspector=inspector,
            engine=engine,
            report_dir=tmp_path / "r2",
            archive=archive,
            line="L1",
            camera="cam-a",
        )
        # the same lot again, this time from the archive by sha256: still nothing new
        by_sha = run_batch(
            BatchSelection(sha256=tuple(p.sha256 for p in first.parts if p.status == "ok")),
            inspector=inspector,
            engine=engine,
            report_dir=tmp_path / "r3",
            archive=archive,
        )
    finally:
        engine.dispose()
    assert (first.inserted, first.duplicates) == (11, 0)
    assert (again.inserted, again.duplicates) == (0, 11)
    assert (by_sha.inserted, by_sha.duplicates) == (0, 9)
    assert rows(sqlite_url) == [(11,)]
    assert again.to_dict()["per_class"] == first.to_dict()["per_class"]
    (failed,) = rows(sqlite_url, "SELECT count(*) FROM inspections WHERE verdict = 'fail'")[0]
    (defects,) = rows(sqlite_url, "SELECT count(*) FROM defects")[0]
    rejected = rows(sqlite_url, "SELECT uri, error_kind FROM inspections WHERE status='rejected'")
    assert failed == 3
    assert len(rejected) == 2
    assert first.failed == failed

    assert first.report_path is not None
    dom, images = image_probe(first.report_path, tmp_path / "chrome")
    # every overlay thumbnail loaded (a broken link has naturalWidth 0), one per inspected part
    assert len(images) == 9
    assert all(i["complete"] and i["width"] > 0 for i in images), images
    # the rendered counts are the database's
    shown = re.search(r'data-class="dark".*?class="num defects">(\d+)<', dom, re.S)
    assert shown
    assert int(shown.group(1)) == defects
    camera = re.search(
        r'data-camera="cam-a".*?class="num inspected">(\d+)<.*?class="num failed">(\d+)<', dom, re.S
    )
    assert camera
    assert (int(camera.group(1)), int(camera.group(2))) == (9, failed)
    assert dom.count('class="rejected-input"') == len(rejected)
    for uri, kind in rejected:
        assert Path(str(uri)).name.split(".")[0] in dom
        assert str(kind) in dom
    assert dom.count('data-verdict="fail"') == failed

    shot = screenshot(first.report_path, tmp_path / "report.png", tmp_path / "chrome")
    import cv2

    picture = cv2.imread(str(shot))
    assert picture is not None
    assert picture.shape[1] == 1280
    # not a blank page: the overlays' class colour (legend swatches, tinted defects) shows
    b, g, r = (picture[..., i].astype(int) for i in range(3))
    assert int(np.count_nonzero((r > 150) & (g < 120) & (b < 120))) > 50
