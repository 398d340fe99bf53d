"""The ``defectscan`` command line (typer + rich): the outermost layer.

Exit status: 0 when every input was inspected, 2 when some inputs were rejected (the rest are
still inspected), 1 for usage errors (bad options, missing files, unreadable model).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from defectscan import __version__
from defectscan.errors import DefectscanError

__all__ = ["app", "main"]


app = typer.Typer(
    name="defectscan",
    help="Industrial defect inspection: tiled UNet segmentation, masks, contours, verdicts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)
err_console = Console(stderr=True, soft_wrap=True)  # error lines stay whole in logs


class CliUsageError(Exception):
    """A usage error found inside a command (exit status 1), such as a missing input file."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"defectscan {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", help="text or json (default: DEFECTSCAN_LOG_FORMAT, text)."),
    ] = None,
) -> None:
    """Inspect images for scratches, cracks and spots with a UNet; train and manage models."""
    from defectscan.logs import configure_logging, resolve_log_format

    if log_format not in (None, "text", "json"):
        msg = f"--log-format must be text or json, not {log_format!r}"
        raise CliUsageError(msg)
    configure_logging(logging.INFO if verbose else logging.WARNING, resolve_log_format(log_format))


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files as given, image files inside folders (sorted), and glob patterns, de-duplicated."""
    from defectscan.inputs import InputPathError
    from defectscan.inputs import expand_inputs as expand

    try:
        return expand(patterns)
    except InputPathError as exc:
        raise CliUsageError(str(exc)) from None


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


@app.command("inspect")
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


@app.command("demo")
def demo_cmd(
    workdir: Annotated[Path, typer.Option(help="Where data, model and outputs go.")] = Path(
        "var/demo"
    ),
    images: Annotated[int, typer.Option(min=1, help="Parts the camera drops.")] = 12,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs (first run only).")] = 20,
    retrain: Annotated[bool, typer.Option(help="Train again even if a model exists.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Run the main job end to end on synthetic parts: train, inspect, store in SQLite."""
    from defectscan.config import get_settings
    from defectscan.demo import run_demo

    settings = get_settings()
    with console.status("demo") as status:

        def say(message: str) -> None:
            console.log(message)
            status.update(message)

        summary = run_demo(
            workdir,
            database_url=settings.database_url,
            images=images,
            epochs=epochs,
            retrain=retrain,
            device=device,
            say=say,
        )
    table = Table(title="defectscan demo", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("model", f"{summary.model_version} ({summary.model_path})")
    if summary.trained:
        table.add_row("training", f"{summary.train_seconds:.1f} s")
    for name, iou in summary.val_iou.items():
        table.add_row(f"val IoU {name}", "-" if iou is None else f"{iou:.3f}")
    table.add_row(
        "inspected",
        f"{summary.images} parts by the batch-inspection flow in {summary.inspect_seconds:.1f} s "
        "(with Prefect's start-up)",
    )
    flow = summary.flow_result
    table.add_row(
        "stored",
        f"{flow.get('inserted', 0)} new rows, {flow.get('duplicates', 0)} already stored",
    )
    table.add_row("verdicts", ", ".join(f"{n} {v}" for v, n in sorted(summary.verdicts.items())))
    table.add_row(
        "defects",
        ", ".join(f"{n} {c}" for c, n in summary.defects_by_class.most_common()) or "none",
    )
    table.add_row("defective parts caught", f"{summary.image_recall:.0%}")
    table.add_row("good parts rejected", f"{summary.false_reject_rate:.0%}")
    table.add_row("database", f"{summary.database_url} ({summary.rows_in_database} rows)")
    table.add_row("report", str(summary.report_path))
    console.print(table)


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


def _register_subcommands() -> None:
    from defectscan._cli_db import db_app

    app.add_typer(db_app, name="db", help="Results database migrations.")
    from defectscan._cli_monitor import register as register_monitor

    register_monitor(app)
    from defectscan._cli_ops import register as register_ops

    register_ops(app)
    from defectscan._cli_export import register as register_export

    register_export(app)
    from defectscan._cli_flows import register as register_flows

    register_flows(app)
    try:
        from defectscan._cli_train import register
    except ImportError:  # pragma: no cover - only while the training module is absent
        return
    register(app)


def main() -> None:
    """Console-script entry point with the documented exit statuses."""
    _register_subcommands()
    try:
        rv = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except CliUsageError as exc:
        err_console.print(f"[red]usage error[/]: {exc}")
        sys.exit(1)
    except typer.TyperException as exc:  # typer's own usage errors (missing option, bad value)
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"[red]usage error[/]: {exc}")
        sys.exit(1)
    except DefectscanError as exc:
        err_console.print(f"[red]error[/]: {exc}")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # ``python -m defectscan.cli``
    main()
