"""Measured, not asserted: how long the local stack takes to come up, and how long from
an upload until the new champion serves predictions, per orchestration mode.

    python -m bench.pipeline_latency [--stack-file Pulumi.dev.yaml] [--mode workflow ...]

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from components.config import ORCHESTRATIONS
from devstack import runs
from devstack.demo import write_iris_csv
from devstack.errors import DevstackError
from devstack.plan import REPO_ROOT
from devstack.stack import load_state

_SERVING_TIMEOUT_SECONDS = 120.0


def _devstack(state_dir: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "devstack", "--state-dir", str(state_dir), *args],
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _progress(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def measure_mode(mode: str, stack_file: Path, work_dir: Path) -> dict[str, Any]:
    state_dir = work_dir / mode
    started = time.perf_counter()
    _devstack(state_dir, "up", "--detach", "--stack-file", str(stack_file), "--orchestration", mode)
    up_seconds = time.perf_counter() - started
    try:
        state = load_state(state_dir)
        data = work_dir / "iris.csv"
        sample = write_iris_csv(data, "target")
        uploaded = time.perf_counter()
        summary = runs.upload_and_follow(
            state, data, name="iris.csv", timeout=_SERVING_TIMEOUT_SECONDS, progress=_progress
        )
        summary_seconds = time.perf_counter() - uploaded
        deadline = uploaded + _SERVING_TIMEOUT_SECONDS
        while time.perf_counter() < deadline:
            served = runs.predict(state, {"instances": [sample]})
            if served.get("model_version") == summary["champion_version"]:
                break
            time.sleep(0.1)
        else:
            raise TimeoutError("the new champion was not served in time")
        serving_seconds = time.perf_counter() - uploaded
    finally:
        _devstack(state_dir, "down")
    return {
        "up_detach_seconds": round(up_seconds, 2),
        "upload_to_summary_seconds": round(summary_seconds, 2),
        "upload_to_champion_serving_seconds": round(serving_seconds, 2),
        "model_version": summary["model_version"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_latency")
    parser.add_argument("--stack-file", type=Path, default=REPO_ROOT / "Pulumi.dev.yaml")
    parser.add_argument("--mode", action="append", choices=ORCHESTRATIONS)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="devstack-bench-") as work:
        for mode in args.mode or ORCHESTRATIONS:
            _progress(f"measuring {mode} mode")
            try:
                results[mode] = measure_mode(mode, args.stack_file.resolve(), Path(work))
            except (subprocess.CalledProcessError, TimeoutError, DevstackError) as error:
                results[mode] = {"error": str(error)}
    document = {
        "benchmark": "pipeline_latency",
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "stack_file": str(args.stack_file),
        "results": results,
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
