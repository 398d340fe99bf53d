"""The operator console at plant scale: page times over 1,000,000 inspections.

Fills a SQLite file and a throwaway PostgreSQL database with ``--rows`` inspections (four
lines, two cameras each, spread over 30 days; 10% fails with one defect each, 1% reviewed,
one run_metrics row per line and minute of the last 7 days, as monitors write them; monitor
events (engine, plant faults, falling behind) and a drift window per camera and 10 minutes
of the last 7 days), then asks the console (its real app, FastAPI's TestClient, a logged-in
session) for:

- ``gallery``: ``/inspections``, the newest page;
- ``gallery_filtered``: ``/inspections?line=L2&verdict=fail&class_name=dent&since=7d``;
- ``gallery_deep``: the gallery's page after a cursor half-way back in time;
- ``lines``: ``/lines/table``, what the Lines page refreshes every 5 s (health, queue, drift).

Each page is asked ``--requests`` times after two warm-up requests; p50 and p95 in ms.
The target (issue 17): p95 under 300 ms for each, on both databases.

    .venv/bin/python benchmarks/bench_console.py [--rows 1000000] [--requests 40]
                                                 [--databases sqlite,postgresql]

(``make bench-console``: the full size.) JSON to ``var/bench/console.json``. It is also the
``console`` section of ``benchmarks/bench.py`` (``make bench``), at 100,000 rows by default
(``--console-rows`` or ``DEFECTSCAN_BENCH_CONSOLE_ROWS`` for 1,000,000; ``--quick``: 2,000
rows, SQLite only); its rows go to ``bench.json``. PostgreSQL comes from
``DEFECTSCAN_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``),
which must be allowed to create databases; without one only SQLite is measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from bench_common import BenchConfig, Log

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LINES = ("L1", "L2", "L3", "L4")
CAMERAS = ("cam1", "cam2")
CHUNK = 20_000


def _fill(url: str, rows: int, *, now: datetime, seed: int = 7) -> dict[str, float]:
    """``rows`` inspections (+ defects, reviews, run_metrics) through bulk core inserts."""
    from defectscan.console.security import hash_password
    from defectscan.store.console_users import add_user
    from defectscan.store.db import make_engine, session_factory, upgrade_to_head
    from defectscan.store.model_versions import ensure_model_version
    from defectscan.store.schema import (
        Defect,
        DriftWindowRow,
        Event,
        Inspection,
        Review,
        RunMetric,
    )

    engine = make_engine(url)
    upgrade_to_head(engine)
    with session_factory(engine).begin() as s:
        mv = ensure_model_version(
            session=s,
            version="unet-bench-console",
            sha256="ab" * 32,
            name="unet",
            checkpoint_path=None,
            spec={},
            activation="sigmoid",
            class_names=["scratch", "dent"],
            status="champion",
        )
        mv_id = mv.id
        add_user("bench", password_hash=hash_password("bench-password-1"), role="viewer", session=s)
    rng = random.Random(seed)
    span = 30 * 86400
    t0 = time.perf_counter()
    ins, dfs, rvs = Inspection.__table__, Defect.__table__, Review.__table__
    next_id = 1
    with engine.begin() as c:
        for start in range(0, rows, CHUNK):
            batch, defects, reviews = [], [], []
            for k in range(start, min(rows, start + CHUNK)):
                # ids rise with time, as a monitor writes them; a jitter keeps ties rare
                age = span * (1 - (k + rng.random()) / rows)
                finished = now - timedelta(seconds=age)
                fail = rng.random() < 0.10
                line = LINES[k % 4]
                batch.append(
                    {
                        "id": next_id,
                        "sha256": hashlib.sha256(f"bench-{k}".encode()).hexdigest(),
                        "uri": f"file:///cam/{k}.png",
                        "model_version_id": mv_id,
                        "status": "ok",
                        "verdict": "fail" if fail else "pass",
                        "camera": CAMERAS[(k // 4) % 2],
                        "line": line,
                        "width": 1024,
                        "height": 768,
                        "channels": 1,
                        "received_at": finished - timedelta(milliseconds=80),
                        "finished_at": finished,
                        "timings_ms": {"total": 80.0},
                        "total_ms": 80.0,
                        "n_defects": 1 if fail else 0,
                    }
                )
                if fail:
                    defects.append(
                        {
                            "inspection_id": next_id,
                            "class_index": 1 + k % 2,
                            "class_name": ("scratch", "dent")[k % 2],
                            "area": 120,
                            "bbox_x": 10,
                            "bbox_y": 10,
                            "bbox_w": 12,
                            "bbox_h": 10,
                            "centroid_x": 16.0,
                            "centroid_y": 15.0,
                            "perimeter": 44.0,
                            "mean_score": 0.7,
                            "max_score": 0.5 + 0.5 * rng.random(),
                            "polygon": [[10, 10], [21, 10], [21, 19], [10, 19]],
                        }
                    )
                if rng.random() < 0.01:
                    reviews.append(
                        {
                            "inspection_id": next_id,
                            "decision": "confirm" if rng.random() < 0.8 else "reject",
                            "operator": "bench",
                            "created_at": finished,
                        }
                    )
                next_id += 1
            c.execute(ins.insert(), batch)
            if defects:
                c.execute(dfs.insert(), defects)
            if reviews:
                c.execute(rvs.insert(), reviews)
        metrics = [
            {
                "flow_run_id": f"bench-{line}",
                "line": line,
                "window_start": now - timedelta(minutes=m + 1),
                "window_end": now - timedelta(minutes=m),
                "processed": 20,
                "rejected": 0,
                "latency_p50_ms": 70.0,
                "latency_p95_ms": 95.0,
                "created_at": now,
            }
            for line in LINES
            for m in range(7 * 24 * 60)
        ]
        c.execute(RunMetric.__table__.insert(), metrics)
        # What monitors say about themselves (the Lines page's health reads the newest of each
        # kind per line): a few hundred events per line over the week.
        kinds = (
            ("engine_in_use", {"engine": "openvino-int8"}),
            ("plant_fault", {"error": "ArchiveFullError: disk full"}),
            ("plant_fault_cleared", {}),
            ("line_behind", {"backlog": 40}),
            ("line_caught_up", {"backlog": 0}),
            ("batch_failed", {}),
        )
        events = [
            {
                "kind": kind,
                "level": "info",
                "line": line,
                "message": f"{kind} on {line}",
                "details": details,
                "created_at": now - timedelta(minutes=25 * k + 5 * j),
            }
            for line in LINES
            for k in range(7 * 24 * 60 // 25)
            for j, (kind, details) in enumerate(kinds)
            if (k + j) % 4 == 0
        ]
        c.execute(Event.__table__.insert(), events)
        drift = [
            {
                "line": line,
                "camera": camera,
                "model_version": "unet-bench-console",
                "window_start": now - timedelta(minutes=10 * w + 10),
                "window_end": now - timedelta(minutes=10 * w),
                "n": 250,
                "statistics": {},
                "thresholds": {},
                "state": "warning" if w % 50 == 7 else "ok",
                "hints": ["images darker than the reference"] if w % 50 == 7 else [],
                "created_at": now,
            }
            for line in LINES
            for camera in CAMERAS
            for w in range(7 * 24 * 6)
        ]
        c.execute(DriftWindowRow.__table__.insert(), drift)
        if engine.dialect.name == "postgresql":
            c.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('inspections', 'id'), "
                "(SELECT max(id) FROM inspections))"
            )
    fill_s = time.perf_counter() - t0
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE")
    engine.dispose()
    return {"fill_s": round(fill_s, 1), "rows_per_s": round(rows / fill_s)}


def _measure(url: str, var: Path, requests: int, now: datetime) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from defectscan.config import Settings
    from defectscan.console.app import create_app
    from defectscan.store.console_queries import encode_cursor

    app = create_app(Settings(var_dir=var, database_url=url))
    half = encode_cursor(now - timedelta(days=15), 10**12)
    pages = {
        "gallery": "/inspections",
        "gallery_filtered": "/inspections?line=L2&verdict=fail&class_name=dent&since=7d",
        "gallery_deep": f"/inspections/items?cursor={half}",
        "lines": "/lines/table",
    }
    out: dict[str, Any] = {}
    with TestClient(app) as client:
        login = client.get("/login")
        token = login.text.split('name="csrf_token" value="')[1].split('"')[0]
        r = client.post(
            "/login",
            data={"csrf_token": token, "username": "bench", "password": "bench-password-1"},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text[:300]
        for name, path in pages.items():
            times = []
            for i in range(requests + 2):
                t = time.perf_counter()
                resp = client.get(path)
                dt = (time.perf_counter() - t) * 1000
                assert resp.status_code == 200, (path, resp.status_code)
                if i >= 2:
                    times.append(dt)
            times.sort()
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            out[name] = {
                "path": path,
                "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(p95, 1),
                "max_ms": round(times[-1], 1),
                "items": resp.text.count('class="thumb '),
                "under_300ms": p95 < 300,
            }
    app.state.console.engine.dispose()
    return out


@contextmanager
def _database(kind: str, tmp: Path) -> Any:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'console-bench.db'}"
        return
    from defectscan.store.db import scratch_database

    admin = os.environ.get("DEFECTSCAN_TEST_PG_URL", PG_DEFAULT)
    with scratch_database(admin, prefix="defectscan_bench_console") as url:
        yield url


def run(rows: int, requests: int, databases: list[str]) -> dict[str, Any]:
    """Fill each database, measure each page; the JSON document."""
    now = datetime.now(UTC)
    result: dict[str, Any] = {
        "schema": "defectscan-bench-console/1",
        "created_at": now.isoformat(),
        "rows": rows,
        "requests": requests,
        "loadavg_start": os.getloadavg(),
        "databases": {},
    }
    for kind in databases:
        with tempfile.TemporaryDirectory(prefix="defectscan-bench-console-") as tmp:
            try:
                with _database(kind, Path(tmp)) as url:
                    print(f"[{kind}] filling {rows:,} inspections ...", flush=True)
                    fill = _fill(url, rows, now=now)
                    print(f"[{kind}] filled in {fill['fill_s']} s; measuring", flush=True)
                    pages = _measure(url, Path(tmp) / "var", requests, now)
                    result["databases"][kind] = {**fill, "pages": pages}
            except sa.exc.OperationalError as exc:
                result["databases"][kind] = {"error": str(exc).splitlines()[0]}
    result["loadavg_end"] = os.getloadavg()
    return result


def _table(result: dict[str, Any]) -> str:
    lines = [f"console pages over {result['rows']:,} inspections ({result['requests']} requests)"]
    lines.append(f"{'database':<11}{'page':<18}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}  < 300")
    for kind, d in result["databases"].items():
        if "error" in d:
            lines.append(f"{kind:<11}error: {d['error']}")
            continue
        for name, p in d["pages"].items():
            ok = "yes" if p["under_300ms"] else "NO"
            lines.append(
                f"{kind:<11}{name:<18}{p['p50_ms']:>8}{p['p95_ms']:>8}{p['max_ms']:>8}  {ok}"
            )
        lines.append(f"{'':<11}fill: {d['fill_s']} s ({d['rows_per_s']:,} rows/s)")
    return "\n".join(lines)


def run_console(cfg: BenchConfig, notes: list[str], log: Log) -> list[dict[str, Any]]:
    """The ``console`` section of ``bench.py``: one row per database and page."""
    rows = cfg.console_rows
    if cfg.quick:
        rows, requests, databases = min(rows, 2000), 2, ["sqlite"]
    else:
        requests, databases = cfg.console_requests, list(cfg.console_databases)
    log(f"console: {rows:,} inspections, {requests} requests per page, {', '.join(databases)}")
    result = run(rows, requests, databases)
    out: list[dict[str, Any]] = []
    for kind, d in result["databases"].items():
        if "error" in d:
            out.append({"name": kind, "database": kind, "rows": rows, "error": d["error"]})
            notes.append(f"console: {kind} not measured: {d['error']}")
            continue
        for page, p in d["pages"].items():
            out.append(
                {
                    "name": f"{kind} {page}",
                    "database": kind,
                    "page": page,
                    "rows": rows,
                    "requests": requests,
                    "fill_s": d["fill_s"],
                    **{k: p[k] for k in ("path", "p50_ms", "p95_ms", "max_ms", "under_300ms")},
                    "error": None,
                }
            )
    slow = [r["name"] for r in out if r.get("under_300ms") is False]
    if slow:
        notes.append(f"console: p95 over 300 ms for {', '.join(slow)} at {rows:,} rows")
    return out


def print_console_table(payload: dict[str, Any]) -> None:
    """The console section's table, when it ran."""
    rows = payload.get("console") or []
    if not rows:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"console pages over {rows[0]['rows']:,} inspections (p95 target 300 ms)")
    for col in ("database", "page", "p50 ms", "p95 ms", "max ms", "< 300 ms", "fill s"):
        table.add_column(col)
    for r in rows:
        if r.get("error"):
            table.add_row(r["database"], "-", "-", "-", "-", "-", f"error: {r['error']}")
            continue
        table.add_row(
            r["database"],
            r["page"],
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            f"{r['max_ms']:.1f}",
            "yes" if r["under_300ms"] else "NO",
            f"{r['fill_s']}",
        )
    Console(width=160).print(table)


def main(argv: list[str] | None = None) -> int:
    """Command line: fill, measure, print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=Path("var/bench/console.json"))
    args = parser.parse_args(argv)
    result = run(args.rows, args.requests, [d for d in args.databases.split(",") if d])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(_table(result))
    print(f"JSON: {args.out}")
    slow = [
        (k, n)
        for k, d in result["databases"].items()
        for n, p in d.get("pages", {}).items()
        if not p["under_300ms"]
    ]
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
