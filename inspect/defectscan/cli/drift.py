"""CLI commands for drift monitoring: ``drift status``, ``drift reference build``, ``drift replay``.

Features come from the torch engine (every checkpoint has them there); the reference is stored
with the checkpoint's model version, per line and camera.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from defectscan.cli.common import CliUsageError, DbUrlOpt, console
from defectscan.cli.common import db_session as _session

__all__ = ["register"]

drift_app = typer.Typer(no_args_is_help=True, help="Drift per camera: status, reference, replay.")
reference_app = typer.Typer(no_args_is_help=True, help="Drift references per model and camera.")

ModelOpt = Annotated[
    Path, typer.Option("--model", "-m", help="Checkpoint whose features are tracked.")
]
LineOpt = Annotated[str | None, typer.Option("--line", help="Production line of the camera.")]
CameraOpt = Annotated[str | None, typer.Option("--camera", help="Camera name.")]
FolderOpt = Annotated[
    Path | None,
    typer.Option("--folder", help="Images from this folder (capture order: modification time)."),
]
ArchiveOpt = Annotated[
    bool,
    typer.Option("--from-archive", help="Images of the line and camera from the image archive."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


def _inspector(model: Path, device: str) -> Any:
    from defectscan.pipeline import Inspector

    if not model.is_file():
        msg = f"checkpoint {model} does not exist"
        raise CliUsageError(msg)
    return Inspector.from_checkpoint(model, backend="torch", device=device, drift_features=True)


def _records(
    folder: Path | None,
    from_archive: bool,
    line: str | None,
    camera: str | None,
    limit: int,
    db: str | None,
) -> list[Any]:
    from defectscan.drift.replay import archive_records, folder_records

    if (folder is None) == (not from_archive):
        msg = "give exactly one of --folder DIR or --from-archive"
        raise CliUsageError(msg)
    if folder is not None:
        return folder_records(folder, line=line, camera=camera, limit=limit)
    from defectscan.archive import default_archive

    with _session(db) as session:
        return archive_records(
            session=session, archive=default_archive(), line=line, camera=camera, limit=limit
        )


@reference_app.command("build")
def reference_build(
    model: ModelOpt,
    line: LineOpt = None,
    camera: CameraOpt = None,
    folder: FolderOpt = None,
    from_archive: ArchiveOpt = False,
    min_images: Annotated[
        int, typer.Option("--min-images", min=50, help="Fewest images a reference is built from.")
    ] = 3000,
    limit: Annotated[
        int, typer.Option("--limit", min=50, help="Most images read (the newest).")
    ] = 10000,
    k: Annotated[
        int, typer.Option("--k", min=1, help="PCA dimensions (fewer if features have fewer).")
    ] = 64,
    device: DeviceOpt = "auto",
    db: DbUrlOpt = None,
) -> None:
    """Build a camera's drift reference and store it with the model version."""
    from defectscan.drift.replay import build_reference
    from defectscan.store.drift_rows import save_reference

    inspector = _inspector(model, device)
    records = _records(folder, from_archive, line, camera, limit, db)
    ref = build_reference(inspector, records, k=k, min_images=min_images)
    inspector.close()
    from datetime import UTC, datetime

    def when(t: float | None) -> datetime | None:
        return None if t is None else datetime.fromtimestamp(t, UTC)

    with _session(db) as session:
        ref_id = save_reference(
            ref.to_dict(),
            session=session,
            model_version=inspector.model_version,
            line=line,
            camera=camera,
            built_from=when(ref.built_from),
            built_to=when(ref.built_to),
        )
    console.print(
        f"drift reference {ref_id}: model {inspector.model_version}, line {line or '-'}, "
        f"camera {camera or '-'}, {ref.n_images} images, k={ref.k}, "
        f"novelty cut {ref.novelty_cut:.3f}"
    )


@drift_app.command("replay")
def replay_cmd(
    model: ModelOpt,
    line: LineOpt = None,
    camera: CameraOpt = None,
    folder: FolderOpt = None,
    from_archive: ArchiveOpt = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Most images replayed (the newest).")
    ] = 10000,
    min_window: Annotated[
        int, typer.Option("--min-window", min=1, help="Fewest images in a window (default 200).")
    ] = 200,
    store: Annotated[
        bool, typer.Option("--store/--no-store", help="Write the windows to drift_windows.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per window.")] = False,
    device: DeviceOpt = "auto",
    db: DbUrlOpt = None,
) -> None:
    """Run stored or folder images through drift windows and print each window's state."""
    from defectscan.drift.alerts import DriftState
    from defectscan.drift.replay import replay
    from defectscan.drift.tracking import load_reference, store_window

    inspector = _inspector(model, device)
    with _session(db) as session:
        found = load_reference(
            session=session, model_version=inspector.model_version, line=line, camera=camera
        )
    if found is None:
        msg = (
            f"no drift reference for model {inspector.model_version}, line {line or '-'}, "
            f"camera {camera or '-'}: build one with `defectscan drift reference build`"
        )
        raise CliUsageError(msg)
    ref_id, reference = found
    records = _records(folder, from_archive, line, camera, limit, db)
    windows = replay(inspector, records, reference, min_images=min_window)
    inspector.close()
    if store:
        with _session(db) as session:
            previous: DriftState = "ok"
            for w in windows:
                store_window(
                    session=session,
                    key=(line, camera),
                    model_version=inspector.model_version,
                    reference_id=ref_id,
                    result=w,
                    previous_state=previous,
                )
                previous = w.state
    if as_json:
        for w in windows:
            typer.echo(
                json.dumps(
                    {
                        "start": w.start,
                        "end": w.end,
                        "n": w.n,
                        "state": w.state,
                        "hints": w.hints,
                        "over": w.over,
                    }
                )
            )
        return
    table = Table("window end", "images", "state", "over threshold", "hints")
    from datetime import UTC, datetime

    for w in windows:
        table.add_row(
            datetime.fromtimestamp(w.end, UTC).isoformat(timespec="seconds"),
            str(w.n),
            w.state,
            ", ".join(f"{k} {v:.1f}x" for k, v in sorted(w.over.items())) or "-",
            "; ".join(w.hints) or "-",
        )
    console.print(table)


def _pct(d: dict[str, Any]) -> str:
    if d["rate"] is None:
        return f"- (0 of {d['picked']} reviewed)"
    low, high = d["ci95"]
    return (
        f"{100 * d['rate']:.2f}% [{100 * low:.2f}, {100 * high:.2f}] "
        f"(n={d['n']} of {d['picked']} picked, {d['population']} images)"
    )


@drift_app.command("status")
def status_cmd(
    line: LineOpt = None,
    windows: Annotated[
        int, typer.Option("--windows", min=1, help="Newest windows shown per camera.")
    ] = 1,
    days: Annotated[
        float,
        typer.Option("--days", min=1, help="Days of review-queue picks the estimates use."),
    ] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the windows as JSON.")] = False,
    db: DbUrlOpt = None,
) -> None:
    """The newest drift windows of every camera, and the line's escape and false-reject rates.

    The rates are Horvitz-Thompson estimates from the review queue's random strata (random
    passes: escapes; random fails: false rejects) with a 95% interval; a pick not reviewed yet
    is not a label: the reviewed picks of a fill stand for all its picks (a random subsample).
    """
    from defectscan.drift.review_fill import line_estimates
    from defectscan.store.drift_rows import latest_drift_windows

    with _session(db) as session:
        rows = [
            {
                "line": r.line,
                "camera": r.camera,
                "model_version": r.model_version,
                "window_start": r.window_start.isoformat(),
                "window_end": r.window_end.isoformat(),
                "n": r.n,
                "state": r.state,
                "over": (r.statistics or {}).get("over", {}),
                "hints": r.hints,
            }
            for r in latest_drift_windows(session=session, line=line, per_camera=windows)
        ]
        estimates = line_estimates(session=session, line=line, days=days)
    if as_json:
        typer.echo(json.dumps({"windows": rows, "estimates": estimates}))
        return
    if not rows:
        console.print("no drift windows yet")
    else:
        table = Table("line", "camera", "window end", "images", "state", "over threshold", "hints")
        for r in rows:
            table.add_row(
                r["line"] or "-",
                r["camera"] or "-",
                r["window_end"][:19],
                str(r["n"]),
                r["state"],
                ", ".join(f"{k} {v:.1f}x" for k, v in sorted(r["over"].items())) or "-",
                "; ".join(r["hints"]) or "-",
            )
        console.print(table)
    if estimates:
        est = Table("line", "escape rate (95% CI)", "false-reject rate (95% CI)")
        for e in estimates:
            est.add_row(e["line"] or "-", _pct(e["escape"]), _pct(e["false_reject"]))
        console.print(est)


@drift_app.command("confirm")
def confirm_cmd(
    event: Annotated[int, typer.Argument(help="The drift event's id (warning or critical).")],
    by: Annotated[str, typer.Option("--by", help="The engineer confirming it.")],
    note: Annotated[str | None, typer.Option("--note", help="Why (kept with it).")] = None,
    db: DbUrlOpt = None,
) -> None:
    """Confirm a drift alert: once enough post-drift images are reviewed, a retrain follows."""
    from defectscan.drift.retrain_trigger import confirm_alert

    with _session(db) as session:
        row = confirm_alert(event, session=session, by=by, note=note)
        console.print(f"drift alert {event} confirmed (event {row.id})")


@drift_app.command("retrain-cancel")
def retrain_cancel_cmd(
    flow_run: Annotated[str, typer.Argument(help="The scheduled retrain's flow run id.")],
) -> None:
    """Cancel a retrain a drift alert scheduled (before it starts)."""
    from defectscan.drift.retrain_trigger import cancel_scheduled_retrain
    from defectscan.orchestration import prefect_server_reachable

    if not prefect_server_reachable():
        msg = "no Prefect server answers at PREFECT_API_URL: the retrain runs are kept there"
        raise CliUsageError(msg)
    console.print(f"flow run {flow_run}: {cancel_scheduled_retrain(flow_run)}")


@reference_app.command("pending")
def reference_pending_cmd(
    build: Annotated[
        bool, typer.Option("--build", help="Build those with enough archived images now.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
    db: DbUrlOpt = None,
) -> None:
    """Champions' cameras without a drift reference yet (queued at promotion)."""
    from defectscan.drift.reference_jobs import (
        build_references_from_settings,
        pending_references,
    )

    if build:
        from defectscan.config import get_settings

        settings = get_settings()
        if db:
            settings = settings.model_copy(update={"database_url": db})
        rows = build_references_from_settings(settings)
    else:
        with _session(db) as session:
            rows = [
                {"model_version": p.model_version, "line": p.line, "camera": p.camera}
                for p in pending_references(session=session)
            ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        console.print("every champion's camera has a drift reference")
    for r in rows:
        console.print(
            f"{r['model_version']} line {r['line'] or '-'} camera {r['camera'] or '-'}"
            + (f": {r['state']} ({r['images']} images)" if "state" in r else ": pending")
        )


def register(app: typer.Typer) -> None:
    """Add ``drift`` (status, replay, reference build) to ``app``."""
    drift_app.add_typer(reference_app, name="reference")
    app.add_typer(drift_app, name="drift")
