"""CLI commands for the model registry and reviews: ``models list|promote|rollback``, ``review``.

The database URL comes from Settings (``DEFECTSCAN_DATABASE_URL``; default a SQLite file under
``var/``) and is migrated to head before use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from defectscan.cli.common import DbUrlOpt, console
from defectscan.cli.common import db_session as _session

__all__ = ["register"]


models_app = typer.Typer(no_args_is_help=True, help="Model registry: list, promote, rollback.")


@models_app.command("list")
def models_list(
    db: DbUrlOpt = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Only versions of this model name.")
    ] = None,
    long: Annotated[
        bool,
        typer.Option(
            "--long", "-l", help="One block per version with lineage, trigger and checkpoint."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print every field of every version as JSON.")
    ] = False,
) -> None:
    """Registered model versions, newest first."""
    from defectscan.store import list_model_versions

    with _session(db) as session:
        rows: list[dict[str, Any]] = [
            {
                "version": mv.version,
                "name": mv.name,
                "status": mv.status,
                "activation": mv.activation,
                "classes": mv.class_names,
                "mean_iou": (mv.metrics or {}).get("mean_iou"),
                "parent": mv.parent.version if mv.parent else None,
                "training_run": mv.training_run_id,
                "trigger": mv.training_run.trigger if mv.training_run else None,
                "requested_by": mv.training_run.requested_by if mv.training_run else None,
                "reason": mv.training_run.reason if mv.training_run else None,
                "dataset": (mv.dataset_fingerprint or "")[:12] or None,
                "created_at": mv.created_at.isoformat() if mv.created_at else None,
                "checkpoint": mv.checkpoint_path,
            }
            for mv in list_model_versions(session=session, name=name)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
    elif long:
        _print_versions_long(rows)
    else:
        _print_versions(rows)


def _iou(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_versions(rows: list[dict[str, Any]]) -> None:
    """The key columns only, never cut: the version is what ``models promote`` takes.

    Where even those do not fit the terminal (very long model names), one block per version.
    """
    from rich import box

    cells = [
        (
            r["version"],
            r["status"],
            _iou(r["mean_iou"]),
            (r["created_at"] or "-")[:16].replace("T", " "),
        )
        for r in rows
    ]
    headers = ("version", "status", "val IoU", "created (UTC)")
    widths = [max([len(h), *(len(c[k]) for c in cells)]) for k, h in enumerate(headers)]
    if sum(widths) + 2 * len(widths) > console.width:
        _print_versions_long(rows)
        return
    table = Table(title="model versions", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for header in headers:
        table.add_column(header, no_wrap=True, justify="right" if header == "val IoU" else "left")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    if rows:
        console.print("[dim]--long: lineage, run, trigger and checkpoint of each; --json: all[/]")


def _print_versions_long(rows: list[dict[str, Any]]) -> None:
    """One block per version: every field on its own line, wrapped, never truncated."""
    fields = (
        ("status", "status"),
        ("activation", "activation"),
        ("classes", "classes"),
        ("val mean IoU", "mean_iou"),
        ("parent", "parent"),
        ("training run", "training_run"),
        ("trigger", "trigger"),
        ("requested by", "requested_by"),
        ("reason", "reason"),
        ("dataset", "dataset"),
        ("created", "created_at"),
        ("checkpoint", "checkpoint"),
    )
    for i, r in enumerate(rows):
        if i:
            console.print()
        console.print(f"[bold]{r['version']}[/]", soft_wrap=True)
        for label, key in fields:
            value = r[key]
            if key == "mean_iou":
                text = _iou(value)
            elif key == "classes":
                text = ", ".join(value or []) or "-"
            else:
                text = "-" if value in (None, "") else str(value)
            console.print(f"  {label:<13} {text}", markup=False, highlight=False)


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="Model version to promote.")],
    holdout: Annotated[
        Path | None, typer.Option("--holdout", help="Score both models on this dataset folder.")
    ] = None,
    metric: Annotated[
        str, typer.Option("--metric", help="Holdout metric the gate compares (higher wins).")
    ] = "mean_iou",
    margin: Annotated[
        float,
        typer.Option("--margin", min=0, help="How much the candidate must beat the champion by."),
    ] = 0.01,
    force: Annotated[
        bool, typer.Option("--force", help="Skip the gate (operator decision).")
    ] = False,
    db: DbUrlOpt = None,
) -> None:
    """Promote a candidate to champion if it beats the champion on a holdout by a margin."""
    from defectscan.training.registry import promote

    with _session(db) as session:
        d = promote(
            version, session=session, holdout=holdout, metric=metric, margin=margin, force=force
        )
    if d.promoted:
        console.print(f"[green]{d.challenger} is now champion[/] ({d.reason})")
    else:
        console.print(f"[yellow]{d.challenger} stays a candidate[/]: {d.reason}")
        raise typer.Exit(3)


@models_app.command("rollback")
def models_rollback(
    name: Annotated[
        str | None,
        typer.Option("--name", help="Model name (default: the latest promoted champion's)."),
    ] = None,
    db: DbUrlOpt = None,
) -> None:
    """Retire the current champion and bring back the previous one."""
    from defectscan.training.registry import rollback

    with _session(db) as session:
        old, new = rollback(session=session, name=name)
        console.print(f"rolled back: {old.version} retired, {new.version} is champion again")


def review_cmd(
    inspection: Annotated[int, typer.Argument(help="Inspection id.")],
    verdict: Annotated[
        str,
        typer.Option(
            "--verdict",
            help="confirm (the result is right) or reject (it is wrong; give --mask to correct).",
        ),
    ],
    mask: Annotated[
        Path | None, typer.Option("--mask", help="Corrected mask (PNG, class indices or 0/255).")
    ] = None,
    operator: Annotated[str | None, typer.Option("--by", help="Operator name.")] = None,
    note: Annotated[
        str | None, typer.Option("--note", help="A comment kept with the review.")
    ] = None,
    db: DbUrlOpt = None,
) -> None:
    """Record an operator's review of an inspection; it becomes training data for the next run."""
    from defectscan.store.review_queue import mark_reviewed
    from defectscan.training.reviews import record_review

    with _session(db) as session:
        review = record_review(
            inspection, verdict, session=session, mask=mask, operator=operator, note=note
        )
        mark_reviewed(inspection, session=session, review_id=review.id)
        console.print(f"review {review.id} recorded for inspection {inspection} ({verdict})")


def register(app: typer.Typer) -> None:
    """Add ``models`` to ``app`` (``review`` is :mod:`defectscan.cli.review`)."""
    app.add_typer(models_app, name="models")
