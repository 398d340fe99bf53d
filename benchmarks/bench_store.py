"""Write throughput of the results database: inspections (5 defects each) per second.

Compares batched saves (one transaction per batch: one INSERT ... ON CONFLICT for the
inspections, one bulk insert for their defects) with row-by-row saves (one transaction per
inspection), on a SQLite file in WAL mode and on a throwaway PostgreSQL database.

``bench.py``'s ``store`` section is :func:`run_store`; on its own:

    python benchmarks/bench_store.py [--n 2000] [--batch 200]

Prints a table and writes JSON to ``var/bench/store.json``. PostgreSQL is taken from
``DEFECTSCAN_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``),
which must be allowed to create databases; without it only SQLite is measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from defectscan.config import get_settings
from defectscan.store.db import (
    make_engine,
    retrying,
    scratch_database,
    session_factory,
    upgrade_to_head,
)
from defectscan.store.inspection_writes import save_inspection, save_inspections
from defectscan.store.model_versions import ensure_model_version
from defectscan.store.records import DefectRecord, InspectionRecord

if TYPE_CHECKING:  # types only: this benchmark runs on its own without importing torch
    from bench_common import BenchConfig, Log

__all__ = ["run", "run_store"]

VERSION = "unet-bench-000000000000"
PG_ADMIN_URL = os.environ.get(
    "DEFECTSCAN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _records(n: int, prefix: str) -> list[InspectionRecord]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    defects = [
        DefectRecord(
            class_index=1 + k % 2,
            class_name=("scratch", "dent")[k % 2],
            area=100 + k,
            bbox=(10 * k, 12, 20, 8),
            centroid=(10 * k + 10.0, 16.0),
            perimeter=56.0,
            mean_score=0.81,
            max_score=0.97,
            polygon=[[10 * k, 12], [10 * k + 20, 12], [10 * k + 20, 20], [10 * k, 20]],
        )
        for k in range(5)
    ]
    return [
        InspectionRecord(
            sha256=hashlib.sha256(f"{prefix}-{i}".encode()).hexdigest(),
            uri=f"file:///cam/{prefix}/{i:06d}.png",
            model_version=VERSION,
            status="ok",
            verdict="fail",
            camera=f"cam{i % 4}",
            line=f"L{i % 2}",
            width=1024,
            height=768,
            channels=3,
            received_at=t0 + timedelta(seconds=i),
            finished_at=t0 + timedelta(seconds=i, milliseconds=40),
            timings_ms={"decode": 3.0, "infer": 30.0, "post": 5.0, "total": 40.0},
            defects=defects,
        )
        for i in range(n)
    ]


@contextmanager
def _sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"


def _pg_available() -> bool:
    engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def _measure(url: str, database: str, n: int, batch: int) -> list[dict[str, Any]]:
    engine = make_engine(url)
    try:
        upgrade_to_head(engine)
        sessions = session_factory(engine, write=True)
        with sessions.begin() as session:
            ensure_model_version(
                session=session,
                version=VERSION,
                sha256="0" * 64,
                name="unet-bench",
                checkpoint_path=None,
                spec={},
                activation="sigmoid",
                class_names=["scratch", "dent"],
            )
        results = []
        # row by row: one transaction (and commit) per inspection
        rows = _records(n, "row")
        started = time.perf_counter()
        for record in rows:
            retrying(
                lambda session, r=record: save_inspection(r, session=session), sessions=sessions
            )
        seconds = time.perf_counter() - started
        results.append(_result(database, "row-by-row", n, 1, seconds))
        # batched: one transaction per batch
        records = _records(n, "batch")
        started = time.perf_counter()
        inserted = 0
        for i in range(0, n, batch):
            chunk = records[i : i + batch]
            inserted += retrying(
                lambda session, c=chunk: save_inspections(c, session=session), sessions=sessions
            ).inserted
        seconds = time.perf_counter() - started
        assert inserted == n, f"batched run stored {inserted} of {n}"
        results.append(_result(database, "batched", n, batch, seconds))
        # the same batches delivered again: all duplicates, nothing written
        started = time.perf_counter()
        for i in range(0, n, batch):
            chunk = records[i : i + batch]
            retrying(
                lambda session, c=chunk: save_inspections(c, session=session), sessions=sessions
            )
        seconds = time.perf_counter() - started
        results.append(_result(database, "batched redelivery", n, batch, seconds))
        return results
    finally:
        engine.dispose()


def _result(database: str, mode: str, n: int, batch: int, seconds: float) -> dict[str, Any]:
    return {
        "database": database,
        "mode": mode,
        "inspections": n,
        "defects_per_inspection": 5,
        "batch": batch,
        "seconds": round(seconds, 4),
        "inspections_per_s": round(n / seconds, 1),
    }


def run(n: int = 2000, batch: int = 200) -> list[dict[str, Any]]:
    """Measure batched vs row-by-row writes on SQLite and (if reachable) PostgreSQL."""
    results = []
    with _sqlite_url() as url:
        results += _measure(url, "sqlite (file, WAL)", n, batch)
    if _pg_available():
        with scratch_database(PG_ADMIN_URL, prefix="defectscan_bench") as url:
            results += _measure(url, "postgresql", n, batch)
    by_db: dict[str, dict[str, float]] = {}
    for r in results:
        by_db.setdefault(r["database"], {})[r["mode"]] = r["inspections_per_s"]
    for r in results:
        r["speedup_vs_row_by_row"] = round(
            r["inspections_per_s"] / by_db[r["database"]]["row-by-row"], 1
        )
    return results


def run_store(cfg: BenchConfig, notes: list[str], log: Log) -> list[dict[str, Any]]:
    """The results-store write benchmark as a section of ``bench.py`` (:func:`run`)."""
    log(f"store: {cfg.store_n} inspections per mode")
    rows = run(cfg.store_n, cfg.store_batch)
    if not any(r["database"] == "postgresql" for r in rows):
        notes.append(
            f"store: PostgreSQL unreachable at {PG_ADMIN_URL} "
            "(set DEFECTSCAN_TEST_PG_URL): only SQLite measured"
        )
    return rows


def main() -> None:
    """Command-line entry: run, print a table, write JSON."""
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="inspections per mode")
    parser.add_argument("--batch", type=int, default=200, help="inspections per batch")
    args = parser.parse_args()
    results = run(args.n, args.batch)

    table = Table(title=f"results database writes: {args.n} inspections x 5 defects")
    for column in ("database", "mode", "batch", "seconds", "inspections/s", "vs row-by-row"):
        table.add_column(column, justify="left" if column in ("database", "mode") else "right")
    for r in results:
        table.add_row(
            r["database"],
            r["mode"],
            str(r["batch"]),
            f"{r['seconds']:.2f}",
            f"{r['inspections_per_s']:.0f}",
            f"{r['speedup_vs_row_by_row']:.1f}x",
        )
    console = Console()
    console.print(table)
    out = get_settings().var_dir / "bench" / "store.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "store",
        "created_at": datetime.now(UTC).isoformat(),
        "n": args.n,
        "batch": args.batch,
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
