"""A batch over past parts says what it could not see, and streams the images it can.

The archive keeps every failed part but only a sample of passes, and a monitor moves the camera
file away: a re-inspection of past parts can see the failed ones only. Those it cannot see are
counted apart (by their stored verdict), stay out of every rate, and the report says so in
words; every rate names the number of parts it is computed on. The images of a lot are read a
chunk at a time, never all at once.
"""

from __future__ import annotations

import re
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from defectscan.archive import ArchivePolicy, ImageArchive
from defectscan.batch import BatchSelection, class_table, run_batch, summary_markdown
from defectscan.pipeline import Inspector
from defectscan.store.db import make_engine, upgrade_to_head
from helpers.line import oracle_checkpoint, part_bytes, rows, write_parts


def _inspectors(tmp_path: Path) -> tuple[Inspector, Inspector]:
    first = oracle_checkpoint(tmp_path / "first.safetensors")
    second = oracle_checkpoint(tmp_path / "second.safetensors", gain=61.0)
    return (
        Inspector.from_checkpoint(first, backend="torch", device="cpu"),
        Inspector.from_checkpoint(second, backend="torch", device="cpu"),
    )


def test_parts_whose_images_are_not_kept_are_counted_apart_and_out_of_every_rate(
    tmp_path: Path, sqlite_url: str
) -> None:
    lot = tmp_path / "camera"
    files = write_parts(lot, 12, fail_every=3)  # parts 0, 3, 6, 9 fail; 8 pass
    first, second = _inspectors(tmp_path)
    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    # the monitor's archive: every failed part, no passes
    archive = ImageArchive(tmp_path / "archive", ArchivePolicy(pass_share=0.0, margin=0.0))
    try:
        stored = run_batch(
            BatchSelection(paths=(str(lot),)),
            inspector=first,
            engine=engine,
            report_dir=tmp_path / "r1",
            archive=archive,
            line="L1",
            camera="cam-a",
        )
        assert (stored.inspected, stored.failed) == (12, 4)
        for f in files:  # moved on by the monitor: only the archive has images now
            f.unlink()
        report = run_batch(
            BatchSelection(query_line="L1"),
            inspector=second,
            engine=engine,
            report_dir=tmp_path / "r2",
            archive=archive,
        )
    finally:
        engine.dispose()
    summary = report.to_dict()
    # the 8 passes cannot be seen: counted apart, by their stored verdict, not as "not found"
    assert (summary["inputs"], summary["parts"], summary["inspected"]) == (12, 4, 4)
    assert summary["not_kept"] == 8
    assert summary["not_kept_by_verdict"] == {"pass": 8}
    assert summary["missing"] == []
    # every rate is over the 4 parts seen, and says so
    assert (summary["defect_rate"], summary["defect_rate_n"]) == (1.0, 4)
    assert summary["per_class"]["dark"]["n"] == 4
    assert summary["by_camera"]["cam-a"]["n"] == 4
    note = summary["coverage_note"]
    assert "8 selected part(s) could not be re-inspected" in note, note
    assert "8 pass" in note
    assert "not over the whole selection" in note
    table = {r["class"]: r for r in class_table(report)}
    assert table["any (failed parts)"]["rate"] == "100.0% of 4"
    assert table["not seen (images not kept; in no rate)"]["parts"] == 8
    markdown = summary_markdown(report)
    assert "What this batch could not see" in markdown
    assert "8 not seen (images not kept)" in markdown
    assert report.report_path is not None
    html = report.report_path.read_text()
    assert "id='coverage'" in html
    assert "could not be re-inspected" in html
    assert html.count("class='not-kept'") == 8
    assert re.search(r"<b>100\.0% of 4</b>", html), "the defect-rate card names its n"
    # the rows of the first model stay as they were; the second wrote only what it saw
    assert rows(sqlite_url) == [(16,)]


def _padded_png(i: int, pad: int) -> bytes:
    """Part ``i`` as a PNG with ``pad`` bytes of text metadata: large bytes, tiny pixels."""
    png = part_bytes(i, fail=i % 4 == 0)
    body = b"pad\x00" + bytes(97 + (i + k) % 26 for k in range(pad))
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)
    end = 8 + 25  # signature + IHDR chunk
    return png[:end] + chunk + png[end:]


def test_a_lot_is_streamed_not_held_in_memory_at_once(tmp_path: Path, sqlite_url: str) -> None:
    n, size = 96, 250_000
    lot = tmp_path / "lot"
    lot.mkdir()
    for i in range(n):
        (lot / f"part{i:03d}.png").write_bytes(_padded_png(i, size))
    first, second = _inspectors(tmp_path)
    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    archive = ImageArchive(tmp_path / "archive", ArchivePolicy(pass_share=1.0))
    try:
        run_batch(
            BatchSelection(paths=(str(lot),)),
            inspector=first,
            engine=engine,
            report_dir=tmp_path / "r1",
            archive=archive,
            line="L1",
        )
        tracemalloc.start()
        try:
            report = run_batch(
                BatchSelection(query_line="L1"),  # all 96 from the archive, by sha256
                inspector=second,
                engine=engine,
                report_dir=tmp_path / "r2",
                archive=archive,
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        engine.dispose()
    assert (report.inspected, report.inserted, len(report.not_kept)) == (n, n, 0)
    total = n * size
    # a chunk of images at a time: far below the whole lot's bytes
    assert peak < 0.5 * total, f"peak {peak / 1e6:.1f} MB for a lot of {total / 1e6:.1f} MB"


def _promote(url: str, checkpoint: Path) -> str:
    from defectscan.store.db import session_factory
    from defectscan.store.model_versions import set_model_status
    from defectscan.training.registry import register_checkpoint

    engine = make_engine(url)
    upgrade_to_head(engine)
    with session_factory(engine, write=True).begin() as session:
        version = register_checkpoint(checkpoint, session=session).version
        set_model_status(version, "champion", session=session)
    engine.dispose()
    return version


def test_a_batch_report_counts_batch_rows_not_the_monitor_rows_of_the_same_images(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The monitor stored its rows (keyed on the delivery); a batch over the same images under
    the same model stores its own and reports each part once, from its own rows."""
    from defectscan.monitor import LineMonitor, ModelProvider
    from defectscan.sources.folder import FolderSource
    from defectscan.store.db import session_factory

    camera = tmp_path / "camera"
    write_parts(camera, 6, fail_every=3)  # parts 0 and 3 fail
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    inspector = Inspector.from_checkpoint(model, backend="torch", device="cpu")
    monitor_engine = make_engine(sqlite_url)
    upgrade_to_head(monitor_engine)
    monitor = LineMonitor(
        FolderSource(camera, line="L1", stable_polls=1, watch=False),
        ModelProvider(
            str(model),
            load=lambda path: Inspector.from_checkpoint(path, backend="torch", device="cpu"),
            sessions=session_factory(monitor_engine, write=True),
            line="L1",
        ),
        monitor_engine,
        line="L1",
        claim_timeout=0.2,
    )
    try:
        assert monitor.run(idle_exit=0.5).images == 6
    finally:
        monitor.close()
    engine = make_engine(sqlite_url)
    try:
        report = run_batch(
            BatchSelection(paths=(str(camera / "done" / "*" / "*.png"),)),
            inspector=inspector,
            engine=engine,
            report_dir=tmp_path / "r",
            line="L1",
        )
    finally:
        engine.dispose()
    assert report.model_version == monitor.models.inspector.model_version
    assert (report.inserted, report.duplicates) == (6, 0)
    assert len(report.parts) == 6
    assert len({p.sha256 for p in report.parts}) == 6
    assert (report.inspected, report.failed) == (6, 2)
    summary = report.to_dict()
    assert (summary["defect_rate"], summary["defect_rate_n"]) == (2 / 6, 6)
    # both kinds of rows stay: the monitor's (with their delivery) and the batch's (without)
    assert rows(
        sqlite_url,
        "SELECT source_key IS NULL, count(*) FROM inspections GROUP BY source_key IS NULL "
        "ORDER BY 1",
    ) == [(0, 6), (1, 6)]


def test_a_batch_on_plain_champion_follows_the_one_name_with_a_champion(
    tmp_path: Path, sqlite_url: str, flow_settings: Callable[..., Path]
) -> None:
    """Plain ``champion`` works while one model name has a champion; once several do, the
    batch refuses to guess and says how to choose."""
    from defectscan.batch import inspect_lot
    from defectscan.errors import ConfigError

    flow_settings(tmp_path, sqlite_url, DEFECTSCAN_ARCHIVE_DIR=str(tmp_path / "archive"))
    lot = tmp_path / "lot"
    write_parts(lot, 3)
    selection = BatchSelection(paths=(str(lot),))
    v1 = _promote(sqlite_url, oracle_checkpoint(tmp_path / "v1.safetensors"))
    report = inspect_lot(selection, model="champion", report_dir=tmp_path / "r1")
    assert (report.model_version, len(report.parts)) == (v1, 3)

    other = _promote(
        sqlite_url, oracle_checkpoint(tmp_path / "o.safetensors", gain=70.0, name="other")
    )
    with pytest.raises(ConfigError) as refused:
        inspect_lot(selection, model="champion", report_dir=tmp_path / "r2")
    message = str(refused.value)
    assert "several models have a champion (oracle, other)" in message
    assert "--model champion:oracle" in message
    assert "monitor" not in message  # a batch is not a monitor
    named = inspect_lot(selection, model="champion:other", report_dir=tmp_path / "r3")
    assert (named.model_version, len(named.parts)) == (other, 3)
