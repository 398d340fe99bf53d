"""``defectscan export``: a checkpoint as an ONNX or OpenVINO engine (optionally INT8).

The engine is checked against eager torch before the command succeeds; one that fails parity
is written (for inspection) but marked failed, never used by ``--backend auto``, and the
command exits with status 3. Without ``--out`` the engine goes to the cache that
``--backend auto`` reads (``var/engines/``), keyed by the checkpoint's sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["export_cmd", "register"]


def export_cmd(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint (.safetensors or .pth).")],
    fmt: Annotated[str, typer.Option("--format", help="onnx or openvino.")] = "openvino",
    int8: Annotated[
        bool, typer.Option("--int8", help="INT8 post-training quantisation (OpenVINO + NNCF).")
    ] = False,
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="Folder of real camera images for INT8 calibration (tiled as inspected)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: the engine cache under var/).")
    ] = None,
    tile_size: Annotated[
        int | None, typer.Option(min=16, help="Tile size (default: the checkpoint's).")
    ] = None,
    calibration_tiles: Annotated[
        int, typer.Option(min=8, help="At most this many calibration tiles.")
    ] = 300,
) -> None:
    """Export a model to ONNX or OpenVINO (INT8 with --int8 --calibration DIR), parity-checked."""
    from defectscan.cli.common import CliUsageError, console
    from defectscan.errors import DefectscanError
    from defectscan.model.checkpoint import load_checkpoint
    from defectscan.model.export import export_model

    if fmt not in ("onnx", "openvino"):
        msg = f"--format must be onnx or openvino, not {fmt!r}"
        raise CliUsageError(msg)
    try:
        ckpt = load_checkpoint(model)
        with console.status(f"exporting {model.name} to {fmt}{' INT8' if int8 else ''}"):
            exported = export_model(
                ckpt.model,
                ckpt.spec,
                sha256=ckpt.sha256,
                fmt=fmt,  # type: ignore[arg-type]
                out=out,
                tile=tile_size,
                int8=int8,
                calibration=calibration,
                calibration_limit=calibration_tiles,
            )
    except DefectscanError as exc:
        raise CliUsageError(str(exc)) from exc
    parity = exported.parity
    console.print(f"wrote {exported.model_file} ({exported.precision}, {exported.tile}px tiles)")
    if parity is not None:
        ious = ", ".join(f"{k} {v:.4f}" for k, v in parity.iou.items())
        status = "[green]passed[/]" if parity.passed else f"[red]FAILED[/]: {parity.reason}"
        console.print(
            f"parity vs eager torch on {parity.tiles} tiles: max |dp| {parity.max_abs:.2e}, "
            f"mean |dp| {parity.mean_abs:.2e}, mask IoU {ious}, verdicts "
            f"{'identical' if parity.verdicts_equal else 'DIFFER'}: {status}"
        )
        if not parity.passed:
            raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    """Add ``export`` to the CLI."""
    app.command("export")(export_cmd)
