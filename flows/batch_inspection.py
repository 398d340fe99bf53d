"""Batch inspection of a lot as a Prefect flow: rows, artifacts and an HTML report.

Input: a folder, file or glob (``paths``), archived images (``sha256``), or a query over past
inspections (``query_line``, ``camera``, ``since``, ``until``, ``verdict``) that re-inspects
them under the model in use (by default the registry's champion). ``defectscan serve`` runs
it per line on the line's ``batch_schedule`` over the period before the run's scheduled time.

Ages in ``since``/``until`` (``8h``, ``1800s``) count back from the run's *scheduled* start,
not from when it happens to start: a run that starts late (a busy runner, a queue behind a
concurrency limit) still covers its own period, and consecutive scheduled runs tile the time
without gaps. Every parameter is checked before anything is read or written
(:mod:`defectscan.flow_params`): inputs and the report folder must lie under the allowed roots.

The flow holds no logic: one task runs :func:`defectscan.batch.inspect_lot` (the one
inspect-and-store loop: a re-run of the same lot writes nothing twice), one publishes what it
found as artifacts: a table of per-class counts and rates, a markdown summary with the worst
parts, and a link to the HTML report.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from prefect import flow, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import Field

from defectscan.batch import (
    BatchReport,
    BatchSelection,
    class_table,
    inspect_lot,
    parse_time,
    summary_markdown,
)
from defectscan.flow_params import SHA256_PATTERN, check_batch
from defectscan.orchestration import label_run_owner

__all__ = ["artifact_key", "batch_inspection", "inspect_lot_task", "publish_batch", "window_end"]

Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]


def artifact_key(prefix: str, line: str | None) -> str:
    """An artifact key (lowercase letters, digits, dashes) for this line's batch artifacts."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{prefix}-{line or 'lot'}".lower()).strip("-")


def window_end() -> datetime:
    """The time ages count back from: this flow run's scheduled start (now outside a run)."""
    scheduled = flow_run.get_scheduled_start_time()
    if scheduled is None:
        return datetime.now(UTC)
    # Prefect hands a pendulum DateTime: a plain, aware datetime from here on
    return datetime.fromtimestamp(scheduled.timestamp(), tz=UTC)


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
    paths: list[Annotated[str, Field(min_length=1, max_length=4096)]] | None = None,
    sha256: list[Annotated[str, Field(pattern=SHA256_PATTERN)]] | None = None,
    query_line: Name | None = None,
    camera: Name | None = None,
    since: Annotated[str, Field(max_length=64)] | None = None,
    until: Annotated[str, Field(max_length=64)] | None = None,
    verdict: Literal["pass", "fail", "rejected"] | None = None,
    model: Annotated[str, Field(min_length=1, max_length=4096)] = "champion",
    line: Name | None = None,
    report_dir: Annotated[str, Field(min_length=1, max_length=4096)] | None = None,
    title: Annotated[str, Field(max_length=200)] | None = None,
) -> dict[str, Any]:
    """Inspect a lot (paths, archived sha256s or a query), store rows, report on it."""
    from defectscan.config import get_settings

    label_run_owner()
    end = window_end()
    selection = BatchSelection(
        paths=tuple(paths or ()),
        sha256=tuple(sha256 or ()),
        query_line=query_line,
        camera=camera if (query_line or since or until or verdict) else None,
        since=parse_time(since, now=end),
        until=parse_time(until, now=end),
        verdict=verdict,
    )
    check_batch(
        get_settings(),
        paths=selection.paths,
        sha256=selection.sha256,
        query_line=query_line,
        camera=camera,
        since=selection.since,
        until=selection.until,
        verdict=verdict,
        model=model,
        line=line,
        report_dir=report_dir,
        title=title,
    )
    report = inspect_lot_task(selection, model, line, camera, report_dir, title)
    publish_batch(report, line)
    return report.to_dict()
