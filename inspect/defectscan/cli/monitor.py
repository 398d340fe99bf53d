"""``defectscan monitor`` and ``defectscan enqueue``: the line monitor and a stream producer.

``monitor`` runs bounded line-monitor runs back to back until it is stopped: SIGINT or SIGTERM
finishes the batch in hand (its rows committed, its images acknowledged) and exits 0. By
default each run is a Prefect flow run (the ephemeral API without a server, or the server at
``PREFECT_API_URL``); ``--no-prefect`` runs the same library loop without Prefect.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

__all__ = ["register"]

logger = logging.getLogger(__name__)


def _install_stop_handlers() -> None:
    """First SIGINT/SIGTERM: stop after the current batch. A second one: stop now."""
    from defectscan.monitor import STOP

    def handler(signum: int, _frame: FrameType | None) -> None:
        if STOP.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            raise KeyboardInterrupt
        from defectscan.cli.common import err_console

        name = signal.Signals(signum).name
        err_console.print(f"{name}: finishing the batch in hand, then stopping")
        STOP.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def monitor_cmd(
    source: Annotated[
        str | None,
        typer.Option(
            help="folder:PATH, redis://HOST:PORT/DB?stream=NAME, or redis:NAME (the stream on "
            "DEFECTSCAN_REDIS_URL); default: the line's source in the plant file."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="A checkpoint file, or champion[:NAME] to follow the registry's champion "
            "(default: the line's model, else DEFECTSCAN_MODEL_PATH, else champion)."
        ),
    ] = None,
    line: Annotated[str | None, typer.Option(help="Production line name.")] = None,
    camera: Annotated[str | None, typer.Option(help="Camera name stored with results.")] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1,
            help="Most images per micro-batch (a claim returns what is there, up to this).",
        ),
    ] = 32,
    max_images: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many images in all.")
    ] = None,
    idle_exit: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds without input.")
    ] = None,
    run_images: Annotated[
        int, typer.Option(min=1, help="Images per bounded flow run before the next starts.")
    ] = 2000,
    run_seconds: Annotated[
        float, typer.Option(min=1, help="Seconds per bounded flow run before the next starts.")
    ] = 600.0,
    root: Annotated[
        Path | None, typer.Option(help="Root for by-path Redis messages (paths outside refused).")
    ] = None,
    use_prefect: Annotated[
        bool,
        typer.Option("--prefect/--no-prefect", help="Run each bounded run as a Prefect flow run."),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print each run's summary as JSON.")] = (
        False
    ),
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0, help="Serve Prometheus /metrics here (default DEFECTSCAN_METRICS_PORT; 0: off)."
        ),
    ] = None,
) -> None:
    """Watch a camera folder or Redis stream and inspect every image, until stopped."""
    from defectscan.cli.common import console, in_worker_thread
    from defectscan.config import get_settings
    from defectscan.monitor import STOP, set_process_metrics

    settings = get_settings()
    chosen_model = model or str(settings.model_for(line))
    batch = batch_size
    port = settings.metrics_port if metrics_port is None else metrics_port
    metrics = None
    if port:
        from defectscan.metrics import MonitorMetrics

        metrics = MonitorMetrics()
        metrics.serve(port, settings.metrics_addr)
        set_process_metrics(metrics)
    STOP.clear()
    _install_stop_handlers()
    total = 0
    started = time.perf_counter()
    runner = _prefect_runner if use_prefect else _local_runner
    try:
        while not STOP.is_set():
            bound = run_images if max_images is None else min(run_images, max_images - total)
            summary = in_worker_thread(
                runner,
                source=source,
                model=chosen_model,
                line=line,
                camera=camera,
                batch_size=batch,
                max_images=bound,
                max_seconds=run_seconds,
                idle_exit=idle_exit,
                root=str(root) if root else None,
            )
            total += int(summary["images"])
            if as_json:
                sys.stdout.write(json.dumps(summary, default=str) + "\n")
                sys.stdout.flush()
            else:
                console.print(
                    f"{time.strftime('%H:%M:%S')} run {str(summary['run_id'])[:8]}: "
                    f"{summary['images']} images "
                    f"({summary['inspected']} inspected, {summary['rejected']} rejected, "
                    f"{summary['failed_parts']} failed parts) in {summary['seconds']:.1f} s"
                )
            if summary["stopped_by"] in ("idle", "signal"):
                break
            if max_images is not None and total >= max_images:
                break
    finally:
        _close(use_prefect)
        if metrics is not None:
            metrics.stop()
            set_process_metrics(None)
    if not as_json:
        elapsed = time.perf_counter() - started
        console.print(f"monitor stopped: {total} images in {elapsed:.1f} s")


def _local_runner(**params: Any) -> dict[str, Any]:
    from defectscan.monitor import build_monitor

    global _LOCAL
    key = (params["source"], params["model"], params["line"], params["camera"])
    if _LOCAL is None or _LOCAL[0] != key:
        _LOCAL = (
            key,
            build_monitor(
                params["source"],
                model=params["model"],
                line=params["line"],
                camera=params["camera"],
                batch_size=params["batch_size"],
                root=params["root"],
            ),
        )
    summary = _LOCAL[1].run(
        max_images=params["max_images"],
        max_seconds=params["max_seconds"],
        idle_exit=params["idle_exit"],
    )
    return summary.to_dict()


_LOCAL: tuple[tuple[Any, ...], Any] | None = None


def _prefect_runner(**params: Any) -> dict[str, Any]:
    from flows.line_monitor import line_monitor

    result: dict[str, Any] = line_monitor(**params)
    return result


def _close(use_prefect: bool) -> None:
    global _LOCAL
    if _LOCAL is not None:
        _LOCAL[1].close()
        _LOCAL = None
    if use_prefect and "flows.line_monitor" in sys.modules:
        from flows.line_monitor import close_monitors

        close_monitors()


def enqueue_cmd(
    files: Annotated[list[Path], typer.Argument(help="Image files to put on the stream.")],
    stream: Annotated[str, typer.Option(help="Redis stream name (one per line).")],
    redis_url: Annotated[
        str | None, typer.Option("--redis", help="Redis URL (default DEFECTSCAN_REDIS_URL).")
    ] = None,
    by_path: Annotated[
        bool, typer.Option("--by-path", help="Send paths relative to --root, not the bytes.")
    ] = False,
    root: Annotated[Path | None, typer.Option(help="Shared root the paths are under.")] = None,
    camera: Annotated[str | None, typer.Option(help="Camera name for each message.")] = None,
    line: Annotated[str | None, typer.Option(help="Line name for each message.")] = None,
) -> None:
    """Put images on a Redis stream for the line monitor (a producer for cameras that push)."""
    import redis

    from defectscan.cli.common import CliUsageError, console
    from defectscan.config import get_settings
    from defectscan.sources.redis_stream import enqueue

    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        msg = f"no such file: {', '.join(missing)}"
        raise CliUsageError(msg)
    if by_path and root is None:
        msg = "--by-path needs --root: the directory the monitor's --root also points at"
        raise CliUsageError(msg)
    client = redis.Redis.from_url(redis_url or get_settings().redis_url)
    try:
        ids = enqueue(client, stream, files, by_path=by_path, root=root, camera=camera, line=line)
    finally:
        client.close()
    console.print(f"queued {len(ids)} images on {stream}")


def register(app: typer.Typer) -> None:
    """Add ``monitor`` and ``enqueue`` to the CLI."""
    app.command("monitor")(monitor_cmd)
    app.command("enqueue")(enqueue_cmd)
