"""The monitor's /metrics endpoint: scraped over HTTP, parsed, exact values."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from defectscan.metrics import MonitorMetrics


@pytest.fixture
def metrics() -> Iterator[MonitorMetrics]:
    m = MonitorMetrics()
    m.serve(0)
    try:
        yield m
    finally:
        m.stop()


def _scrape(m: MonitorMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def _get(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str):
    return samples.get((name, frozenset(labels.items())))


def test_counters_and_histograms_have_exact_values(metrics: MonitorMetrics) -> None:
    for _ in range(3):
        metrics.observe_result(
            line="L3",
            camera="cam1",
            status="ok",
            verdict="fail",
            error_kind=None,
            defect_classes=["scratch", "scratch", "spot"],
            tiles=4,
            stage_ms={"decode": 2.0, "infer": 40.0, "post": 3.0, "store": 5.0, "total": 50.0},
            capture_to_commit_s=0.75,
        )
    metrics.observe_result(
        line="L3",
        camera="cam1",
        status="ok",
        verdict="pass",
        error_kind=None,
        defect_classes=[],
        tiles=4,
        stage_ms={"decode": 1.0, "infer": 30.0},
        capture_to_commit_s=None,
    )
    metrics.observe_result(
        line="L3",
        camera="cam2",
        status="rejected",
        verdict=None,
        error_kind="truncated",
        defect_classes=[],
        tiles=0,
        stage_ms={"decode": 0.5},
        capture_to_commit_s=2.0,
    )
    metrics.observe_batch(line="L3", size=5, seconds=0.4)
    metrics.set_queue(line="L3", waiting=17, pending=3)
    metrics.set_archive(1_234_567, 89)
    metrics.set_model(line="L3", version="unet-abc", engine="openvino", device="cpu")

    s = _scrape(metrics)
    images = "defectscan_images_total"
    assert _get(s, images, line="L3", camera="cam1", status="ok", verdict="fail") == 3
    assert _get(s, images, line="L3", camera="cam1", status="ok", verdict="pass") == 1
    assert _get(s, images, line="L3", camera="cam2", status="rejected", verdict="none") == 1
    assert _get(s, "defectscan_tiles_total", line="L3") == 16
    assert _get(s, "defectscan_rejected_total", line="L3", reason="truncated") == 1
    assert _get(s, "defectscan_defects_total", line="L3", **{"class": "scratch"}) == 6
    assert _get(s, "defectscan_defects_total", line="L3", **{"class": "spot"}) == 3

    infer_count = _get(s, "defectscan_stage_seconds_count", line="L3", stage="infer")
    infer_sum = _get(s, "defectscan_stage_seconds_sum", line="L3", stage="infer")
    assert infer_count == 4
    assert infer_sum == pytest.approx(0.150)
    assert _get(s, "defectscan_stage_seconds_count", line="L3", stage="decode") == 5
    assert _get(s, "defectscan_stage_seconds_count", line="L3", stage="store") == 3
    # "total" is the sum of the stages, not a stage
    assert _get(s, "defectscan_stage_seconds_count", line="L3", stage="total") is None
    # bucket boundaries: 40 ms falls in le=0.05, 30 ms too; none of them in le=0.025
    assert _get(s, "defectscan_stage_seconds_bucket", line="L3", stage="infer", le="0.025") == 0
    assert _get(s, "defectscan_stage_seconds_bucket", line="L3", stage="infer", le="0.05") == 4

    lag = "defectscan_capture_to_commit_seconds"
    assert _get(s, f"{lag}_count", line="L3") == 4
    assert _get(s, f"{lag}_sum", line="L3") == pytest.approx(3 * 0.75 + 2.0)
    assert _get(s, f"{lag}_bucket", line="L3", le="1.0") == 3

    assert _get(s, "defectscan_batch_seconds_count", line="L3") == 1
    assert _get(s, "defectscan_batch_images_sum", line="L3") == 5
    assert _get(s, "defectscan_queue_waiting", line="L3") == 17
    assert _get(s, "defectscan_queue_pending", line="L3") == 3
    assert _get(s, "defectscan_archive_bytes") == 1_234_567
    assert _get(s, "defectscan_archive_files") == 89
    model = ("defectscan_model_info", "L3", "unet-abc", "openvino", "cpu")
    assert _get(s, model[0], line=model[1], version=model[2], engine=model[3], device=model[4]) == 1


def test_two_monitors_in_one_process_do_not_clash() -> None:
    a, b = MonitorMetrics(), MonitorMetrics()
    a.serve(0)
    b.serve(0)
    try:
        a.set_queue(line="A", waiting=1)
        b.set_queue(line="B", waiting=2)
        sa, sb = _scrape(a), _scrape(b)
        assert _get(sa, "defectscan_queue_waiting", line="A") == 1
        assert _get(sa, "defectscan_queue_waiting", line="B") is None
        assert _get(sb, "defectscan_queue_waiting", line="B") == 2
    finally:
        a.stop()
        b.stop()


def test_stop_frees_the_port_and_serve_twice_is_an_error() -> None:
    m = MonitorMetrics()
    m.serve(0)
    with pytest.raises(RuntimeError, match="already served"):
        m.serve(0)
    m.stop()
    assert m.port is None
    m.stop()  # idempotent


def test_a_port_taken_by_another_monitor_is_an_error_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = MonitorMetrics()
    first.serve(0)
    port = first.port
    assert port is not None
    second = MonitorMetrics()
    try:
        with caplog.at_level("ERROR", logger="defectscan.metrics"):
            assert second.serve(port) is None  # the second monitor on the host: no exception
        assert second.port is None
        assert second.bind_error is not None
        assert f":{port}" in second.bind_error
        assert "metrics_port" in second.bind_error  # says how to fix it
        assert second.bind_error in caplog.text
        second.observe_plant_fault(line="L1", kind="archive")  # still counts, just not served
        second.set_paused(line="L1", paused=True)
        second.set_dead_letter_dropped(line="L1", dropped=3)
    finally:
        first.stop()
        second.stop()


def test_plant_fault_and_pause_metrics(metrics: MonitorMetrics) -> None:
    metrics.observe_plant_fault(line="L3", kind="archive")
    metrics.observe_plant_fault(line="L3", kind="archive")
    metrics.set_paused(line="L3", paused=True)
    metrics.set_dead_letter_dropped(line="L3", dropped=7)
    s = _scrape(metrics)
    assert _get(s, "defectscan_plant_faults_total", line="L3", kind="archive") == 2
    assert _get(s, "defectscan_line_paused", line="L3") == 1
    assert _get(s, "defectscan_dead_letter_dropped", line="L3") == 7
    metrics.set_paused(line="L3", paused=False)
    assert _get(_scrape(metrics), "defectscan_line_paused", line="L3") == 0
