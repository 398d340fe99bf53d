"""The pipeline finds known defects exactly: positions, areas, classes, verdicts, order."""

from __future__ import annotations

import numpy as np
import pytest

from defectscan.config import LineConfig
from defectscan.model.backends import TorchBackend
from defectscan.pipeline import ImageRecord, Inspector
from helpers.images import encode, gray_frame
from helpers.oracle import oracle_unet


def _inspector(activation: str = "sigmoid", **kw: object) -> Inspector:
    net, spec = oracle_unet(activation, tile=64, overlap=16)
    backend = TorchBackend(net, spec.activation, device="cpu", precision="fp32")
    return Inspector(backend, spec, model_version="oracle-1", **kw)  # type: ignore[arg-type]


def _record(name: str, data: bytes, **kw: object) -> ImageRecord:
    return ImageRecord(id=name, uri=f"mem://{name}", data=data, **kw)  # type: ignore[arg-type]


def test_sigmoid_model_finds_each_defect_exactly() -> None:
    frame = gray_frame(rects=((30, 40, 40, 20),), discs=((220, 130, 12),))
    result = _inspector(batch_size=5).inspect_one(_record("a", encode(frame.image)))
    assert result.status == "ok"
    assert result.verdict == "fail"
    assert result.class_map is not None
    np.testing.assert_array_equal(result.class_map, frame.truth)
    rect, disc = sorted(result.defects, key=lambda d: d.bbox[0])
    assert rect.class_name == "dark"
    assert rect.class_index == 1
    assert rect.bbox == (30, 40, 40, 20)
    assert rect.area == 800
    assert rect.centroid == pytest.approx((49.5, 49.5))
    assert rect.perimeter == pytest.approx(2 * (39 + 19))
    assert rect.mean_score > 0.99
    assert disc.bbox == (208, 118, 25, 25)
    assert disc.area == int((frame.truth[100:160, 190:250] == 1).sum())
    assert disc.centroid == pytest.approx((220, 130), abs=0.01)
    xs = [p[0] for p in disc.polygon]
    assert min(xs) == 208
    assert max(xs) == 232
    assert (result.width, result.height, result.channels) == (300, 200, 1)


def test_softmax_model_separates_classes() -> None:
    frame = gray_frame(rects=((10, 10, 30, 30),), discs=(), bright_rects=((150, 100, 50, 60),))
    result = _inspector("softmax").inspect_one(_record("b", encode(frame.image)))
    np.testing.assert_array_equal(result.class_map, frame.truth)
    got = {(d.class_name, d.class_index, d.bbox, d.area) for d in result.defects}
    assert got == {("dark", 1, (10, 10, 30, 30), 900), ("bright", 2, (150, 100, 50, 60), 3000)}


def test_clean_part_passes() -> None:
    frame = gray_frame(rects=(), discs=())
    result = _inspector().inspect_one(_record("c", encode(frame.image)))
    assert result.verdict == "pass"
    assert result.defects == []
    assert result.class_map is not None
    assert not result.class_map.any()


def test_many_frames_batch_across_images_keep_order_and_reject_bad_input() -> None:
    frames = [
        gray_frame(37, 41, rects=((5, 5, 6, 7),), discs=()),  # smaller than a tile
        gray_frame(64, 64, rects=(), discs=()),  # exactly one tile
        gray_frame(150, 410, rects=((300, 100, 20, 30),), discs=((60, 60, 9),)),
    ]
    records = [
        _record("small", encode(frames[0].image)),
        _record("tile", encode(frames[1].image, ".bmp")),
        _record("broken", b"not an image at all"),
        _record("wide", encode(frames[2].image, ".tiff")),
        _record("empty", b""),
    ]
    results = list(_inspector(batch_size=3).inspect(records))
    assert [r.record.id for r in results] == ["small", "tile", "broken", "wide", "empty"]
    assert [r.status for r in results] == ["ok", "ok", "rejected", "ok", "rejected"]
    assert results[2].error_kind == "not_an_image"
    assert results[4].error_kind == "empty"
    assert results[2].model_version == "oracle-1"
    # rows of byte-less rejects are keyed on their source: two empty files are two rows
    empty_again = next(_inspector().inspect([_record("empty2", b"")]))
    assert empty_again.sha256 != results[4].sha256
    for r, f in zip((results[0], results[1], results[3]), frames, strict=True):
        np.testing.assert_array_equal(r.class_map, f.truth)
    assert [d.bbox for d in results[0].defects] == [(5, 5, 6, 7)]
    assert [r.verdict for r in results] == ["fail", "pass", None, "fail", None]


def test_16bit_and_colour_inputs_give_the_same_masks() -> None:
    frame = gray_frame()
    inspector = _inspector()
    as16 = (frame.image.astype(np.uint16) * 257).astype(np.uint16)
    bgr = np.repeat(frame.image[:, :, None], 3, axis=2)
    for data in (encode(as16), encode(bgr, ".png")):
        result = inspector.inspect_one(_record("x", data))
        np.testing.assert_array_equal(result.class_map, frame.truth)


def test_line_config_overrides_min_area_and_fail_rules() -> None:
    frame = gray_frame(rects=((30, 40, 5, 5),), discs=((200, 100, 10),))
    lines = {
        "L2": LineConfig(name="L2", min_area={"dark": 50}),
        "L3": LineConfig(name="L3", fail_area={"dark": 10_000}),
    }
    inspector = _inspector(lines=lines)
    data = encode(frame.image)
    base = inspector.inspect_one(_record("a", data))
    l2 = inspector.inspect_one(_record("a", data, line="L2"))
    l3 = inspector.inspect_one(_record("a", data, line="L3"))
    assert len(base.defects) == 2
    assert [d.bbox[:2] for d in l2.defects] == [(190, 90)]  # the 25 px square is dropped
    assert l2.class_map is not None
    assert not l2.class_map[40:45, 30:35].any()
    assert l3.verdict == "pass"  # defects found and stored, but too small to fail the part
    assert len(l3.defects) == 2


def test_default_precision_bf16_keeps_clear_defects() -> None:
    net, spec = oracle_unet("sigmoid", tile=64, overlap=16)
    inspector = Inspector(TorchBackend(net, "sigmoid", device="cpu"), spec, model_version="v")
    frame = gray_frame()
    result = inspector.inspect_one(_record("a", encode(frame.image)))
    np.testing.assert_array_equal(result.class_map, frame.truth)


def test_results_carry_hash_timings_and_store_rows() -> None:
    frame = gray_frame()
    data = encode(frame.image)
    result = _inspector().inspect_one(_record("a", data, camera="cam1", line="L1"))
    import hashlib

    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert set(result.timings_ms) == {"decode", "infer", "post", "total"}
    assert result.timings_ms["total"] >= result.timings_ms["infer"] > 0
    row = result.to_store_record(mask_path="m.png")
    assert row.sha256 == result.sha256
    assert row.model_version == "oracle-1"
    assert (row.camera, row.line, row.status, row.verdict) == ("cam1", "L1", "ok", "fail")
    assert [d.bbox for d in row.defects] == [d.bbox for d in result.defects]
    payload = result.to_dict()
    assert payload["defects"][0]["class"] == "dark"
    assert payload["defects"][0]["bbox"] == [30, 40, 40, 20]
