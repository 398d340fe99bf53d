"""The image archive: content addressing, the keep policy, retention."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from defectscan.archive import ArchiveError, ArchivePolicy, ImageArchive, image_suffix
from helpers.images import encode, gray_frame


def _png(seed: int) -> bytes:
    return encode(gray_frame(64, 80, seed=seed).image)


def test_put_get_by_sha256_is_idempotent_and_verified(tmp_path: Path) -> None:
    archive = ImageArchive(tmp_path / "archive")
    data = _png(1)
    sha = hashlib.sha256(data).hexdigest()
    path = archive.put(data)
    assert path == archive.path(sha)
    assert path.parent.parent.name == sha[:2]
    assert path.parent.name == sha[2:4]
    assert archive.put(data, sha) == path  # the same bytes again: same file, no error
    assert archive.get(sha) == data
    assert archive.has(sha)
    assert archive.usage() == (1, len(data))
    with pytest.raises(ArchiveError, match="hash to"):
        archive.put(data, "0" * 64)
    # a file whose bytes no longer match its name is reported, not served
    path.write_bytes(data[:-10])
    with pytest.raises(ArchiveError, match="corrupt"):
        archive.get(sha)


def test_missing_image_and_bad_digest_say_why(tmp_path: Path) -> None:
    archive = ImageArchive(tmp_path)
    with pytest.raises(ArchiveError, match="not in the archive"):
        archive.get("ab" * 32)
    with pytest.raises(ArchiveError, match="not a sha256"):
        archive.path("../../etc/passwd")


def test_policy_keeps_fails_close_calls_a_stable_share_of_passes_and_rejects() -> None:
    policy = ArchivePolicy(pass_share=0.25, margin=0.1)
    sha = hashlib.sha256(b"x").hexdigest()
    assert policy.reason(sha256=sha, status="ok", verdict="fail", decision_margin=0.9) == "fail"
    assert (
        policy.reason(sha256=sha, status="ok", verdict="pass", decision_margin=0.05)
        == "near_threshold"
    )
    assert policy.reason(sha256=sha, status="rejected", verdict=None, decision_margin=None) == (
        "rejected"
    )
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    kept = [
        s
        for s in shas
        if policy.reason(sha256=s, status="ok", verdict="pass", decision_margin=0.5)
        == "sampled_pass"
    ]
    assert 0.22 < len(kept) / len(shas) < 0.28
    # the same image decides the same way on every delivery
    again = [
        s
        for s in shas
        if policy.reason(sha256=s, status="ok", verdict="pass", decision_margin=0.5) is not None
    ]
    assert again == kept
    none = ArchivePolicy(pass_share=0.0, keep_rejected=False)
    assert none.reason(sha256=sha, status="ok", verdict="pass", decision_margin=0.5) is None
    assert none.reason(sha256=sha, status="rejected", verdict=None, decision_margin=None) is None
    with pytest.raises(ArchiveError):
        ArchivePolicy(pass_share=1.5)


def test_keep_stores_only_what_the_policy_keeps(tmp_path: Path) -> None:
    archive = ImageArchive(tmp_path, ArchivePolicy(pass_share=0.0, margin=0.1))
    fail, ok = _png(1), _png(2)
    fs, os_ = hashlib.sha256(fail).hexdigest(), hashlib.sha256(ok).hexdigest()
    assert archive.keep(fail, sha256=fs, status="ok", verdict="fail") == "fail"
    assert archive.keep(ok, sha256=os_, status="ok", verdict="pass", decision_margin=0.4) is None
    assert archive.has(fs)
    assert not archive.has(os_)


def test_prune_by_age_then_size_oldest_first_sparing_protected(tmp_path: Path) -> None:
    archive = ImageArchive(tmp_path, ArchivePolicy(max_age_days=10, max_bytes=None))
    now = time.time()
    blobs = [_png(i) for i in range(6)]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    for i, b in enumerate(blobs):
        p = archive.put(b)
        age_days = [30, 20, 5, 4, 3, 2][i]
        os.utime(p, (now - age_days * 86400, now - age_days * 86400))
    result = archive.prune(protect=[shas[1]], now=now)
    assert result.removed == 1  # shas[0]; shas[1] is old but protected (an open review)
    assert not archive.has(shas[0])
    assert archive.has(shas[1])

    sizes = {s: len(b) for s, b in zip(shas, blobs, strict=True)}
    budget = sizes[shas[4]] + sizes[shas[5]] + sizes[shas[1]]
    archive.policy = ArchivePolicy(max_age_days=None, max_bytes=budget)
    result = archive.prune(protect=[shas[1]], now=now)
    # oldest unprotected go first (2, 3) until the rest fits
    assert [archive.has(s) for s in shas] == [False, True, False, False, True, True]
    assert result.kept_bytes <= budget


def test_stale_temporary_files_of_crashed_writers_are_swept(tmp_path: Path) -> None:
    archive = ImageArchive(tmp_path)
    path = archive.put(_png(3))
    tmp = path.parent / f".{path.name}.dead.tmp"
    tmp.write_bytes(b"half")
    os.utime(tmp, (time.time() - 7200, time.time() - 7200))
    archive.prune()
    assert not tmp.exists()
    assert path.exists()


def test_image_suffix_by_magic() -> None:
    assert image_suffix(_png(0)) == ".png"
    assert image_suffix(encode(gray_frame(8, 8).image, ".jpg")) == ".jpg"
    assert image_suffix(b"II*\x00rest") == ".tif"
    assert image_suffix(b"nope") == ".bin"
