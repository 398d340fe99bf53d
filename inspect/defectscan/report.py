"""What a person looks at: mask PNGs, overlays with a legend, HTML and markdown summaries."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from defectscan.batch_records import BatchReport
from defectscan.imaging import DecodedImage, write_image
from defectscan.pipeline import InspectionResult
from defectscan.postprocess import Defect

__all__ = [
    "batch_report_html",
    "class_color",
    "class_table",
    "html_report",
    "overlay",
    "summary_markdown",
    "write_mask",
    "write_png",
    "write_result_images",
]

# BGR, chosen to stay distinguishable on gray industrial surfaces and for common colour blindness.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 255),  # red
    (0, 200, 255),  # amber
    (255, 128, 0),  # blue
    (255, 0, 255),  # magenta
    (0, 255, 0),  # green
    (255, 255, 0),  # cyan
    (128, 0, 255),  # pink
    (0, 128, 128),  # olive
)


def class_color(class_index: int) -> tuple[int, int, int]:
    """The BGR colour of class ``class_index`` (1-based) in overlays and legends."""
    return _PALETTE[(class_index - 1) % len(_PALETTE)]


def _display_bgr(image: DecodedImage | np.ndarray) -> np.ndarray:
    px = image.pixels if isinstance(image, DecodedImage) else image
    if px.dtype == np.uint16:
        px = (px >> 8).astype(np.uint8)
    if px.ndim == 2:
        return cv2.cvtColor(px, cv2.COLOR_GRAY2BGR)
    if px.shape[2] == 4:
        return cv2.cvtColor(px, cv2.COLOR_BGRA2BGR)
    return px.copy()


def overlay(
    image: DecodedImage | np.ndarray,
    class_map: np.ndarray,
    defects: Sequence[Defect],
    class_names: Sequence[str],
    *,
    alpha: float = 0.35,
) -> np.ndarray:
    """The image (8-bit BGR) with defect areas tinted, contours drawn and a legend, per class."""
    canvas = _display_bgr(image)
    h, w = canvas.shape[:2]
    if class_map.shape != (h, w):
        msg = f"class map {class_map.shape} does not match the image {(h, w)}"
        raise ValueError(msg)
    if class_map.any():
        lut = np.zeros((256, 3), np.uint8)
        for i in range(1, len(class_names) + 1):
            lut[i] = class_color(i)
        tint = lut[class_map]
        sel = class_map > 0
        canvas[sel] = (canvas[sel] * (1 - alpha) + tint[sel] * alpha).astype(np.uint8)
    thickness = max(1, round(min(h, w) / 300))
    for d in defects:
        pts = np.asarray(d.polygon, np.int32).reshape(-1, 1, 2)
        if len(pts):
            cv2.polylines(canvas, [pts], True, class_color(d.class_index), thickness, cv2.LINE_AA)
    _legend(canvas, defects, class_names)
    return canvas


def _legend(canvas: np.ndarray, defects: Sequence[Defect], class_names: Sequence[str]) -> None:
    counts = [0] * len(class_names)
    for d in defects:
        counts[d.class_index - 1] += 1
    h, w = canvas.shape[:2]
    scale = max(0.35, min(h, w) / 900)
    row = int(22 * scale / 0.5)
    lines = [f"{name}: {n}" for name, n in zip(class_names, counts, strict=True)]
    box_w = max(cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for s in lines)
    box_w += row + 12
    box_h = row * len(lines) + 8
    x0, y0 = 4, 4
    sub = canvas[y0 : y0 + box_h, x0 : x0 + box_w]
    sub[:] = (sub * 0.4).astype(np.uint8)  # darken behind the text so it stays readable
    for i, (text, idx) in enumerate(zip(lines, range(1, len(lines) + 1), strict=True)):
        y = y0 + 4 + i * row
        cv2.rectangle(canvas, (x0 + 4, y + 2), (x0 + row - 2, y + row - 4), class_color(idx), -1)
        cv2.putText(
            canvas,
            text,
            (x0 + row + 4, y + row - 6),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a PNG atomically so a watcher never sees half a file."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        msg = f"{path.name}: masks and overlays are written as .png"
        raise ValueError(msg)
    return write_image(path, array)


def write_mask(path: str | Path, class_map: np.ndarray) -> Path:
    """The class map as a PNG: pixel value = class index, 0 = background, input size."""
    if class_map.dtype != np.uint8 or class_map.ndim != 2:
        msg = f"a class map is uint8 [H, W], got {class_map.dtype} {class_map.shape}"
        raise ValueError(msg)
    return write_png(path, class_map)


def write_result_images(
    result: InspectionResult, out: str | Path, stem: str, class_names: Sequence[str]
) -> tuple[Path, Path]:
    """``<stem>.mask.png`` and ``<stem>.overlay.png`` of an inspected (``ok``) result.

    The result must have been inspected with ``keep_images=True`` (the overlay needs pixels).
    """
    if result.class_map is None or result.image is None:
        msg = (
            f"{result.record.id}: no class map or image to draw (status {result.status}; "
            f"inspect with keep_images=True)"
        )
        raise ValueError(msg)
    out = Path(out)
    mask_path = write_mask(out / f"{stem}.mask.png", result.class_map)
    picture = overlay(result.image, result.class_map, result.defects, class_names)
    return mask_path, write_png(out / f"{stem}.overlay.png", picture)


def html_report(rows: Sequence[dict[str, object]], path: str | Path, *, title: str) -> Path:
    """A self-contained HTML page: one row per inspection with its overlay (relative links)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = []
    for r in rows:
        overlay_path = r.get("overlay")
        img = ""
        if isinstance(overlay_path, str):
            rel = os.path.relpath(overlay_path, path.parent)
            img = f'<img src="{html.escape(rel)}" width="256">'
        verdict = html.escape(str(r.get("verdict") or r.get("status")))
        defects = r.get("defects")
        summary = ", ".join(
            f"{d['class']} ({d['area']} px)"
            for d in (defects if isinstance(defects, list) else [])
            if isinstance(d, dict)
        )
        body.append(
            f"<tr><td>{html.escape(str(r.get('path')))}</td><td class='{verdict}'>{verdict}</td>"
            f"<td>{html.escape(summary)}</td><td>{img}</td></tr>"
        )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}td{padding:4px;vertical-align:top}"
        ".fail{color:#b00;font-weight:bold}.pass{color:#070}.rejected{color:#a60}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><table>"
        "<tr><th>image</th><th>verdict</th><th>defects</th><th>overlay</th></tr>"
        + "".join(body)
        + "</table></body></html>"
    )
    path.write_text(page, encoding="utf-8")
    return path


_BATCH_CSS = """
body{font-family:'DejaVu Sans',Arial,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#555;font-size:13px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:110px}
.card b{display:block;font-size:24px}.card span{font-size:12px;color:#555}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:4px 10px;font-size:13px;text-align:left}
td.num{text-align:right}
.bar{display:inline-block;height:10px;background:#c33;vertical-align:middle;margin-right:6px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;
vertical-align:middle}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px;width:240px}
figure img{width:100%;height:auto;display:block;image-rendering:pixelated}
figcaption{font-size:12px;margin-top:4px;word-break:break-all}
.fail{color:#b00;font-weight:bold}.pass{color:#070}.rejected{color:#a60;font-weight:bold}
.coverage{background:#fff4d6;border:1px solid #e0b84c;border-radius:6px;padding:8px 12px;
max-width:900px}
"""


def _pct(value: object, n: object = None) -> str:
    """A rate with the number of parts it is computed on: ``12.5% of 8``."""
    of = "" if n is None else f" of {n}"
    return ("-" if value is None else f"{100 * float(value):.1f}%") + of  # type: ignore[arg-type]


def _hex(bgr: tuple[int, int, int]) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


def batch_report_html(report: BatchReport, path: str | Path, *, max_thumbnails: int = 500) -> Path:
    """The HTML report of a batch: summary, per-class counts, rate by camera, overlays, rejects.

    Overlay thumbnails are linked relatively, so the report folder can be moved or served as is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    e = html.escape

    def rel(p: str) -> str:
        return e(os.path.relpath(p, path.parent))

    cards = [
        (len(report.parts), "parts"),
        (report.inspected, "inspected"),
        (report.failed, "failed"),
        (_pct(report.defect_rate, report.inspected), "defect rate"),
        (len(report.rejected), "rejected"),
        (len(report.not_kept), "not seen (image not kept)"),
        (len(report.missing), "not found"),
    ]
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(report.title)}</title><style>{_BATCH_CSS}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
        f"<div class='meta'>model <code>{e(report.model_version)}</code> &middot; "
        f"{e(report.started_at.strftime('%Y-%m-%d %H:%M:%S UTC'))} &middot; "
        f"{report.inserted} new rows, {report.duplicates} already stored</div>",
        "<div class='cards' id='summary'>",
        *(
            f"<div class='card' data-what='{e(label)}'><b>{e(str(value))}</b>"
            f"<span>{e(label)}</span></div>"
            for value, label in cards
        ),
        "</div>",
        *(
            [
                f"<p class='coverage' id='coverage'><b>What this batch could not see:</b> "
                f"{e(report.coverage_note)}</p>"
            ]
            if report.coverage_note
            else []
        ),
        "<h2>Defects per class</h2><table id='per-class'>",
        "<tr><th>class</th><th>defects</th><th>parts</th><th>share of inspected parts</th></tr>",
    ]
    for i, (name, c) in enumerate(report.per_class().items(), start=1):
        out.append(
            f"<tr data-class='{e(name)}'><td><span class='swatch' "
            f"style='background:{_hex(class_color(i))}'></span>{e(name)}</td>"
            f"<td class='num defects'>{c['defects']}</td><td class='num parts'>{c['parts']}</td>"
            f"<td class='num'>{_pct(c['rate'], c['n'])}</td></tr>"
        )
    out += [
        "</table><h2>Defect rate by camera</h2><table id='by-camera'>",
        "<tr><th>camera</th><th>inspected</th><th>failed</th><th>rejected</th><th>rate</th></tr>",
    ]
    for camera, c in report.by_camera().items():
        width = round(100 * float(c["rate"] or 0))
        out.append(
            f"<tr data-camera='{e(camera)}'><td>{e(camera)}</td>"
            f"<td class='num inspected'>{c['inspected']}</td>"
            f"<td class='num failed'>{c['failed']}</td><td class='num'>{c['rejected']}</td>"
            f"<td><span class='bar' style='width:{width}px'></span>{_pct(c['rate'], c['n'])}</td>"
            "</tr>"
        )
    out.append("</table>")
    out.append("<h2>Rejected inputs</h2>")
    if report.rejected or report.missing:
        out.append("<table id='rejected'><tr><th>input</th><th>reason</th></tr>")
        for p in report.rejected:
            out.append(
                f"<tr class='rejected-input'><td>{e(p.uri)}</td>"
                f"<td>{e(str(p.error_kind))}: {e(str(p.error_message))}</td></tr>"
            )
        for m in report.missing:
            out.append(
                f"<tr class='missing-input'><td>{e(m.ref)}</td>"
                f"<td>not found: {e(m.reason)}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p>None.</p>")
    if report.not_kept:
        out.append(
            f"<h2>Not seen: images not kept ({len(report.not_kept)}, in no rate)</h2>"
            "<table id='not-kept'><tr><th>part</th><th>stored verdict</th><th>why</th></tr>"
        )
        for n in report.not_kept[:max_thumbnails]:
            out.append(
                f"<tr class='not-kept'><td>{e(n.ref)}</td><td>{e(str(n.stored or '-'))}</td>"
                f"<td>{e(n.reason)}</td></tr>"
            )
        if len(report.not_kept) > max_thumbnails:
            out.append(
                f"<tr><td colspan='3'>... and {len(report.not_kept) - max_thumbnails} "
                "more</td></tr>"
            )
        out.append("</table>")
    worst = {p.sha256 for p in report.worst()}
    shown = sorted(
        (p for p in report.parts if p.thumbnail),
        key=lambda p: (p.verdict != "fail", -p.defect_area, p.uri),
    )[:max_thumbnails]
    out.append(f"<h2>Parts ({len(shown)} overlays, failed first)</h2><div class='grid'>")
    for p in shown:
        assert p.thumbnail is not None
        defects = ", ".join(f"{n} {c}" for c, n in sorted(p.classes.items())) or "no defects"
        verdict = p.verdict or p.status
        star = " &#9733; worst" if p.sha256 in worst else ""
        out.append(
            f"<figure data-sha256='{e(p.sha256)}' data-verdict='{e(verdict)}'>"
            f"<img src='{rel(p.thumbnail)}' alt='{e(p.uri)}'>"
            f"<figcaption><span class='{e(verdict)}'>{e(verdict)}</span>{star} &middot; "
            f"{e(p.camera or '-')} &middot; {e(defects)}<br>{e(os.path.basename(p.uri))}"
            "</figcaption></figure>"
        )
    out.append("</div></body></html>")
    path.write_text("\n".join(out), encoding="utf-8")
    return path


def class_table(report: BatchReport) -> list[dict[str, Any]]:
    """Rows of the per-class table: class, defects, parts, rate over n (and a total row)."""
    rows: list[dict[str, Any]] = [
        {
            "class": name,
            "defects": c["defects"],
            "parts": c["parts"],
            "rate": _pct(c["rate"], c["n"]),
        }
        for name, c in report.per_class().items()
    ]
    rows.append(
        {
            "class": "any (failed parts)",
            "defects": sum(p.n_defects for p in report.parts),
            "parts": report.failed,
            "rate": _pct(report.defect_rate, report.inspected),
        }
    )
    if report.not_kept:
        rows.append(
            {
                "class": "not seen (images not kept; in no rate)",
                "defects": None,
                "parts": len(report.not_kept),
                "rate": "-",
            }
        )
    return rows


def summary_markdown(report: BatchReport, *, worst: int = 10) -> str:
    """A markdown summary: counts, what was not seen, rate by camera, the worst parts, rejects."""
    lines = [
        f"# {report.title}",
        "",
        f"Model `{report.model_version}`; {report.inputs} selected, {len(report.parts)} parts "
        f"seen: {report.inspected} inspected, {report.failed} failed "
        f"({_pct(report.defect_rate, report.inspected)}), {len(report.rejected)} rejected; "
        f"{len(report.not_kept)} not seen (images not kept), {len(report.missing)} not found. "
        f"New rows {report.inserted}, already stored {report.duplicates}.",
    ]
    if report.coverage_note:
        lines += ["", f"**What this batch could not see:** {report.coverage_note}"]
    lines += [
        "",
        "## Defect rate by camera",
        "",
        "| camera | inspected | failed | rejected | rate |",
        "|---|---:|---:|---:|---:|",
    ]
    for camera, c in report.by_camera().items():
        lines.append(
            f"| {camera} | {c['inspected']} | {c['failed']} | {c['rejected']} "
            f"| {_pct(c['rate'], c['n'])} |"
        )
    lines += ["", f"## Worst parts (top {worst})", ""]
    bad = report.worst(worst)
    if bad:
        lines += ["| part | camera | defects | area px | max score |", "|---|---|---:|---:|---:|"]
        lines += [
            f"| `{p.uri}` | {p.camera or '-'} | "
            + ", ".join(f"{n} {c}" for c, n in sorted(p.classes.items()))
            + f" | {p.defect_area} | {p.max_score:.2f} |"
            for p in bad
        ]
    else:
        lines.append("No failed parts.")
    if report.rejected or report.missing:
        lines += ["", "## Rejected inputs", ""]
        lines += [f"- `{p.uri}`: {p.error_kind}: {p.error_message}" for p in report.rejected]
        lines += [f"- `{m.ref}`: not found: {m.reason}" for m in report.missing]
    if report.report_path is not None:
        lines += ["", f"Report: `{report.report_path}`"]
    return "\n".join(lines) + "\n"
