"""CLI commands for reviews and the review queue: ``review ID``, ``review next``, ``review flag``,
``review fill``.

``defectscan review 1234 --verdict confirm`` records a review as before (the ``record``
command is the group's default); ``review next`` prints the queue's next open item; ``review
flag ID`` asks for an inspection to be reviewed (the queue's flagged stratum); ``review fill``
runs what the nightly ``review-queue`` flow runs, without a Prefect server.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from defectscan.cli.common import DbUrlOpt, console
from defectscan.cli.common import db_session as _session
from defectscan.cli.models import review_cmd

__all__ = ["register", "review_app"]


class _RecordByDefault(TyperGroup):
    """``review ID ...`` means ``review record ID ...`` (the command it always was)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's click Context
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["record", *args]
        return super().parse_args(ctx, args)


review_app = typer.Typer(
    cls=_RecordByDefault,
    no_args_is_help=True,
    help="Reviews: record one (`review ID --verdict ...`), the queue's next item, flag an "
    "inspection for review, fill the queue.",
)

LineOpt = Annotated[str | None, typer.Option("--line", help="Production line (default: any).")]


@review_app.command("next")
def next_cmd(
    line: LineOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the item as JSON.")] = False,
    db: DbUrlOpt = None,
) -> None:
    """Print the review queue's next open item (exit 3 when the queue is empty)."""
    from defectscan.store.review_queue import next_queue_item

    with _session(db) as session:
        item = next_queue_item(session=session, line=line)
        row: dict[str, Any] | None = (
            None
            if item is None
            else {
                "queue_item": item.id,
                "inspection": item.inspection_id,
                "sha256": item.sha256,
                "line": item.line,
                "camera": item.camera,
                "stratum": item.stratum,
                "score": round(item.score, 6),
                "inclusion_probability": item.inclusion_probability,
                "model_version": item.model_version,
                "selector_version": item.selector_version,
                "expires_at": item.expires_at.isoformat(timespec="seconds"),
            }
        )
    if row is None:
        if as_json:
            typer.echo("null")
        else:
            console.print("the review queue is empty" + (f" for line {line}" if line else ""))
        raise typer.Exit(3)
    if as_json:
        typer.echo(json.dumps(row))
        return
    console.print(
        f"inspection {row['inspection']} (line {row['line'] or '-'}, camera "
        f"{row['camera'] or '-'}): {row['stratum'].replace('_', ' ')}, score {row['score']:.3f}, "
        f"model {row['model_version']}, expires {row['expires_at']}\n"
        f"review it: defectscan review {row['inspection']} --verdict confirm|reject"
    )


@review_app.command("flag")
def flag_cmd(
    inspection_id: Annotated[int, typer.Argument(help="Inspection to have reviewed.")],
    by: Annotated[str, typer.Option("--by", help="Who asks (recorded with the flag).")],
    note: Annotated[str | None, typer.Option("--note", help="Why (shown with the event).")] = None,
    db: DbUrlOpt = None,
) -> None:
    """Flag an inspection for review: the queue's fills take its image (flagged stratum, 72 h)."""
    from defectscan.store.review_queue import flag_for_review
    from defectscan.store.schema import Inspection

    with _session(db) as session:
        inspection = session.get(Inspection, inspection_id)
        if inspection is None:
            console.print(f"[red]no inspection {inspection_id}[/]")
            raise typer.Exit(2)
        flag_for_review(inspection, by=by, note=note, session=session)
    console.print(
        f"inspection {inspection_id} flagged for review by {by}: the review queue's fills "
        "(nightly, or `defectscan review fill`) take it into the flagged stratum within 72 hours"
    )


@review_app.command("fill")
def fill_cmd(
    line: Annotated[
        list[str] | None, typer.Option("--line", help="Only this line (repeat for more).")
    ] = None,
    hours: Annotated[
        float, typer.Option("--hours", min=0.1, help="Inspections of the past hours (24: a day).")
    ] = 24.0,
    novelty: Annotated[
        bool, typer.Option("--novelty/--no-novelty", help="Score archived images for novelty.")
    ] = True,
    retrains: Annotated[
        bool,
        typer.Option("--retrains/--no-retrains", help="Schedule drift retrains that are due."),
    ] = True,
    references: Annotated[
        bool,
        typer.Option(
            "--references/--no-references", help="Build a new champion's drift references."
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    db: DbUrlOpt = None,
) -> None:
    """Fill the review queue now (what the nightly review-queue flow runs)."""
    from defectscan.config import get_settings
    from defectscan.drift.reference_jobs import build_references_from_settings
    from defectscan.drift.retrain_trigger import check_drift_retrains, prefect_submit
    from defectscan.drift.review_fill import fill_review_queue
    from defectscan.orchestration import prefect_server_reachable
    from defectscan.store.db import upgrade_to_head

    settings = get_settings()
    if db:
        settings = settings.model_copy(update={"database_url": db})
    upgrade_to_head(settings.database_url)
    filled = [
        r.to_dict()
        for r in fill_review_queue(settings, lines=line or None, hours=hours, novelty=novelty)
    ]
    scheduled: list[dict[str, Any]] = []
    if retrains:
        submit = prefect_submit() if prefect_server_reachable() else None
        scheduled = check_drift_retrains(settings, submit=submit)
    built = build_references_from_settings(settings) if references else []
    if as_json:
        typer.echo(json.dumps({"filled": filled, "retrains": scheduled, "references": built}))
        return
    for r in filled:
        picked = ", ".join(f"{k} {v}" for k, v in sorted(r["picked"].items())) or "nothing"
        console.print(
            f"line {r['line'] or '-'}: {r['total']} queued of {r['candidates']} candidates "
            f"({picked}); {r['expired']} expired"
            + (
                f"; drift alert on {', '.join(map(str, r['alerted_cameras']))}"
                if r["alerted_cameras"]
                else ""
            )
        )
    for e in scheduled:
        console.print(f"[yellow]{e['message']}[/]")
    for b in built:
        console.print(
            f"drift reference of {b['model_version']} camera {b['camera'] or '-'}: {b['state']} "
            f"({b['images']} images)"
        )


def register(app: typer.Typer) -> None:
    """Add ``review`` (record, next, flag, fill) to ``app``."""
    review_app.command("record")(review_cmd)
    app.add_typer(review_app, name="review")
