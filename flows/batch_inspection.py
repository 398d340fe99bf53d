"""Batch inspection of a lot as a Prefect flow: rows, artifacts and an HTML report.

Input: a folder, file or glob (``paths``), archived images (``sha256``), or a query over past
inspections (``query_line``, ``camera``, ``since``, ``until``, ``verdict``) that re-inspects
them under the model in use (by default the registry's champion). ``defectscan serve`` runs
it per line on the line's ``batch_schedule`` over the inspections since the previous run.

The flow holds no logic: one task runs :func:`defectscan.batch.inspect_lot` (the one
inspect-and-store loop: a re-run of the same lot writes nothing twice), one publishes what it
found as artifacts: a table of per-class counts and rates, a markdown summary with the worst
parts, and a link to the HTML report.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import flow, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from defectscan.batch import (
    BatchReport,
    BatchSelection,
    class_table,
    inspect_lot,
    parse_time,
    summary_markdown,
)

__all__ = ["artifact_key", "batch_inspection", "inspect_lot_task", "publish_batch"]


def artifact_key(prefix: str, line: str | None) -> str:
    """An artifact key (lowercase letters, digits, dashes) for this line's batch artifacts."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{prefix}-{line or 'lot'}".lower()).strip("-")


@task(name="inspect-lot", cache_policy=NO_CACHE, persist_result=False)
def inspect_lot_task(
    selection: BatchSelection,
    model: str,
    line: str | None,
    camera: str | None,
    report_dir: str | None,
    title: str | None,
) -> BatchReport:
    """Inspect and store the lot, then write its HTML report."""
    from pathlib import Path

    return inspect_lot(
        selection,
        model=model,
        line=line,
        camera=camera,
        report_dir=Path(report_dir) if report_dir else None,
        title=title,
    )


@task(name="publish-batch-artifacts", cache_policy=NO_CACHE, persist_result=False, retries=2)
def publish_batch(report: BatchReport, line: str | None) -> None:
    """Per-class table, markdown summary (worst parts, rejects) and a link to the report."""
    create_table_artifact(
        table=class_table(report),
        key=artifact_key("batch-classes", line),
        description=f"Defects per class: {report.title}",
    )
    create_markdown_artifact(
        markdown=summary_markdown(report),
        key=artifact_key("batch-summary", line),
        description=f"Batch summary: {report.title}",
    )
    if report.report_path is not None:
        create_link_artifact(
            link=report.report_path.resolve().as_uri(),
            link_text=f"HTML report ({len(report.parts)} parts)",
            key=artifact_key("batch-report", line),
            description=f"Batch report: {report.title}",
        )


@flow(name="batch-inspection", persist_result=False, log_prints=False)
def batch_inspection(
    paths: list[str] | None = None,
    sha256: list[str] | None = None,
    query_line: str | None = None,
    camera: str | None = None,
    since: str | None = None,
    until: str | None = None,
    verdict: str | None = None,
    model: str = "champion",
    line: str | None = None,
    report_dir: str | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Inspect a lot (paths, archived sha256s or a query), store rows, report on it."""
    selection = BatchSelection(
        paths=tuple(paths or ()),
        sha256=tuple(sha256 or ()),
        query_line=query_line,
        camera=camera if (query_line or since or until or verdict) else None,
        since=parse_time(since),
        until=parse_time(until),
        verdict=verdict,
    )
    report = inspect_lot_task(selection, model, line, camera, report_dir, title)
    publish_batch(report, line)
    return report.to_dict()
