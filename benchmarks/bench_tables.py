"""The printed side of ``bench.py``: one rich table per section, from the JSON payload.

Each ``_<section>_table`` reads only the payload (the section's rows and the ``config``), so
a saved ``bench.json`` prints the same tables as the run that wrote it. This module imports no
sibling: the runner calls :func:`print_tables` after writing the JSON.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_tables", "stdout_console"]

Rows = list[dict[str, Any]]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _range(stats: dict[str, Any]) -> str:
    if stats.get("min") is None:
        return "-"
    return f"{stats['min']:.2f}-{stats['max']:.2f}"


def stdout_console() -> Console:
    """The console the tables go to (160 columns when stdout is not a terminal)."""
    # Piped into a file or CI log, rich would wrap the tables at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=200)


def _machine_line(machine: dict[str, Any]) -> str:
    return (
        f"[bold]{machine['cpu_model']}[/], {machine['cores']} cores, torch threads "
        f"{machine['torch_threads']}, device {machine['device']}"
        + (f" ({machine['gpu_name']})" if machine["gpu_name"] else "")
        + f", load average {machine['loadavg_start']} -> {machine['loadavg_end']}"
    )


def _engines_table(rows: Rows, cfg: dict[str, Any]) -> Table:
    cuda = str(cfg["device"]).startswith("cuda")
    table = Table(
        title=(
            f"engines: seed UNet width {cfg['width']}, {cfg['tile']}x{cfg['tile']} tiles, "
            f"model only ({cfg['rounds']} interleaved rounds, {cfg['seconds']:g} s each row)"
        )
    )
    columns = [
        "row",
        "device",
        "precision",
        "batch",
        "tiles/s",
        "min-max",
        "vs naive",
        "max |dp|",
        "TFLOP/s",
    ]
    if cuda:
        columns.append("% peak")
    if any(r["reference_tiles_per_s"] for r in rows):
        columns.append("ref (idle)")
    for c in columns:
        table.add_column(c, justify="left" if c in ("row", "device", "precision") else "right")
    for r in rows:
        ts = r["tiles_per_s"]
        cells = [
            r["name"],
            r["device"],
            r["precision"],
            str(r["batch"]),
            _fmt(ts["median"]) if not r["error"] else "[red]skipped[/]",
            _range(ts),
            "-" if r["speedup_vs_seed_naive"] is None else f"{r['speedup_vs_seed_naive']:.2f}x",
            "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}",
            _fmt(r["tflops"], 3),
        ]
        if cuda:
            cells.append(_fmt(r["pct_peak"], 1) if r["pct_peak"] is not None else "-")
        if "ref (idle)" in columns:
            ref = r["reference_tiles_per_s"]
            cells.append(f"{ref[0]}-{ref[1]}" if ref else "-")
        table.add_row(*cells)
    return table


def _pipeline_table(rows: Rows, cfg: dict[str, Any]) -> Table:
    table = Table(
        title=(
            f"pipeline: file -> decode -> tile -> infer -> stitch -> post -> SQLite row, "
            f"{cfg['images']} images {cfg['image_size']}x{cfg['image_size']}"
        )
    )
    for c in (
        "row",
        "precision",
        "tiles",
        "images/s",
        "tiles/s",
        "engine alone",
        "ratio",
        "vs OV alone",
        "vs seed loop",
        "vs drift off",
        "p50|p95 ms",
        "rows",
        "ms/img decode|infer|post|total",
    ):
        table.add_column(c, justify="left" if c in ("row", "precision") else "right")
    for r in rows:
        if r.get("error"):
            table.add_row(
                r["name"],
                "-",
                "-",
                "[red]skipped[/]",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                r["error"],
            )
            continue
        stages = r["stage_ms"]
        table.add_row(
            r["name"],
            r["precision"],
            str(r["tiles"]),
            _fmt(r["images_per_s"]["median"]),
            _fmt(r["tiles_per_s"]["median"]),
            _fmt(r["engine_tiles_per_s"]["median"]),
            f"{r['ratio']:.2f}",
            _fmt(r.get("vs_openvino_model_only")),
            _fmt(r.get("vs_seed_naive")),
            _fmt(r.get("vs_drift_off")),
            f"{_fmt(r['latency_ms']['p50'], 0)}|{_fmt(r['latency_ms']['p95'], 0)}",
            str(r["rows_written"]),
            " | ".join(_fmt(stages.get(k), 0) for k in ("decode", "infer", "post", "total")),
        )
    return table


def _large_table(rows: Rows, cfg: dict[str, Any]) -> Table:
    table = Table(title="large frame: peak RSS of one inspection (subprocess, VmHWM)")
    for c in ("row", "engine", "tiles", "defects", "seconds", "peak RSS MiB", "limit MiB"):
        table.add_column(c, justify="left" if c in ("row", "engine") else "right")
    for r in rows:
        if r["error"]:
            table.add_row(r["name"], "-", "-", "-", "[red]failed[/]", r["error"], "")
            continue
        table.add_row(
            r["name"],
            r["engine"],
            str(r["tiles"]),
            str(r["defects"]),
            _fmt(r["seconds"], 1),
            _fmt(r["peak_rss_mib"], 0),
            _fmt(r["limit_mib"], 0),
        )
    return table


def _store_table(rows: Rows, cfg: dict[str, Any]) -> Table:
    table = Table(title=f"results store writes: inspections x 5 defects (n={cfg['store_n']})")
    for c in ("database", "mode", "batch", "seconds", "inspections/s", "vs row-by-row"):
        table.add_column(c, justify="left" if c in ("database", "mode") else "right")
    for r in rows:
        table.add_row(
            r["database"],
            r["mode"],
            str(r["batch"]),
            f"{r['seconds']:.2f}",
            f"{r['inspections_per_s']:.0f}",
            f"{r['speedup_vs_row_by_row']:.1f}x",
        )
    return table


def _training_table(rows: Rows, cfg: dict[str, Any]) -> Table:
    table = Table(
        title=(
            f"training: synthetic {cfg['image_size']}px frames, {cfg['tile']}x{cfg['tile']} "
            f"crops, second of two epochs"
        )
    )
    for c in ("row", "precision", "workers", "crops", "crops/s", "data", "step", "val"):
        table.add_column(c, justify="left" if c in ("row", "precision") else "right")
    for r in rows:
        if r["error"]:
            table.add_row(r["name"], "-", "-", "-", "[red]failed[/]", "", "", r["error"])
            continue
        share = r["share"]
        table.add_row(
            r["name"],
            r["precision"],
            str(r["workers"]),
            str(r["crops"]),
            _fmt(r["crops_per_s"], 1),
            *(f"{100 * share[k]:.0f}%" for k in ("data", "step", "val")),
        )
    return table


def _tta_table(rows: Rows, cfg: dict[str, Any]) -> Table:
    table = Table(title=f"test-time flips: {cfg['image_size']}px frames, files to results")
    for c in ("row", "passes", "images/s", "cost"):
        table.add_column(c, justify="left" if c == "row" else "right")
    for r in rows:
        table.add_row(r["name"], str(r["passes"]), _range(r["images_per_s"]), f"{_fmt(r['cost'])}x")
    return table


# In the order they print; a section that was not run (an empty list) prints nothing.
_TABLES: tuple[tuple[str, Callable[[Rows, dict[str, Any]], Table]], ...] = (
    ("engines", _engines_table),
    ("pipeline", _pipeline_table),
    ("large", _large_table),
    ("store", _store_table),
    ("training", _training_table),
    ("tta", _tta_table),
)


def print_tables(payload: dict[str, Any]) -> None:
    """The machine line, one table per section that has rows, then the notes."""
    console = stdout_console()
    console.print(_machine_line(payload["machine"]))
    for section, table in _TABLES:
        if payload.get(section):
            console.print(table(payload[section], payload["config"]))
    for note in payload["notes"]:
        console.print(f"[yellow]note:[/] {note}")
