"""``defectscan serve`` on the example plant file for a while, with its monitors under load.

    .venv/bin/python benchmarks/serve_run.py [--minutes 15] [--out var/bench/serve-run.json]

(``make serve-run``.) ``docker/plant.example.yaml`` with only its addresses made local: Redis
and PostgreSQL on 127.0.0.1, the camera folder, model file and var folder under a temporary
directory, and line3's CUDA engine on the CPU. A random-weight model with the example's classes
is registered as champion and written as line4's model file. While ``serve`` runs, a producer
puts a part a second on line3's stream and drops one a second into line4's camera folder, and
the archive is seeded with files older than line4's retention age.

At the end: the monitor child processes (pid, start count), each line's consumers in its Redis
group, rows per line, and the ``events`` rows (retention passes, monitor exits, model loads).
The issue's bar: one model load and one consumer per monitor over the whole run, and retention
ran. Exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get(
    "DEFECTSCAN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS = os.environ.get("DEFECTSCAN_SOAK_REDIS_URL", "redis://127.0.0.1:6379/0")
CLASSES = ("scratch", "crack", "spot", "stain")


def _plant(work: Path, stream: str) -> Path:
    text = (REPO / "docker" / "plant.example.yaml").read_text()
    text = text.replace("/srv/defectscan/var", str(work / "var"))
    text = text.replace("redis://redis:6379/0?stream=line3-images", f"{REDIS}?stream={stream}")
    text = text.replace("/data/line4/camera", str(work / "line4" / "camera"))
    text = text.replace("/models/line4.safetensors", str(work / "line4.safetensors"))
    text = text.replace("batch_roots: [/data]", f"batch_roots: [{work}]")
    text = re.sub(r"device: cuda:0, precision: bf16, batch_size: 32", "device: cpu", text)
    plant = work / "plant.yaml"
    plant.write_text(text)
    return plant


def _model(work: Path) -> Path:
    import torch

    from defectscan.model.checkpoint import save_checkpoint
    from defectscan.model.spec import ModelSpec
    from defectscan.model.unet import UNet

    torch.manual_seed(0)
    net = UNet(3, len(CLASSES), bilinear=True, base_width=4).eval()
    spec = ModelSpec(
        n_channels=3,
        activation="sigmoid",
        class_names=CLASSES,
        base_width=4,
        tile_size=128,
        tile_overlap=16,
        name="unet",
    )
    path = work / "line4.safetensors"
    save_checkpoint(net, spec, path)
    return path


def _children(pid: int) -> list[dict[str, Any]]:
    """Monitor processes under ``pid`` (any depth), with their start times."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text().split()
        except OSError:
            continue
        args = [c.decode(errors="replace") for c in cmd if c]
        if "monitor" in args and "--line" in args:
            ancestors, ppid = [], int(stat[3])
            while ppid > 1:
                ancestors.append(ppid)
                try:
                    ppid = int((Path("/proc") / str(ppid) / "stat").read_text().split()[3])
                except OSError:
                    break
            if pid in ancestors:
                line = args[args.index("--line") + 1]
                found.append(
                    {
                        "pid": int(proc.name),
                        "ppid": int(stat[3]),
                        "line": line,
                        "start_ticks": int(stat[21]),
                    }
                )
    # A process forked by a monitor (a helper of an engine, say) shows the monitor's command
    # line too: count only monitors whose parent is not a monitor.
    pids = {c["pid"] for c in found}
    return sorted((c for c in found if c["ppid"] not in pids), key=lambda c: c["line"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_api(url: str, server: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            msg = f"the Prefect server exited with {server.returncode}"
            raise RuntimeError(msg)
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    msg = f"the Prefect server at {url} did not answer within {timeout} s"
    raise RuntimeError(msg)


def main(argv: Sequence[str] | None = None) -> int:
    """Run serve, feed it, check it; 0 when every check holds."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "serve-run.json")
    args = p.parse_args(argv)

    import redis
    from sqlalchemy import func, select

    from defectscan import synth
    from defectscan.sources.redis_producer import enqueue
    from defectscan.store import make_engine, session_factory
    from defectscan.store.db import scratch_database, upgrade_to_head
    from defectscan.store.schema import Event, Inspection
    from defectscan.training.registry import promote, register_checkpoint

    stream = f"defectscan-serve-run-{os.getpid()}"
    client = redis.Redis.from_url(REDIS)
    result: dict[str, Any] = {
        "schema": "defectscan-serve-run/1",
        "created_at": datetime.now(UTC).isoformat(),
        "minutes": args.minutes,
    }
    with (
        tempfile.TemporaryDirectory(prefix="defectscan-serve-") as tmp,
        scratch_database(PG_ADMIN, prefix="defectscan_serve") as db,
    ):
        work = Path(tmp)
        plant = _plant(work, stream)
        model = _model(work)
        upgrade_to_head(db)
        engine = make_engine(db)
        with session_factory(engine)() as session, session.begin():
            mv = register_checkpoint(model, session=session)
            promote(mv.version, session=session, force=True)
        # Old files in the archive: line4's retention (30 days) must remove them.
        stale = work / "var" / "archive" / "ab" / "cd"
        stale.mkdir(parents=True)
        old = stale / ("abcd" + "0" * 60 + ".png")
        old.write_bytes(b"stale")
        ninety_days = time.time() - 120 * 86400
        os.utime(old, (ninety_days, ninety_days))
        camera = work / "line4" / "camera"
        camera.mkdir(parents=True)
        feed = work / "feed"
        parts = synth.write_camera_folder(feed, 64, seed=3, height=256, width=256)
        env = dict(
            os.environ,
            DEFECTSCAN_CONFIG=str(plant),
            DEFECTSCAN_DATABASE_URL=db,
            DEFECTSCAN_REDIS_URL=REDIS,
            PREFECT_HOME=str(work / "prefect"),
            OMP_WAIT_POLICY="PASSIVE",
        )
        # serve's schedules need a Prefect server: a real one, local, for this run only.
        port = _free_port()
        prefect_log = work / "prefect-server.log"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env={**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
            stdout=prefect_log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        _wait_for_api(env["PREFECT_API_URL"], server)
        log = work / "serve.log"
        serve = subprocess.Popen(
            [sys.executable, "-m", "defectscan.cli", "serve"],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        t0 = time.monotonic()
        seen: dict[int, dict[str, Any]] = {}
        fed = 0
        try:
            while time.monotonic() - t0 < 60 * args.minutes and serve.poll() is None:
                part = parts[fed % len(parts)]
                enqueue(client, stream, [part], camera="cam-1", line="line3", max_len=1000)
                tmp_file = camera / f".{fed:06d}.png.tmp"
                tmp_file.write_bytes(part.read_bytes())
                tmp_file.rename(camera / f"part{fed:06d}.png")
                fed += 1
                for child in _children(serve.pid):
                    seen.setdefault(child["pid"], child)
                time.sleep(1.0)
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=180)
            except subprocess.TimeoutExpired:
                serve.kill()
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
        with session_factory(engine)() as session:
            rows = dict(
                session.execute(
                    select(Inspection.line, func.count()).group_by(Inspection.line)
                ).all()
            )
            events = session.execute(select(Event.kind, func.count()).group_by(Event.kind)).all()
        engine.dispose()
        try:
            consumers = [
                {"name": c["name"].decode(), "pending": int(c["pending"])}
                for c in client.xinfo_consumers(stream, "defectscan")
            ]
        except redis.ResponseError:  # no group: line3's monitor never read the stream
            consumers = []
        client.delete(stream, f"{stream}:dead")
        per_line: dict[str, int] = {}
        for child in seen.values():
            per_line[child["line"]] = per_line.get(child["line"], 0) + 1
        result.update(
            fed_per_line=fed,
            rows_per_line={str(k): int(v) for k, v in rows.items()},
            monitor_processes=list(seen.values()),
            monitor_starts_per_line=per_line,
            line3_consumers=consumers,
            events={str(k): int(v) for k, v in events},
            stale_archive_file_removed=not old.exists(),
            serve_exit=serve.returncode,
            serve_log_tail=log.read_text(errors="replace")[-4000:],
        )
    checks = {
        "both monitors ran": set(per_line) == {"line3", "line4"},
        "one process (one model load) per monitor": all(n == 1 for n in per_line.values()),
        "one consumer for line3's monitor": len(consumers) == 1,
        "retention ran": result["events"].get("archive_retention", 0) >= 2
        and result["stale_archive_file_removed"],
        "rows for both lines": all(result["rows_per_line"].get(x, 0) > 0 for x in per_line),
        "no monitor exited": result["events"].get("monitor_exited", 0) == 0,
    }
    result["checks"] = checks
    result["passed"] = all(checks.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"serve on the example plant file for {args.minutes} min: fed {fed} parts per line")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print(f"  rows {result['rows_per_line']}; events {result['events']}; consumers {consumers}")
    if not result["passed"]:
        print(result["serve_log_tail"])
    print(f"wrote {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
