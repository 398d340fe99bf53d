"""``defectscan demo``: the main job end to end on synthetic parts (``make demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from defectscan.cli.common import console

__all__ = ["demo_account", "register"]


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
    name, password = demo_account(settings.database_url)
    console.print(
        "\n[bold]Operator console[/] on these results: run\n"
        f"  DEFECTSCAN_RETRAIN_DATA={workdir / 'train'} .venv/bin/defectscan console\n"
        f"then open http://{settings.console.host}:{settings.console.port}/ and log in as "
        f"[bold]{name}[/] with the password below (shown once; `defectscan users passwd {name}` "
        "makes a new one):",
        soft_wrap=True,  # the command stays on one line, copyable
    )
    console.print(f"  {password}", markup=False, highlight=False)


def demo_account(database_url: str, name: str = "demo") -> tuple[str, str]:
    """A console account for the demo (engineer: review, retrain, promote) with a new random
    password; an existing ``demo`` account gets a new one (the old one was shown once)."""
    from defectscan.cli.users import generate_password
    from defectscan.console.security import hash_password
    from defectscan.store.console_users import add_user, audit, get_user, set_password_hash
    from defectscan.store.db import make_engine, session_factory

    password = generate_password()
    engine = make_engine(database_url)
    try:
        with session_factory(engine, write=True).begin() as session:
            if get_user(name, session=session) is None:
                add_user(
                    name, password_hash=hash_password(password), role="engineer", session=session
                )
            else:
                set_password_hash(name, hash_password(password), session=session)
            audit("user_demo", who=None, ip="cli", detail={"user": name}, session=session)
    finally:
        engine.dispose()
    return name, password


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the CLI."""
    app.command("demo")(demo_cmd)
