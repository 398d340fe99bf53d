"""``defectscan inspect``: inspect image files and print, write or store what was found.

Exit status: 0 when every input was inspected, 2 when some inputs were rejected (the rest are
still inspected), 1 for usage errors (bad options, missing files, unreadable model).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from defectscan.cli.common import CliUsageError, console, expand_inputs
from defectscan.errors import DefectscanError

__all__ = ["register"]


def _output_names(paths: list[Path]) -> dict[Path, str]:
    """A unique file stem per input for masks/overlays (inputs may share a name)."""
    counts = Counter(p.stem for p in paths)
    names: dict[Path, str] = {}
    used: set[str] = set()
    for p in paths:
        stem = p.stem if counts[p.stem] == 1 else f"{p.parent.name}_{p.stem}"
        base, i = stem, 1
        while stem in used:
            stem = f"{base}-{i}"
            i += 1
        used.add(stem)
        names[p] = stem
    return names


def inspect_cmd(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.")],
    model: Annotated[
        Path, typer.Option("--model", "-m", help="Checkpoint (.safetensors, or a seed .pth).")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write <name>.mask.png / .overlay.png here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON Lines, one per input.")] = (
        False
    ),
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N (default: DEFECTSCAN_DEVICE).")
    ] = None,
    tile_size: Annotated[int | None, typer.Option(min=16, help="Tile size in pixels.")] = None,
    overlap: Annotated[int | None, typer.Option(min=0, help="Tile overlap in pixels.")] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Tiles per inference batch (default: DEFECTSCAN_BATCH_SIZE)."),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="auto (OpenVINO on CPU where installed, torch on CUDA), torch, openvino or "
            "onnxruntime (default: DEFECTSCAN_BACKEND, auto)."
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto, fp32, bf16 or fp16 (default: DEFECTSCAN_PRECISION, auto)."),
    ] = None,
    line: Annotated[str | None, typer.Option(help="Production line (its config applies).")] = None,
    camera: Annotated[str | None, typer.Option(help="Camera name stored with results.")] = None,
    store: Annotated[
        bool, typer.Option("--store/--no-store", help="Save results to DEFECTSCAN_DATABASE_URL.")
    ] = False,
) -> None:
    """Inspect images and print a verdict and the defects of each one."""
    from defectscan.config import get_settings
    from defectscan.pipeline import ImageRecord, InspectionResult, Inspector
    from defectscan.report import write_result_images
    from defectscan.service import inspect_and_store

    settings = get_settings()
    engine = settings.engine_for(line)
    device = device or engine.device
    backend = backend or engine.backend
    precision = precision or engine.precision
    batch_size = batch_size or engine.batch_size
    tile_size, overlap = settings.tiling_for(line, tile_size=tile_size, overlap=overlap)
    inputs = expand_inputs(paths)
    if not inputs:
        msg = "no image files found in the given paths"
        raise CliUsageError(msg)
    if backend not in ("torch", "openvino", "onnxruntime", "auto"):
        msg = f"--backend must be torch, openvino, onnxruntime or auto, not {backend!r}"
        raise CliUsageError(msg)
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        msg = f"--precision must be auto, fp32, bf16 or fp16, not {precision!r}"
        raise CliUsageError(msg)
    try:
        inspector = Inspector.from_checkpoint(
            model,
            backend=backend,  # type: ignore[arg-type]
            device=device,
            precision=precision,  # type: ignore[arg-type]
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            max_pixels=settings.max_pixels,
            lines=settings.lines,
        )
    except DefectscanError as exc:
        raise CliUsageError(str(exc)) from exc
    names = _output_names(inputs)
    records = [ImageRecord.from_path(p, camera=camera, line=line) for p in inputs]
    writer = _open_writer(settings.database_url, inspector) if store else None
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()

    def report(result: InspectionResult) -> tuple[str | None, str | None]:
        path = result.record.path
        assert path is not None
        row = result.to_dict()
        row["path"] = str(path)
        mask_path = overlay_path = None
        if out is not None and result.status == "ok":
            mask_path, overlay_path = write_result_images(
                result, out, names[path], inspector.spec.class_names
            )
            row["mask"], row["overlay"] = str(mask_path), str(overlay_path)
        if as_json:
            sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()
        rows.append(row)
        return (str(mask_path) if mask_path else None, str(overlay_path) if overlay_path else None)

    outcome = inspect_and_store(
        records,
        inspector=inspector,
        writer=writer,
        on_result=report,
        keep_images=out is not None,
    )
    n_rejected = outcome.rejected
    elapsed = time.perf_counter() - started
    if not as_json:
        _print_table(rows, elapsed)
    if out is not None:
        from defectscan.report import html_report

        html_report(rows, out / "report.html", title="defectscan inspection")
    if n_rejected:
        raise typer.Exit(2)


def _open_writer(url: str, inspector: Any) -> Any:
    from defectscan.service import register_model
    from defectscan.store.db import ensure_schema, make_engine
    from defectscan.store.writer import ResultWriter

    engine = make_engine(url)
    ensure_schema(engine)
    writer = ResultWriter(engine)
    register_model(writer, inspector)
    return writer


def _print_table(rows: list[dict[str, Any]], elapsed: float) -> None:
    table = Table(title="defectscan inspect", show_lines=False)
    table.add_column("image", overflow="fold")
    for col in ("status", "verdict", "defects"):
        table.add_column(col, overflow="fold")
    table.add_column("ms", justify="right")
    verdicts: Counter[str] = Counter()
    for r in rows:
        counts = Counter(d["class"] for d in r["defects"])
        defects = ", ".join(f"{n}x {c}" for c, n in sorted(counts.items())) or "-"
        if r["status"] == "rejected":
            defects = f"{r['error']['kind']}: {r['error']['message']}"
        verdict = r["verdict"] or "-"
        verdicts[r["verdict"] or "rejected"] += 1
        style = {"fail": "bold red", "pass": "green"}.get(verdict, "yellow")
        table.add_row(
            r["path"],
            r["status"],
            f"[{style}]{verdict}[/]",
            defects,
            f"{r['timings_ms'].get('total', 0.0):.0f}",
        )
    console.print(table)
    n = len(rows)
    console.print(
        f"{n} images in {elapsed:.2f} s ({n / elapsed if elapsed else 0:.2f} img/s): "
        f"{verdicts['pass']} pass, {verdicts['fail']} fail, {verdicts['rejected']} rejected"
    )


def register(app: typer.Typer) -> None:
    """Add ``inspect`` to the CLI."""
    app.command("inspect")(inspect_cmd)
