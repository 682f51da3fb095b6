"""Measured, not asserted: peak memory of process_data's core on a large upload.

The upload lives in a real fake-gcs-server process and is read through the real
google-cloud-storage client (``GcsStorage``), so the measured process holds only what
the processing keeps: one chunk of rows, one 16-byte hash per distinct row, and the
running statistics. Each size runs in a fresh child process whose peak RSS is read
from the kernel; an idle child (same imports, no processing) gives the baseline.

    python -m bench.processing_memory [--rows 200000 1000000 ...]

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from devstack.plan import LOOPBACK, ServicePlan, fake_gcs_binary
from devstack.processes import start_service, stop_group, wait_until_healthy
from devstack.stack import allocate_ports

BUCKET = "bench-data"
PROJECT = "bench-project"
FEATURES = ("sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)")


def _write_csv(path: Path, rows: int) -> None:
    """Distinct rows (the worst case for duplicate detection), three classes."""
    generator = random.Random(rows)
    with path.open("w", encoding="utf-8") as out:
        out.write(",".join(f'"{name}"' for name in FEATURES) + ",target\n")
        for index in range(rows):
            values = ",".join(f"{generator.uniform(0, 10):.6f}" for _ in FEATURES)
            out.write(f"{values},{index % 3}\n")


def _child(generation: int, object_name: str, idle: bool) -> None:
    """Runs in the measured process: the processing core over the real client."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "function_src"))
    from pipeline_core.events import ObjectRef
    from pipeline_core.processing import DatasetSchema, process
    from pipeline_core.storage import GcsStorage

    report: dict[str, Any] = {}
    if not idle:
        started = time.perf_counter()
        result = process(
            GcsStorage(BUCKET, PROJECT),
            ObjectRef(BUCKET, object_name, generation),
            DatasetSchema(),
        )
        report["seconds"] = round(time.perf_counter() - started, 2)
        report["rows_out"] = result.to_json()["rows_out"]
    # Linux reports the peak resident set size in KiB.
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report))


def _measure(storage_url: str, generation: int, object_name: str, *, idle: bool) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.processing_memory", "--child", str(generation), object_name]
        + (["--idle"] if idle else []),
        env={**os.environ, "STORAGE_EMULATOR_HOST": storage_url},
        check=True,
        capture_output=True,
        text=True,
    )
    # The core logs JSON lines to stdout as well; the report is the last line.
    measured: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument(
        "--child", nargs=2, metavar=("GENERATION", "OBJECT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--idle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(int(args.child[0]), args.child[1], args.idle)
        return

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = allocate_ports(("storage",))["storage"]
    plan = ServicePlan(
        name="storage",
        port=port,
        argv=(str(fake_gcs_binary()), "-scheme", "http", "-host", LOOPBACK, "-port", str(port),
              "-backend", "memory", "-external-url", f"http://{LOOPBACK}:{port}"),
        env={},
        health_path="/storage/v1/b",
    )  # fmt: skip
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        server = start_service(plan, Path(scratch))
        try:
            wait_until_healthy([server], timeout=30, hints={})
            os.environ["STORAGE_EMULATOR_HOST"] = server.url
            client = storage.Client(
                project=PROJECT,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            )
            bucket = client.create_bucket(BUCKET)
            baseline = None
            for rows in sorted(args.rows):
                path = Path(scratch) / f"rows-{rows}.csv"
                print(f"bench: generating {rows} rows", file=sys.stderr)
                _write_csv(path, rows)
                blob = bucket.blob(f"raw/rows-{rows}.csv")
                blob.upload_from_filename(str(path))
                if baseline is None:
                    baseline = _measure(server.url, blob.generation, blob.name, idle=True)
                print(f"bench: processing {rows} rows", file=sys.stderr)
                measured = _measure(server.url, blob.generation, blob.name, idle=False)
                results.append(
                    {"rows": rows, "file_mb": round(path.stat().st_size / 2**20, 1), **measured}
                )
                path.unlink()
        finally:
            stop_group(server)
    print(
        json.dumps(
            {
                "benchmark": "processing_memory",
                "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
                "baseline_rss_mb": baseline["peak_rss_mb"] if baseline else None,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
