"""``defectscan serve``, ``retrain`` and ``batch``: the scheduled and operator-triggered flows.

``serve`` serves every scheduled deployment of the plant from one process (needs a Prefect
server) and supervises the plant's line monitors as child processes (restarted with back-off,
stopped when serve stops).
``retrain`` submits the retrain deployment through ``run_deployment`` when a Prefect server
answers (an idempotency key, so a double submit starts one run), and runs it in-process
otherwise; its exit status says what happened: 0 a new champion (or, without ``--wait``, the
request was submitted), 3 the candidate lost the gate, 1 the run failed or was refused.
``batch`` runs a batch inspection in-process and prints the summary and the report's path.
Prefect is imported inside the commands only (``import flows`` prepares its environment).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register", "retrain_key"]

#: Requests with the same requester, reason and data within this many seconds are one request.
DOUBLE_SUBMIT_WINDOW_S = 600


def retrain_key(
    requested_by: str, reason: str, data: str | None, *, now: float | None = None
) -> str:
    """The idempotency key of a retrain request (same request within the window: same key)."""
    bucket = int((now if now is not None else time.time()) // DOUBLE_SUBMIT_WINDOW_S)
    digest = hashlib.sha256(f"{requested_by}\n{reason}\n{data or ''}".encode()).hexdigest()
    return f"retrain-{digest[:24]}-{bucket}"


def serve_cmd(
    monitors: Annotated[
        bool,
        typer.Option(
            "--monitors/--no-monitors",
            help="Run a line monitor per line with a source as a supervised child process (off "
            "when the monitors run as their own services).",
        ),
    ] = True,
    instance: Annotated[
        str | None,
        typer.Option(
            "--instance",
            envvar="DEFECTSCAN_SERVE_INSTANCE",
            help="Name of this serve (default: host and var folder); a restarted serve crashes "
            "only runs its own instance left.",
        ),
    ] = None,
    restart_backoff: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds before a monitor that exited is started again; doubles with each "
            "quick failure, up to 5 minutes.",
        ),
    ] = 2.0,
    stop_grace: Annotated[
        float,
        typer.Option(
            min=0, help="Seconds a monitor gets to finish its batch when serve stops (then killed)."
        ),
    ] = 60.0,
) -> None:
    """Serve the scheduled flows (batch inspections, retrain) and supervise the line monitors."""
    from defectscan.cli.common import CliUsageError, console
    from defectscan.config import get_settings
    from defectscan.orchestration import prefect_server_configured
    from defectscan.supervisor import Backoff, monitor_children

    if not prefect_server_configured():
        msg = (
            "serve needs a Prefect server for its schedules: set PREFECT_API_URL (e.g. "
            "http://127.0.0.1:4200/api after `prefect server start`; docker compose runs one)"
        )
        raise CliUsageError(msg)
    from flows.serve import build_deployments, serve_all

    settings = get_settings()
    names = [d.full_name for d in build_deployments(settings)]
    children = monitor_children(settings) if monitors else []
    console.print(f"serving {len(names)} deployments: {', '.join(names)}")
    if children:
        console.print(
            "supervising monitors: "
            + ", ".join(f"{c.name} (/metrics :{c.metrics_port or 'off'})" for c in children)
        )
    serve_all(
        settings,
        monitors=monitors,
        instance=instance,
        backoff=Backoff(first_s=restart_backoff, max_s=max(300.0, restart_backoff)),
        stop_grace_s=stop_grace,
    )


def _print_outcome(outcome: dict[str, Any], as_json: bool) -> int:
    from defectscan.cli.common import console, err_console

    code = int(outcome.get("exit_code", 1))
    if as_json:
        sys.stdout.write(json.dumps(outcome, default=str) + "\n")
        return code
    run = outcome.get("training_run_id")
    if code == 0:
        console.print(f"[green]{outcome['candidate']} is the new champion[/] (training run {run})")
    elif code == 3:
        console.print(
            f"[yellow]{outcome['candidate']} stays a candidate[/]; "
            f"{outcome['champion_before']} keeps serving (training run {run})"
        )
    else:
        err_console.print(f"[red]retrain failed[/] (training run {run}): {outcome.get('error')}")
    if outcome.get("reason"):
        console.print(f"why: {outcome['reason']}")
    for name, pair in (outcome.get("side_by_side") or {}).items():
        cand, champ = pair.get("candidate"), pair.get("champion")
        console.print(
            f"  {name:<18} candidate {'-' if cand is None else f'{cand:.4f}'}   "
            f"champion {'-' if champ is None else f'{champ:.4f}'}"
        )
    return code


def _in_process(params: dict[str, Any], *, use_prefect: bool) -> dict[str, Any]:
    """Run the retrain flow here (ephemeral API), or the library alone (``--no-prefect``)."""
    from defectscan.cli.common import in_worker_thread
    from defectscan.training.retrain import RetrainError, RetrainRequest, retrain_from_settings

    try:
        if use_prefect:
            from flows.retrain import retrain

            return in_worker_thread(retrain, **params)
        request = RetrainRequest(
            trigger=params["trigger"],
            requested_by=params["requested_by"],
            reason=params["reason"],
            data=Path(params["data"]) if params.get("data") else None,
        )
        return retrain_from_settings(request).to_dict()
    except RetrainError as exc:
        if exc.outcome is not None:
            return exc.outcome.to_dict()
        return {"exit_code": 1, "error": str(exc), "training_run_id": None}


def _submit(params: dict[str, Any], *, key: str, wait: bool, as_json: bool) -> int:
    """Submit to the retrain deployment; with ``wait``, follow it and read its result."""
    from flows.serve import RETRAIN_DEPLOYMENT
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from defectscan.cli.common import CliUsageError, console

    submitted_at = datetime.now(UTC)
    try:
        run: FlowRun = run_deployment(  # type: ignore[assignment]
            RETRAIN_DEPLOYMENT, parameters=params, idempotency_key=key, timeout=0, as_subflow=False
        )
    except ObjectNotFound:
        msg = (
            f"the Prefect server has no deployment {RETRAIN_DEPLOYMENT}: start `defectscan serve` "
            "(or deploy prefect.yaml), or unset PREFECT_API_URL to retrain in-process"
        )
        raise CliUsageError(msg) from None
    # A run created before this call is an earlier submit of the same request.
    duplicate = run.created is not None and run.created < submitted_at
    with get_client(sync_client=True) as client:
        active = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[run.deployment_id]))
            if run.deployment_id
            else None,
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    name=FlowRunFilterStateName(
                        any_=["Running", "Pending", "AwaitingConcurrencySlot"]
                    )
                )
            ),
        )
    others = [r for r in active if r.id != run.id]
    if duplicate:
        console.print(
            f"the same request was already submitted as flow run {run.name} ({run.id}); "
            "not starting another"
        )
    elif others:
        console.print(
            f"retrain queued as flow run {run.name} ({run.id}): retrain {others[0].name} is "
            "running, one retrain runs at a time; this one starts when it has finished"
        )
    else:
        console.print(f"retrain submitted as flow run {run.name} ({run.id})")
    if not wait:
        return 0
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                break
            time.sleep(2.0)
    outcome = _outcome_of_flow_run(str(run.id), str(state.name), state.message)
    return _print_outcome(outcome, as_json)


def _outcome_of_flow_run(flow_run_id: str, state: str, message: str | None) -> dict[str, Any]:
    from defectscan.config import get_settings
    from defectscan.store.db import make_engine, session_factory
    from defectscan.training.retrain import find_run_of_flow, outcome_of_run

    engine = make_engine(get_settings().database_url)
    try:
        with session_factory(engine)() as session:
            row = find_run_of_flow(flow_run_id, session=session)
            if row is not None:
                return outcome_of_run(row).to_dict()
    finally:
        engine.dispose()
    return {"exit_code": 1, "error": f"flow run ended {state}: {message or ''}".strip()}


def retrain_cmd(
    reason: Annotated[str, typer.Option("--reason", help="Why: recorded with the run.")],
    requested_by: Annotated[str, typer.Option("--requested-by", help="Who asks: recorded.")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Base dataset (images/ + masks/; default: retrain_data)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the result (always so in-process).")
    ] = False,
    key: Annotated[
        str | None,
        typer.Option("--key", help="Idempotency key (default: from requester, reason, data)."),
    ] = None,
    use_prefect: Annotated[
        bool,
        typer.Option("--prefect/--no-prefect", help="In-process: run as a Prefect flow run."),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Retrain now: on the retrain deployment when a Prefect server answers, else in-process."""
    from defectscan.cli.common import CliUsageError
    from defectscan.orchestration import prefect_server_configured, prefect_server_reachable

    if not reason.strip() or not requested_by.strip():
        msg = "--reason and --requested-by must not be empty: they are recorded with the run"
        raise CliUsageError(msg)
    if data is not None and not data.is_dir():
        msg = f"--data {data}: no such folder"
        raise CliUsageError(msg)
    params: dict[str, Any] = {
        "trigger": "operator",
        "requested_by": requested_by,
        "reason": reason,
        "data": str(data.resolve()) if data else None,
    }
    if use_prefect and prefect_server_reachable():
        import flows

        code = _submit(
            params,
            key=key or retrain_key(requested_by, reason, params["data"]),
            wait=wait,
            as_json=as_json,
        )
        raise typer.Exit(code)
    if use_prefect and prefect_server_configured():
        from defectscan.cli.common import err_console

        err_console.print("the Prefect server at PREFECT_API_URL does not answer: retraining here")
        use_prefect = False
    if use_prefect:
        import flows  # noqa: F401
    outcome = _in_process(params, use_prefect=use_prefect)
    raise typer.Exit(_print_outcome(outcome, as_json))


def batch_cmd(
    paths: Annotated[
        list[str] | None, typer.Argument(help="Image files, folders or glob patterns.")
    ] = None,
    sha256: Annotated[
        list[str] | None, typer.Option("--sha256", help="An archived image (repeatable).")
    ] = None,
    query_line: Annotated[
        str | None, typer.Option("--query-line", help="Re-inspect this line's past parts.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Query: inspected since (ISO time or an age: 8h, 2d).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Query: inspected before this time.")] = None,
    verdict: Annotated[
        str | None, typer.Option(help="Query: only pass, fail or rejected parts.")
    ] = None,
    model: Annotated[str, typer.Option(help="A checkpoint file or champion[:NAME].")] = "champion",
    line: Annotated[str | None, typer.Option(help="Line of the lot (its config applies).")] = None,
    camera: Annotated[str | None, typer.Option(help="Camera stored with path inputs.")] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="Where the HTML report goes.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Inspect a lot (folder, glob, archived images or a query) as a flow run; report on it."""
    import flows  # noqa: F401
    from flows.batch_inspection import batch_inspection

    from defectscan.cli.common import console, in_worker_thread

    summary = in_worker_thread(
        batch_inspection,
        paths=list(paths or []),
        sha256=list(sha256 or []),
        query_line=query_line,
        camera=camera,
        since=since,
        until=until,
        verdict=verdict,
        model=model,
        line=line,
        report_dir=str(report_dir) if report_dir else None,
    )
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
        return
    console.print(
        f"{summary['parts']} parts: {summary['inspected']} inspected, {summary['failed']} failed, "
        f"{summary['rejected']} rejected, {summary['not_kept']} not seen (images not kept), "
        f"{len(summary['missing'])} not found "
        f"({summary['inserted']} new rows, {summary['duplicates']} already stored)"
    )
    if summary.get("coverage_note"):
        console.print(f"[yellow]{summary['coverage_note']}[/]")
    console.print(f"report: {summary['report']}")


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``retrain`` and ``batch`` to the CLI."""
    app.command("serve")(serve_cmd)
    app.command("retrain")(retrain_cmd)
    app.command("batch")(batch_cmd)
