"""``defectscan monitor`` and ``defectscan enqueue``: the line monitor and a stream producer.

``monitor`` is the long-lived process of a line: it loads the model once, keeps its source (and
stable consumer name), serves /metrics and runs archive retention for as long as it runs, and
reports its work as bounded line-monitor runs back to back until it is stopped: SIGINT or
SIGTERM finishes the batch in hand (its rows committed, its images acknowledged) and exits 0.
By default each run is a Prefect flow run (the ephemeral API without a server, whose temporary
server dies with the monitor, or the server at ``PREFECT_API_URL``); ``--no-prefect`` runs the
same library loop without Prefect.

Prefect's start-up (its import, the ephemeral server) takes seconds: it never holds back the
first image. The monitor starts inspecting at once in a first run of its own while Prefect
starts in a background thread; when Prefect answers, that run ends after the batch in hand and
the same monitor (model, source, consumer) goes on in Prefect flow runs.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

__all__ = ["register"]

logger = logging.getLogger(__name__)

#: How long a stopping monitor waits for a Prefect start still in progress (seconds).
PREFECT_START_WAIT_S = 10.0


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
            min=0,
            help="Serve Prometheus /metrics here (default: the line's metrics_port, else "
            "DEFECTSCAN_METRICS_PORT; 0: off).",
        ),
    ] = None,
    retention_every: Annotated[
        float,
        typer.Option(
            min=1,
            help="Seconds between archive retention passes (the first is due at start unless "
            "one ran more recently).",
        ),
    ] = 3600.0,
    auto_int8: Annotated[
        bool | None,
        typer.Option(
            "--auto-int8/--no-auto-int8",
            help="Quantise the model to INT8 from the line's own images in the background and "
            "switch to it when faster (backend auto on the CPU; default: the plant file's "
            "auto_int8, on).",
            show_default=False,
        ),
    ] = None,
    retry_int8: Annotated[
        bool,
        typer.Option(
            "--retry-int8",
            help="Forget an earlier failed INT8 attempt of the model on this CPU and try again.",
        ),
    ] = False,
) -> None:
    """Watch a camera folder or Redis stream and inspect every image, until stopped."""
    from defectscan.cli.common import CliUsageError, console, in_worker_thread
    from defectscan.config import get_settings, mask_url, url_secrets
    from defectscan.monitor import STOP
    from defectscan.monitor_build import set_process_metrics

    secrets = url_secrets(source) if source else []
    if secrets:
        # Checked before the first run: a flow run is created with its parameters, so a
        # password in --source would be kept in Prefect's record of the run.
        msg = (
            f"--source {mask_url(source or '')} holds a password ({', '.join(secrets)}), which "
            "anyone listing processes or reading flow runs can see: drop it from --source and "
            "put the credentials in DEFECTSCAN_REDIS_URL=redis://:PASSWORD@HOST:PORT/DB (every "
            "Redis source borrows them)"
        )
        raise CliUsageError(msg)
    settings = get_settings()
    chosen_model = model or str(settings.model_for(line))
    batch = batch_size
    line_cfg = settings.line(line)
    if metrics_port is not None:
        port = metrics_port
    elif line_cfg is not None and line_cfg.metrics_port is not None:
        port = line_cfg.metrics_port  # the line's own port: several monitors on one host
    else:
        port = settings.metrics_port
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
    prefect_ready = threading.Event()
    starter: threading.Thread | None = None
    if use_prefect:
        starter = threading.Thread(
            target=_start_prefect, args=(prefect_ready,), name="defectscan-prefect", daemon=True
        )
        starter.start()
    try:
        while not STOP.is_set():
            bound = run_images if max_images is None else min(run_images, max_images - total)
            # Until Prefect answers, the monitor runs on its own (a first run ends when it
            # does, or on a stop request), then hands itself over to the flow runs.
            early = use_prefect and not prefect_ready.is_set()
            runner = _prefect_runner if use_prefect and not early else _local_runner
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
                retention_every_s=retention_every,
                auto_int8=auto_int8,
                retry_int8=retry_int8,
                until=prefect_ready if early else None,
            )
            if early and prefect_ready.is_set() and not STOP.is_set():
                _hand_over_to_prefect()
                summary["stopped_by"] = "prefect_ready"
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
        if starter is not None:
            # A stop during Prefect's start: let the start end before the interpreter does.
            # A daemon thread still logging or importing while Python finalises aborts the
            # process (SIGABRT) instead of the clean exit a stop request promises.
            # A remote API that does not answer is waited for only that long.
            starter.join(PREFECT_START_WAIT_S)
        if metrics is not None:
            metrics.stop()
            set_process_metrics(None)
    if not as_json:
        elapsed = time.perf_counter() - started
        console.print(f"monitor stopped: {total} images in {elapsed:.1f} s")


class _Either(threading.Event):
    """Set when any of its events is: a run's stop request (STOP, or Prefect ready)."""

    def __init__(self, *events: threading.Event) -> None:
        super().__init__()
        self._events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self._events)


def _start_prefect(ready: threading.Event) -> None:
    """Import the flows and start Prefect's API (the ephemeral server), then set ``ready``."""
    try:
        import flows.line_monitor  # noqa: F401 - configures Prefect, guards its server
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.hello()
    except Exception:  # the first flow run will say what is wrong, loudly
        from defectscan.monitor import STOP

        if STOP.is_set():  # no flow run will follow: nothing to warn about
            logger.debug("Prefect did not start before the monitor stopped", exc_info=True)
        else:
            logger.warning("Prefect did not start in the background", exc_info=True)
    ready.set()


def _hand_over_to_prefect() -> None:
    """The monitor of the first run goes on in the flow runs (no second model load)."""
    global _LOCAL
    if _LOCAL is None:
        return
    from flows.line_monitor import adopt_monitor

    (source, model, line, camera, batch_size, root), monitor = _LOCAL
    adopt_monitor(
        monitor, source=source, model=model, line=line, camera=camera, batch_size=batch_size,
        root=root,
    )  # fmt: skip
    _LOCAL = None


def _local_runner(**params: Any) -> dict[str, Any]:
    from defectscan.config import get_settings
    from defectscan.flow_params import check_monitor
    from defectscan.monitor_build import build_monitor
    from defectscan.retention import hand_over_retention, retention_due, run_retention

    global _LOCAL
    key = (
        params["source"],
        params["model"],
        params["line"],
        params["camera"],
        params["batch_size"],
        params["root"],
    )
    if _LOCAL is None or _LOCAL[0] != key:
        check_monitor(
            get_settings(),
            **{k: params[k] for k in ("model", "line", "camera", "batch_size", "root")},
            max_images=params["max_images"],
            max_seconds=params["max_seconds"],
            idle_exit=params["idle_exit"],
            retention_every_s=params["retention_every_s"],
        )
        monitor = build_monitor(
            params["source"],
            model=params["model"],
            line=params["line"],
            camera=params["camera"],
            batch_size=params["batch_size"],
            root=params["root"],
            auto_int8=params["auto_int8"],
            retry_int8=params["retry_int8"],
        )
        hand_over_retention(monitor)
        _LOCAL = (key, monitor)
    if retention_due(_LOCAL[1], every_s=params["retention_every_s"]):
        run_retention(_LOCAL[1])
    from defectscan.monitor import STOP

    until = params.get("until")
    summary = _LOCAL[1].run(
        max_images=params["max_images"],
        max_seconds=params["max_seconds"],
        idle_exit=params["idle_exit"],
        stop=_Either(STOP, until) if until is not None else None,
    )
    return summary.to_dict()


_LOCAL: tuple[tuple[Any, ...], Any] | None = None


def _prefect_runner(**params: Any) -> dict[str, Any]:
    from flows.line_monitor import line_monitor

    params.pop("until", None)
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
        str | None,
        typer.Option(
            "--redis",
            help="Redis URL without a password (default DEFECTSCAN_REDIS_URL, which lends its "
            "credentials).",
        ),
    ] = None,
    by_path: Annotated[
        bool, typer.Option("--by-path", help="Send paths relative to --root, not the bytes.")
    ] = False,
    root: Annotated[Path | None, typer.Option(help="Shared root the paths are under.")] = None,
    camera: Annotated[str | None, typer.Option(help="Camera name for each message.")] = None,
    line: Annotated[str | None, typer.Option(help="Line name for each message.")] = None,
    max_len: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="The stream's cap in entries (default DEFECTSCAN_STREAM_MAX_LEN): over it, "
            "wait for the monitors.",
        ),
    ] = None,
    wait: Annotated[
        float,
        typer.Option(min=0, help="Seconds to wait for room when the stream is full, then fail."),
    ] = 30.0,
) -> None:
    """Put images on a Redis stream for the line monitor (a producer for cameras that push)."""
    import redis

    from defectscan.cli.common import CliUsageError, console
    from defectscan.config import get_settings, mask_url, url_secrets, with_redis_credentials
    from defectscan.sources.redis_producer import enqueue

    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        msg = f"no such file: {', '.join(missing)}"
        raise CliUsageError(msg)
    if by_path and root is None:
        msg = "--by-path needs --root: the directory the monitor's --root also points at"
        raise CliUsageError(msg)
    if redis_url and url_secrets(redis_url):
        msg = (
            f"--redis {mask_url(redis_url)} holds a password, which anyone listing processes can "
            "read: drop it and set DEFECTSCAN_REDIS_URL=redis://:PASSWORD@HOST:PORT/DB instead"
        )
        raise CliUsageError(msg)
    settings = get_settings()
    url = with_redis_credentials(redis_url, settings.redis_url) if redis_url else settings.redis_url
    client = redis.Redis.from_url(url)
    try:
        ids = enqueue(
            client,
            stream,
            files,
            by_path=by_path,
            root=root,
            camera=camera,
            line=line,
            max_len=max_len or settings.stream_max_len,
            wait_s=wait,
        )
    finally:
        client.close()
    console.print(f"queued {len(ids)} images on {stream}")


def register(app: typer.Typer) -> None:
    """Add ``monitor`` and ``enqueue`` to the CLI."""
    app.command("monitor")(monitor_cmd)
    app.command("enqueue")(enqueue_cmd)
