"""The camera-folder source: atomic claims, stable files only, done/rejected, crash recovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from defectscan.errors import ConfigError, RejectedInputError
from defectscan.sources import ImageRecord, Source, open_source
from defectscan.sources.folder import FolderSource

FAST = {"poll_interval": 0.02, "rescan_interval": 0.05, "watch": False}


@pytest.fixture
def cam(tmp_path: Path) -> Path:
    root = tmp_path / "cam"
    root.mkdir()
    return root


@pytest.fixture
def sources() -> Iterator[list[FolderSource]]:
    opened: list[FolderSource] = []
    yield opened
    for source in opened:
        source.close()


def _open(sources: list[FolderSource], root: Path, **kw: object) -> FolderSource:
    options: dict[str, object] = {**FAST, "stable_polls": 1, **kw}
    source = FolderSource(root, **options)  # type: ignore[arg-type]
    sources.append(source)
    return source


def _write(path: Path, data: bytes = b"\x89PNG fake image", *, age: float = 0.0) -> Path:
    path.write_bytes(data)
    if age:
        t = time.time() - age
        os.utime(path, (t, t))
    return path


def _names(records: list[ImageRecord]) -> list[str]:
    return sorted(r.id for r in records)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def test_two_sources_on_one_folder_never_hand_out_the_same_file(
    cam: Path, sources: list[FolderSource]
) -> None:
    for i in range(60):
        _write(cam / f"img{i:03d}.png", f"image {i}".encode())
    a, b = _open(sources, cam), _open(sources, cam)
    got: dict[str, list[str]] = {"a": [], "b": []}

    def drain(source: FolderSource, key: str) -> None:
        while records := source.claim(3):
            got[key] += [r.read().decode() for r in records]
            source.ack(records)

    threads = [threading.Thread(target=drain, args=(s, k)) for s, k in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not set(got["a"]) & set(got["b"])
    assert sorted(got["a"] + got["b"]) == sorted(f"image {i}" for i in range(60))
    assert a.backlog() == 0
    assert _files(cam / "processing") == []


def test_a_growing_file_is_taken_only_once_it_stopped_changing(
    cam: Path, sources: list[FolderSource]
) -> None:
    source = _open(sources, cam, stable_polls=2)
    path = _write(cam / "a.png", b"first half ")
    assert source.claim(1) == []  # first sight
    time.sleep(0.03)
    with path.open("ab") as f:
        f.write(b"second half")
    assert source.claim(1) == []  # changed since the last poll: start over
    assert (cam / "a.png").exists()
    [record] = source.claim(1, timeout=2)
    assert record.read() == b"first half second half"
    assert record.path == cam / "processing" / "a.png"


def test_tmp_files_wait_until_the_camera_renames_them(
    cam: Path, sources: list[FolderSource]
) -> None:
    source = _open(sources, cam)
    tmp = _write(cam / "b.png.tmp")
    _write(cam / ".hidden.png")
    assert source.claim(5, timeout=0.1) == []
    assert source.backlog() == 0
    tmp.rename(cam / "b.png")
    assert source.backlog() == 1
    [record] = source.claim(5, timeout=2)
    assert record.id == "b.png"
    assert record.uri == (cam / "b.png").resolve().as_uri()
    assert record.source == "folder"
    assert record.deliveries == 1
    assert record.captured_at is not None
    assert record.captured_at.tzinfo is not None
    assert (cam / ".hidden.png").exists()


def test_backlog_counts_only_top_level_images(cam: Path, sources: list[FolderSource]) -> None:
    source = _open(sources, cam)
    _write(cam / "a.png")
    _write(cam / "B.JPG")
    _write(cam / "notes.txt")
    _write(cam / "c.png.tmp")
    (cam / "sub").mkdir()
    _write(cam / "sub" / "d.png")
    assert source.backlog() == 2
    assert _names(source.claim(10)) == ["B.JPG", "a.png"]


def test_ack_moves_into_a_dated_done_folder_without_overwriting(
    cam: Path, sources: list[FolderSource]
) -> None:
    source = _open(sources, cam)
    _write(cam / "x.png", b"first")
    first = source.claim(1)
    source.ack(first)
    _write(cam / "x.png", b"second")  # cameras reuse names
    second = source.claim(1)
    source.ack(second)
    day = cam / "done" / datetime.now(UTC).strftime("%Y-%m-%d")
    assert _files(day) == ["x.png", "x~1.png"]
    assert (day / "x.png").read_bytes() == b"first"
    assert (day / "x~1.png").read_bytes() == b"second"
    assert _files(cam / "processing") == []
    assert list((cam / "processing" / ".deliveries").iterdir()) == []


def test_a_name_still_in_processing_gets_a_unique_name(
    cam: Path, sources: list[FolderSource]
) -> None:
    source = _open(sources, cam)
    _write(cam / "x.png", b"first")
    [first] = source.claim(1)
    _write(cam / "x.png", b"second")
    [second] = source.claim(1)
    assert (first.id, second.id) == ("x.png", "x~1.png")
    assert (first.read(), second.read()) == (b"first", b"second")
    assert second.uri == first.uri  # both came from cam/x.png


def test_after_delete_removes_inspected_files(cam: Path, sources: list[FolderSource]) -> None:
    source = _open(sources, cam, after="delete")
    _write(cam / "x.png")
    source.ack(source.claim(1))
    assert _files(cam / "processing") == []
    assert list((cam / "done").iterdir()) == []


def test_reject_quarantines_the_file_with_an_error_report(
    cam: Path, sources: list[FolderSource]
) -> None:
    source = _open(sources, cam)
    _write(cam / "bad.png", b"not an image")
    [record] = source.claim(1)
    source.reject(record, "not_an_image: the bytes are not a PNG")
    assert (cam / "rejected" / "bad.png").read_bytes() == b"not an image"
    report = json.loads((cam / "rejected" / "bad.png.error.json").read_text())
    assert report["reason"] == "not_an_image: the bytes are not a PNG"
    assert report["deliveries"] == 1
    assert report["original"] == "bad.png"
    assert datetime.fromisoformat(report["rejected_at"]).tzinfo is not None
    assert _files(cam / "processing") == []


def test_release_hands_the_file_out_again_and_counts_it(
    cam: Path, sources: list[FolderSource]
) -> None:
    source = _open(sources, cam)
    _write(cam / "x.png")
    [record] = source.claim(1)
    source.release([record], "database down")
    [again] = source.claim(1)
    assert (again.id, again.uri, again.deliveries) == (record.id, record.uri, 2)


def test_files_of_a_killed_source_are_redelivered_and_counted(
    cam: Path, sources: list[FolderSource]
) -> None:
    for i in range(3):
        _write(cam / f"k{i}.png")
    script = textwrap.dedent(
        f"""
        import os, signal
        from defectscan.sources.folder import FolderSource
        source = FolderSource({str(cam)!r}, stable_polls=1, watch=False)
        print(len(source.claim(2)), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    assert done.stdout.strip() == "2"
    assert len(_files(cam / "processing")) == 2

    fresh = _open(sources, cam)
    records = fresh.claim(5)
    assert _names(records) == ["k0.png", "k1.png", "k2.png"]
    assert {r.id: r.deliveries for r in records} == {"k0.png": 2, "k1.png": 2, "k2.png": 1}


def test_files_left_in_processing_without_a_sidecar_are_adopted(
    cam: Path, sources: list[FolderSource]
) -> None:
    (cam / "processing").mkdir()
    _write(cam / "processing" / "left.png")
    [record] = _open(sources, cam).claim(5)
    assert (record.id, record.deliveries) == ("left.png", 2)


def test_a_live_source_keeps_its_claimed_files(cam: Path, sources: list[FolderSource]) -> None:
    a = _open(sources, cam)
    _write(cam / "mine.png")
    assert _names(a.claim(1)) == ["mine.png"]
    b = _open(sources, cam)
    assert b.claim(5, timeout=0.1) == []
    a.close()  # a clean stop also hands unsettled files over
    [record] = b.claim(5, timeout=1)
    assert (record.id, record.deliveries) == ("mine.png", 2)


def test_a_file_that_keeps_failing_is_handed_out_as_poison(
    cam: Path, sources: list[FolderSource]
) -> None:
    _write(cam / "crash.png", b"kills the worker")
    for expected in (1, 2):  # each run dies while inspecting it
        run = _open(sources, cam, max_deliveries=2)
        [record] = run.claim(1)
        assert (record.deliveries, record.error_kind) == (expected, None)
        run.close()
    last = _open(sources, cam, max_deliveries=2)
    [record] = last.claim(1)
    assert record.error_kind == "poison"
    assert record.deliveries == 3
    assert "failed 2 times" in (record.error_message or "")
    with pytest.raises(RejectedInputError) as info:
        record.read()
    assert info.value.kind == "poison"
    last.reject(record, record.error_message or "")
    report = json.loads((cam / "rejected" / "crash.png.error.json").read_text())
    assert (report["error_kind"], report["deliveries"]) == ("poison", 3)


def test_a_filesystem_event_wakes_a_waiting_claim(cam: Path, sources: list[FolderSource]) -> None:
    source = _open(sources, cam, watch=True, poll_interval=30, rescan_interval=30)
    assert source._observer is not None, "watchdog could not watch the folder"

    def camera() -> None:
        time.sleep(0.1)
        _write(cam / "late.png.tmp").rename(cam / "late.png")

    threading.Thread(target=camera).start()
    start = time.monotonic()
    [record] = source.claim(1, timeout=10)
    assert record.id == "late.png"
    assert time.monotonic() - start < 3


def test_polling_finds_files_without_events(cam: Path, sources: list[FolderSource]) -> None:
    source = _open(sources, cam, stable_polls=2)
    threading.Timer(0.05, lambda: _write(cam / "polled.png")).start()
    [record] = source.claim(1, timeout=3)
    assert record.id == "polled.png"


def test_bad_configuration_says_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        FolderSource(tmp_path / "missing")
    with pytest.raises(ConfigError, match="'move'"):
        FolderSource(tmp_path, after="keep")  # type: ignore[arg-type]


def test_open_source_builds_a_folder_source(cam: Path) -> None:
    source = open_source(f"folder:{cam}", line="L1", camera="c1", watch=False, stable_polls=1)
    try:
        assert isinstance(source, FolderSource)
        assert isinstance(source, Source)
        _write(cam / "a.png")
        [record] = source.claim(1)
        assert (record.line, record.camera) == ("L1", "c1")
    finally:
        source.close()


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("ftp://host/x", "unknown image source"),
        ("/some/folder", "unknown image source"),
        ("folder:", "names no folder"),
        ("redis:line1", "no Redis server is configured"),
        ("redis://127.0.0.1:6379/15", r"add \?stream=NAME"),
    ],
)
def test_open_source_refuses_unknown_specs(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_source(spec)


def test_importing_sources_pulls_in_neither_redis_nor_watchdog() -> None:
    code = (
        "import sys, defectscan.sources as s; "
        "bad = [m for m in ('redis', 'watchdog', 'torch', 'cv2', 'sqlalchemy') "
        "if m in sys.modules]; assert not bad, bad; s.FolderSource; "
        "assert 'redis' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- issue 16


def test_an_uncharged_release_does_not_count_toward_poison(
    cam: Path, sources: list[FolderSource]
) -> None:
    source = _open(sources, cam, max_deliveries=2)
    _write(cam / "good.png")
    for _ in range(5):  # the archive volume is full, again and again: not the image's fault
        [record] = source.claim(1)
        assert (record.deliveries, record.error_kind) == (1, None)
        source.release([record], "archive full", charge=False)
    [record] = source.claim(1)
    source.release([record], "decoder crashed")  # charged
    [record] = source.claim(1)
    assert (record.deliveries, record.error_kind) == (2, None)


def test_the_source_key_is_the_camera_file_at_claim_time(
    cam: Path, sources: list[FolderSource]
) -> None:
    _write(cam / "a.png", b"same bytes", age=10)
    _write(cam / "b.png", b"same bytes", age=10)
    source = _open(sources, cam)
    records = {r.meta["original"]: r for r in source.claim(2)}
    st = (cam / "processing" / "a.png").stat()
    assert (
        records["a.png"].source_key == f"folder:{cam.resolve()}/a.png:{st.st_size}:{st.st_mtime_ns}"
    )
    assert records["a.png"].source_key != records["b.png"].source_key  # identical bytes
    source.close()  # a crash or stop: the files are delivered again ...
    again = {r.meta["original"]: r.source_key for r in _open(sources, cam).claim(2)}
    assert again == {name: r.source_key for name, r in records.items()}  # ... as the same


def test_the_same_name_written_again_is_a_new_delivery(
    cam: Path, sources: list[FolderSource]
) -> None:
    source = _open(sources, cam)
    _write(cam / "frame.png", b"part one", age=20)
    [first] = source.claim(1)
    source.ack([first])
    _write(cam / "frame.png", b"part two", age=10)  # the camera reuses its file names
    [second] = source.claim(1)
    assert first.source_key != second.source_key


def test_folder_sources_keep_the_whole_protocol(cam: Path, sources: list[FolderSource]) -> None:
    source = _open(sources, cam)
    assert isinstance(source, Source)
    _write(cam / "x.png")
    records = source.claim(1)
    source.renew(records)  # nothing to renew: the owner lock holds the claim
    source.ack(records)


def test_an_unwritable_done_folder_is_a_fault_of_the_plant(
    cam: Path, sources: list[FolderSource]
) -> None:
    from defectscan.errors import PlantFault

    source = _open(sources, cam)
    _write(cam / "x.png")
    [record] = source.claim(1)
    (cam / "done").rmdir()
    (cam / "done").write_text("a file where done/ should be")  # as unwritable as it gets
    with pytest.raises(PlantFault, match="check permissions and free space"):
        source.ack([record])
    assert _files(cam / "processing") == ["x.png"]  # kept: delivered again, not charged


def test_source_path_records_are_read_without_following_symlinks(tmp_path: Path) -> None:
    from defectscan.sources.base import read_file_safely

    (tmp_path / "real.png").write_bytes(b"bytes")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    os.mkfifo(tmp_path / "fifo.png")
    assert read_file_safely(tmp_path / "real.png", max_bytes=5) == b"bytes"
    for name, kind in (("link.png", "path"), ("fifo.png", "path"), ("real.png", "too_large")):
        with pytest.raises(RejectedInputError) as info:
            read_file_safely(tmp_path / name, root=tmp_path, max_bytes=4)
        assert info.value.kind == kind, name
    with pytest.raises(RejectedInputError, match="not beneath"):
        read_file_safely(tmp_path / "real.png", root=tmp_path / "elsewhere")
    record = ImageRecord(
        id="x", uri="file:///x", path=tmp_path / "link.png", meta={"nofollow": True}
    )
    with pytest.raises(RejectedInputError, match="symbolic link"):
        record.read()
    # a path a user names on the command line may be a symlink: that is theirs to use
    assert ImageRecord.from_path(tmp_path / "link.png").read() == b"bytes"


def test_a_watched_file_is_taken_as_soon_as_its_writer_closes_it(
    cam: Path, sources: list[FolderSource]
) -> None:
    """Latency: no waiting for stable polls once the writer closed the file (close-write)."""
    # Polls 30 s apart: without the close event a file would wait at least that long.
    source = _open(sources, cam, stable_polls=2, poll_interval=30.0, rescan_interval=30.0,
                   watch=True)  # fmt: skip
    if source._observer is None:
        pytest.skip("no inotify watch here")
    with (cam / "a.png").open("wb") as f:
        f.write(b"first half ")
        f.flush()
        # still open for writing: not taken
        assert source.claim(1, timeout=0.3) == []
        f.write(b"second half")
    t0 = time.monotonic()
    [record] = source.claim(1, timeout=5)
    assert time.monotonic() - t0 < 5
    assert record.read() == b"first half second half"
    # renamed into the folder by the camera (*.tmp then rename): at once too
    _write(cam / "b.png.tmp")
    os.replace(cam / "b.png.tmp", cam / "b.png")
    [renamed] = source.claim(1, timeout=5)
    assert renamed.id == "b.png"
    # a file changed after its close is not taken on the strength of that close
    path = _write(cam / "c.png", b"one")
    time.sleep(0.05)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b" two")  # written, not closed yet
    try:
        assert source.claim(1, timeout=0.3) == []
    finally:
        os.close(fd)
    [grown] = source.claim(1, timeout=5)
    assert grown.read() == b"one two"


def test_take_closed_off_waits_for_stable_polls(cam: Path, sources: list[FolderSource]) -> None:
    source = _open(sources, cam, stable_polls=2, poll_interval=30.0, rescan_interval=30.0,
                   watch=True, take_closed=False)  # fmt: skip
    _write(cam / "a.png")
    assert source.claim(1, timeout=0.5) == []
