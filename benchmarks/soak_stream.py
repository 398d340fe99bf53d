"""Stream soak: two monitors on one Redis stream, a promotion and two SIGKILLs in the middle.

    .venv/bin/python benchmarks/soak_stream.py [--images 20000] [--out var/bench/soak-stream.json]

(``make soak-stream``.) The always-on contract, end to end with real processes:

- a producer puts ``--images`` parts on one Redis stream through the bounded producer
  (``enqueue`` with a cap and back-pressure), among them pairs of different parts with
  identical bytes and, with ``--broken-every N``, undecodable files;
- two ``defectscan monitor`` processes consume it (one consumer group, stable consumer names,
  PostgreSQL results database, the line following the registry's champion);
- a second model is promoted when a third of the images are in, and monitor 1 is killed with
  SIGKILL at 40% and at 70% and started again each time.

At the end it checks what the issue asks: every delivered image has exactly one ``ok`` or
``rejected`` row (by its stream entry), no image is lost, Redis memory is within 10% of where
it started, the dead-letter stream is empty (or holds exactly the undecodable inputs, which are
quarantined there with their error rows) and no consumer holds pending entries or is left
behind. Figures go to the JSON (``--out``) and a table; exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
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


def _models(work: Path, width: int, tile: int) -> tuple[Path, Path]:
    import torch

    from defectscan.model.checkpoint import save_checkpoint
    from defectscan.model.spec import ModelSpec
    from defectscan.model.unet import UNet

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = UNet(3, 1, bilinear=True, base_width=width).eval()
        spec = ModelSpec(
            n_channels=3,
            activation="sigmoid",
            class_names=("defect",),
            base_width=width,
            tile_size=tile,
            tile_overlap=tile // 8,
            name="soak",
        )
        path = work / f"soak-{seed}.safetensors"
        save_checkpoint(net, spec, path)
        paths.append(path)
    return paths[0], paths[1]


def _images(folder: Path, n: int, size: int, broken_every: int) -> list[Path]:
    """``n`` files: synthetic parts, every 500th twice with the same bytes, some broken."""
    from defectscan import synth

    folder.mkdir(parents=True, exist_ok=True)
    distinct = synth.write_camera_folder(folder / "parts", n, seed=5, height=size, width=size)
    files: list[Path] = []
    for i, path in enumerate(distinct):
        if broken_every and i % broken_every == broken_every - 1:
            broken = folder / f"broken_{i:06d}.png"
            broken.write_bytes(path.read_bytes()[:40])  # truncated: rejected with an error row
            files.append(broken)
        elif i % 500 == 499:
            twin = folder / f"twin_{i:06d}.png"
            twin.write_bytes(distinct[i - 1].read_bytes())  # another part, identical bytes
            files.append(twin)
        else:
            files.append(path)
    return files


def _register(db: str, path: Path, *, champion: bool) -> str:
    from defectscan.store import make_engine, session_factory
    from defectscan.training.registry import promote, register_checkpoint

    engine = make_engine(db)
    try:
        with session_factory(engine)() as session, session.begin():
            mv = register_checkpoint(path, session=session)
            if champion:
                promote(mv.version, session=session, force=True)
            return str(mv.version)
    finally:
        engine.dispose()


def _monitor(env: dict[str, str], stream: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "defectscan.cli", "monitor", "--source", f"redis:{stream}"]
    cmd += ["--model", "champion:soak", "--line", "soak", "--no-prefect", "--batch-size", "16"]
    cmd += ["--metrics-port", "0"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _rows(db: str) -> dict[str, Any]:
    from sqlalchemy import func, select

    from defectscan.store import make_engine, session_factory
    from defectscan.store.schema import Inspection

    engine = make_engine(db)
    try:
        with session_factory(engine)() as session:
            total = session.scalar(select(func.count()).select_from(Inspection)) or 0
            keys = session.scalar(select(func.count(func.distinct(Inspection.source_key)))) or 0
            dupes = session.execute(
                select(Inspection.source_key, func.count())
                .group_by(Inspection.source_key)
                .having(func.count() > 1)
            ).all()
            by_status = dict(
                session.execute(
                    select(Inspection.status, func.count()).group_by(Inspection.status)
                ).all()
            )
            versions = dict(
                session.execute(
                    select(Inspection.model_version_id, func.count()).group_by(
                        Inspection.model_version_id
                    )
                ).all()
            )
        return {
            "rows": int(total),
            "distinct_entries": int(keys),
            "entries_with_more_than_one_row": len(dupes),
            "by_status": {str(k): int(v) for k, v in by_status.items()},
            "rows_per_model": {str(k): int(v) for k, v in versions.items()},
        }
    finally:
        engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; 0 when every check holds."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--size", type=int, default=64, help="part side in pixels (64)")
    p.add_argument("--width", type=int, default=4, help="UNet width (4)")
    p.add_argument(
        "--broken-every",
        type=int,
        default=0,
        help="every Nth file truncated: rejected, dead-lettered with its error row (0: none)",
    )
    p.add_argument("--cap", type=int, default=2_000, help="stream cap for the producer (2000)")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after (s)")
    p.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "soak-stream.json")
    args = p.parse_args(argv)

    import redis

    from defectscan.sources.redis_producer import enqueue
    from defectscan.store.db import scratch_database, upgrade_to_head

    stream = f"defectscan-soak-{os.getpid()}"
    client = redis.Redis.from_url(REDIS)
    result: dict[str, Any] = {
        "schema": "defectscan-soak-stream/1",
        "created_at": datetime.now(UTC).isoformat(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "host": socket.gethostname(),
    }
    with (
        tempfile.TemporaryDirectory(prefix="defectscan-soak-") as tmp,
        scratch_database(PG_ADMIN, prefix="defectscan_soak") as db,
    ):
        work = Path(tmp)
        upgrade_to_head(db)
        first, second = _models(work, args.width, args.size)
        result["model_before"] = _register(db, first, champion=True)
        files = _images(work / "camera", args.images, args.size, args.broken_every)
        n_broken = sum(f.name.startswith("broken_") for f in files)
        plant = work / "plant.yaml"
        plant.write_text(
            "lines:\n  soak:\n    cameras: [cam-1]\n    model: champion:soak\n"
            f"    source: redis:{stream}\n"
        )
        env = dict(
            os.environ,
            DEFECTSCAN_CONFIG=str(plant),
            DEFECTSCAN_DATABASE_URL=db,
            DEFECTSCAN_REDIS_URL=REDIS,
            DEFECTSCAN_VAR_DIR=str(work / "var"),
            DEFECTSCAN_METRICS_PORT="0",
            DEFECTSCAN_BACKEND="torch",
            OMP_WAIT_POLICY="PASSIVE",
        )
        client.xgroup_create(stream, "defectscan", id="0", mkstream=True)
        memory_start = int(client.info("memory")["used_memory"])
        logs = [work / "monitor1.log", work / "monitor2.log"]
        monitors = [_monitor(env, stream, logs[0]), _monitor(env, stream, logs[1])]
        produced: list[str] = []
        failures: list[str] = []

        def produce() -> None:
            try:
                for k in range(0, len(files), 200):
                    produced.extend(
                        enqueue(
                            client,
                            stream,
                            files[k : k + 200],
                            line="soak",
                            camera="cam-1",
                            max_len=args.cap,
                            wait_s=600.0,
                        )
                    )
            except Exception as exc:  # reported below, fails the soak
                failures.append(f"producer: {type(exc).__name__}: {exc}")

        t0 = time.perf_counter()
        producer = threading.Thread(target=produce, name="producer", daemon=True)
        producer.start()
        events: list[dict[str, Any]] = []
        promoted = False
        kills = 0
        n = len(files)
        while time.perf_counter() - t0 < args.timeout:
            done = _rows(db)["distinct_entries"]
            if not promoted and done >= n // 3:
                result["model_after"] = _register(db, second, champion=True)
                promoted = True
                events.append({"at_rows": done, "event": "promoted", "s": time.perf_counter() - t0})
            if (kills == 0 and done >= 0.4 * n) or (kills == 1 and done >= 0.7 * n):
                monitors[0].send_signal(signal.SIGKILL)
                monitors[0].wait()
                kills += 1
                events.append({"at_rows": done, "event": "SIGKILL", "s": time.perf_counter() - t0})
                monitors[0] = _monitor(env, stream, logs[0])
            if done >= n and not producer.is_alive():
                break
            if failures:
                break
            time.sleep(1.0)
        elapsed = time.perf_counter() - t0
        # Let the monitors settle what they hold (acks after the last commits), then stop them.
        time.sleep(5.0)
        for m in monitors:
            m.send_signal(signal.SIGTERM)
        for m in monitors:
            try:
                m.wait(timeout=120)
            except subprocess.TimeoutExpired:
                m.kill()
        rows = _rows(db)
        groups = client.xinfo_groups(stream)
        consumers = client.xinfo_consumers(stream, "defectscan")
        dead = f"{stream}:dead"
        dead_len = int(client.xlen(dead)) if client.exists(dead) else 0
        memory_end = int(client.info("memory")["used_memory"])
        stream_len = int(client.xlen(stream))
        result.update(
            images=n,
            produced=len(produced),
            seconds=round(elapsed, 1),
            images_per_s=round(n / elapsed, 1) if elapsed else None,
            events=events,
            rows=rows,
            stream_len_end=stream_len,
            pending_end=int(groups[0]["pending"]) if groups else None,
            consumers=[
                {"name": c["name"], "pending": int(c["pending"]), "idle_ms": int(c["idle"])}
                for c in consumers
            ],
            dead_letter_len=dead_len,
            undecodable_inputs=n_broken,
            redis_memory_start=memory_start,
            redis_memory_end=memory_end,
            failures=failures,
        )
        checks = {
            "every image produced": len(produced) == n,
            "one row per delivered image": rows["distinct_entries"] == n
            and rows["entries_with_more_than_one_row"] == 0,
            "no image lost": rows["rows"] == n,
            "redis memory within 10% of start": abs(memory_end - memory_start)
            <= 0.1 * memory_start,
            # Quarantined inputs are the only dead letters: none when every file decodes.
            "dead-letter stream holds only the undecodable inputs": dead_len == n_broken
            and rows["by_status"].get("rejected", 0) == n_broken,
            "no consumer holds pending entries": all(int(c["pending"]) == 0 for c in consumers),
            "no consumer left behind": len(consumers) <= 2,
            "promoted and killed twice": promoted and kills == 2,
            "no failures": not failures,
        }
        result["checks"] = checks
        result["passed"] = all(checks.values())
        for i, log in enumerate(logs, start=1):
            result[f"monitor{i}_log_tail"] = log.read_text(errors="replace")[-3000:]
        client.delete(stream, dead, f"{stream}:dead:dropped")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"stream soak: {n} images, two monitors, {result['seconds']} s")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print(
        f"  rows {rows['rows']} ({rows['by_status']}), per model {rows['rows_per_model']}; "
        f"redis memory {memory_start} -> {memory_end} B; consumers {result['consumers']}"
    )
    print(f"wrote {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
