"""The console in a real browser (Debian's chromium under Playwright): the flows an operator
and an engineer go through, checked in the database; screenshots at desktop and tablet widths."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import pytest
import sqlalchemy as sa

from helpers.console import H, W

from .conftest import DESKTOP, TABLET, Console, log_in


def _rows(console: Console, sql: str, **params: Any) -> list[Any]:
    with console.sessions() as s:
        return list(s.execute(sa.text(sql), params).all())


def test_log_in_and_out(page: Any, console: Console) -> None:
    page.goto("/inspections")
    assert "/login" in page.url  # no session: the login page
    page.fill("#username", "viewer")
    page.fill("#password", "wrong password")
    page.click("#login")
    assert "wrong user name or password" in page.content()
    log_in(page, "viewer")
    assert page.text_content("#whoami").strip().startswith("viewer")
    page.click("#logout")
    page.wait_for_url("**/login")
    page.goto("/lines")
    assert "/login" in page.url
    assert _rows(console, "SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL")[0][0] == 1


@pytest.mark.usefixtures("console")
def test_a_viewer_is_refused_an_action(page: Any, console: Console) -> None:
    log_in(page, "viewer")
    assert page.locator("button.pause").count() == 0  # no pause button for a viewer
    page.goto(f"/review/{console.seeded.fails[0]}")
    assert "may look but not review" in page.content()
    assert page.locator("#accept").count() == 0
    # the form a viewer cannot see, posted anyway with the viewer's own CSRF token
    status = page.evaluate(
        """async () => {
            const token = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token'];
            const r = await fetch('/lines/L1/pause', {method: 'POST',
                headers: {'X-CSRF-Token': token}});
            return r.status;
        }"""
    )
    assert status == 403
    assert _rows(console, "SELECT count(*) FROM line_controls")[0][0] == 0


def test_filter_the_gallery(page: Any, console: Console, screenshot_dir: Path) -> None:
    log_in(page, "viewer")
    page.goto("/inspections")
    assert page.locator("a.thumb").count() == len(console.seeded.ids)
    page.select_option("#f-verdict", "fail")
    page.click("#apply-filters")
    page.wait_for_url("**verdict=fail**")
    verdicts = page.eval_on_selector_all("a.thumb", "els => els.map(e => e.dataset.verdict)")
    assert verdicts == ["fail"] * len(console.seeded.fails)
    page.select_option("#f-class", "dent")
    page.click("#apply-filters")
    page.wait_for_url("**class_name=dent**")
    assert 0 < page.locator("a.thumb").count() < len(console.seeded.fails)
    # every thumbnail loaded (served by sha256, drawn with its overlay)
    widths = page.eval_on_selector_all("a.thumb img", "els => els.map(e => e.naturalWidth)")
    assert widths
    assert all(w > 0 for w in widths)
    page.screenshot(path=str(screenshot_dir / "gallery-desktop.png"), full_page=True)


def test_open_a_detail_and_toggle_the_overlay(
    page: Any, console: Console, screenshot_dir: Path
) -> None:
    log_in(page, "viewer")
    page.goto("/inspections")
    i = console.seeded.fails[0]
    page.click(f'a.thumb[data-id="{i}"]')
    page.wait_for_url(f"**/inspections/{i}")
    overlay = page.locator("#overlay-image")
    page.wait_for_function("document.getElementById('base-image').naturalWidth > 0")
    assert overlay.is_visible()
    assert (
        page.evaluate("getComputedStyle(document.getElementById('overlay-image')).opacity") == "0.5"
    )
    page.fill("#overlay-opacity", "80")
    assert (
        page.evaluate("getComputedStyle(document.getElementById('overlay-image')).opacity") == "0.8"
    )
    page.uncheck("#overlay-toggle")
    assert not overlay.is_visible()
    page.check("#overlay-toggle")
    assert overlay.is_visible()
    for name, size in (("desktop", DESKTOP), ("tablet", TABLET)):
        page.set_viewport_size(size)
        page.screenshot(path=str(screenshot_dir / f"detail-{name}.png"), full_page=True)


def _paint(page: Any, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through ``points`` given in image pixels."""
    box = page.locator("#paint").bounding_box()
    sx, sy = box["width"] / W, box["height"] / H
    x0, y0 = points[0]
    page.mouse.move(box["x"] + x0 * sx, box["y"] + y0 * sy)
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x * sx, box["y"] + y * sy, steps=4)
    page.mouse.up()


def test_paint_a_correction_and_save_it(page: Any, console: Console, screenshot_dir: Path) -> None:
    log_in(page, "operator")
    i = console.seeded.fails[0]
    page.goto(f"/review/{i}")
    page.wait_for_selector("#review[data-ready='1']")
    page.select_option("#brush-class", "2")
    page.fill("#brush-size", "6")
    _paint(page, [(40, 30), (55, 30)])  # a dent stroke the model missed
    page.click("#tool-eraser")
    _paint(page, [(5, 40), (6, 40)])  # an eraser stroke where nothing was
    page.keyboard.press("u")  # undo the eraser stroke
    page.click("#tool-eraser")
    page.fill("#brush-size", "24")
    _paint(page, [(14, 13), (15, 14)])  # erase the model's scratch
    assert "painted (2 strokes)" in page.text_content("#paint-state")
    page.fill("#comment", "scratch is dust; dent missed")
    page.screenshot(path=str(screenshot_dir / "review-desktop.png"), full_page=True)
    page.click("#accept")
    page.wait_for_url(f"**/inspections/{i}")
    [(decision, operator, note, mask_path, details)] = _rows(
        console,
        "SELECT decision, operator, note, corrected_mask_path, details FROM reviews "
        "WHERE inspection_id = :i",
        i=i,
    )
    assert (decision, operator, note) == ("reject", "operator", "scratch is dust; dent missed")
    mask = cv2.imread(mask_path, cv2.IMREAD_UNCHANGED)
    assert mask.shape == (H, W)
    assert mask[30, 47] == 2  # painted: the dent class on the stroke
    assert mask[30, 30] == 0  # untouched background stays background
    assert mask[13, 14] == 0  # the scratch was erased
    assert mask[40, 5] == 0  # the undone eraser stroke left nothing to see either way
    details = details if isinstance(details, dict) else json.loads(details)
    assert [d["class"] for d in details["defects"]] == ["dent"]
    assert details["defects"][0]["area"] == int((mask == 2).sum())
    assert "mask corrected (1 regions)" in page.content()


def test_walk_the_review_queue_by_keyboard(page: Any, console: Console) -> None:
    log_in(page, "operator")
    page.goto("/queue")
    first = int(page.get_attribute("tr.queue-item", "data-id"))
    second = int(page.locator("tr.queue-item").nth(1).get_attribute("data-id"))
    third = int(page.locator("tr.queue-item").nth(2).get_attribute("data-id"))
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/review/{first}?queue=1")
    page.wait_for_selector("#review[data-ready='1']")
    page.keyboard.press("a")  # accept and save: on to the next
    page.wait_for_url(f"**/review/{second}?queue=1")
    page.wait_for_selector("#review[data-ready='1']")
    page.keyboard.press("n")  # skip
    page.wait_for_url(f"**/review/{third}?queue=1")
    page.wait_for_selector("#review[data-ready='1']")
    page.keyboard.press("o")  # overrule and save: on to the next after it
    page.wait_for_url(lambda url: f"/review/{third}?" not in url)
    reviews = _rows(console, "SELECT inspection_id, decision, details FROM reviews ORDER BY id")
    assert [(r[0], r[1]) for r in reviews] == [(first, "confirm"), (third, "reject")]
    overruled = reviews[1][2] if isinstance(reviews[1][2], dict) else json.loads(reviews[1][2])
    assert overruled["verdict"] != overruled["model_verdict"]


def test_request_a_retrain(page: Any, console: Console) -> None:
    log_in(page, "operator")
    page.goto("/models")
    page.fill("#retrain-reason", "parts from the new supplier look darker")
    page.click("#retrain")
    page.wait_for_url("**/models?msg=**")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = _rows(console, "SELECT trigger, requested_by, reason, status FROM training_runs")
        if rows and rows[0][3] != "running":
            break
        time.sleep(0.3)
    assert rows[0][:3] == ("operator", "operator", "parts from the new supplier look darker")
    page.goto("/models")
    assert page.text_content("tr[data-run] .requester").strip() == "operator"
    assert "look darker" in page.text_content("tr[data-run] .reason")


def test_promote_and_roll_back_as_an_engineer(page: Any, console: Console) -> None:
    from defectscan.store.model_versions import ensure_model_version

    with console.sessions.begin() as s:
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
    log_in(page, "engineer")
    page.goto("/models")
    row = page.locator('tr[data-version="unet-console-candidate"]')
    row.locator("input[name=force]").check()
    row.locator("input[name=reason]").fill("trial on line 1")
    row.locator("button.promote").click()
    page.wait_for_url("**/models?msg=**")
    assert page.text_content('tr[data-version="unet-console-candidate"] .status') == "champion"
    page.click('tr[data-version="unet-console-candidate"] button.rollback')
    page.wait_for_url("**/models?msg=**")
    assert "rolled back" in page.content()
    assert page.text_content('tr[data-version="unet-console-0123456789ab"] .status') == "champion"
    audit = _rows(console, "SELECT who, action FROM audit WHERE action IN ('promote', 'rollback')")
    assert audit == [("engineer", "promote"), ("engineer", "rollback")]


def test_pause_and_resume_a_line(page: Any, console: Console, screenshot_dir: Path) -> None:
    log_in(page, "operator")
    page.click('button.pause[data-line="L1"]')
    page.wait_for_url("**/lines?msg=**")
    assert page.text_content('article[data-line="L1"] [data-testid=state]') == "paused"
    for name, size in (("desktop", DESKTOP), ("tablet", TABLET)):
        page.set_viewport_size(size)
        page.screenshot(path=str(screenshot_dir / f"lines-{name}.png"), full_page=True)
    assert _rows(console, "SELECT paused, changed_by FROM line_controls") == [(True, "operator")]
    page.click('button.resume[data-line="L1"]')
    page.wait_for_url("**/lines?msg=**")
    assert _rows(console, "SELECT paused FROM line_controls") == [(False,)]
    # the page refreshes itself through htmx (every 5 s): a request to /lines/table goes out
    with page.expect_request("**/lines/table", timeout=12_000):
        pass


def test_a_running_monitor_follows_pause_resume_and_a_threshold(
    page: Any, console: Console, tmp_path: Path
) -> None:
    """``defectscan monitor`` on a camera folder: paused from the page it stops claiming;
    a threshold applied on the page is what it inspects with once resumed."""
    from helpers.line import cli_env, oracle_checkpoint, start_cli, stop, wait_for, write_parts

    camera = tmp_path / "camera"
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    env = cli_env(tmp_path, console.database_url, DEFECTSCAN_CONFIG=str(console.plant))
    env["DEFECTSCAN_VAR_DIR"] = str(console.var_dir)
    for key in [k for k in env if k.startswith("PREFECT_")]:
        del env[key]
    log = tmp_path / "monitor.log"
    monitor = start_cli(
        ["monitor", "--source", f"folder:{camera}", "--model", str(model), "--line", "L1"],
        env,
        log,
    )
    oracle_rows = (
        "SELECT i.verdict FROM inspections i JOIN model_versions m "
        "ON m.id = i.model_version_id WHERE m.name = 'oracle' ORDER BY i.id"
    )
    try:
        write_parts(camera, 3, fail_every=1)  # every part has a dark rectangle
        wait_for(lambda: len(_rows(console, oracle_rows)) == 3, timeout=240, what="the first rows")
        assert [r[0] for r in _rows(console, oracle_rows)] == ["fail"] * 3
        log_in(page, "admin")
        page.click('button.pause[data-line="L1"]')
        page.wait_for_url("**/lines?msg=**")
        wait_for(
            lambda: (
                _rows(console, "SELECT count(*) FROM events WHERE kind = 'monitor_paused'")[0][0]
                == 1
            ),
            timeout=30,
            what="the monitor to see the pause",
        )
        write_parts(camera, 3, start=3, fail_every=1)
        time.sleep(4)  # two of the monitor's polls: it must not claim them
        assert len(_rows(console, oracle_rows)) == 3
        assert len(list(camera.glob("part*.png"))) == 3
        # an engineer's rule: 1 switches the class off, so the dark parts now pass
        page.goto("/thresholds?line=L1&class_name=dark&threshold=1")
        page.fill("#apply-reason", "trial: dark spots are cosmetic")
        page.click("#apply-threshold")
        page.wait_for_url("**/thresholds?**msg=**")
        assert "console rule v1 by admin" in page.content()
        page.goto("/lines")
        page.click('button.resume[data-line="L1"]')
        page.wait_for_url("**/lines?msg=**")
        wait_for(
            lambda: len(_rows(console, oracle_rows)) == 6, timeout=60, what="the parts after resume"
        )
        assert [r[0] for r in _rows(console, oracle_rows)] == ["fail"] * 3 + ["pass"] * 3
        kinds = [k for (k,) in _rows(console, "SELECT kind FROM events ORDER BY id")]
        assert "monitor_resumed" in kinds
        assert "threshold_applied" in kinds
    finally:
        stop(monitor)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
