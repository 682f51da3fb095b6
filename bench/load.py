"""Measured, not asserted: the local stack under load, per orchestration mode.

For each mode, ``python -m devstack up --detach`` starts the whole stack (loopback, its
own state folder, stopped with ``down``, which signals exactly the recorded process
groups), an iris upload trains the champion, and then:

* predictions: one-row valid requests to predict at concurrency 1, 8 and 32 for
  ``--duration`` seconds per measurement (which bounds their number), interleaved per
  repetition (``wrk`` when installed, the bounded Python client otherwise: the clients
  of ``bench.serving``), in the first mode only (predict is the same process in both);
* concurrent uploads: ``--uploads`` copies of iris uploaded at once (each ties the
  champion), every run followed to its summary: runs finished out of runs started and
  the time from the uploads to the last summary, repeated ``--rounds`` times.

    python -m bench.load [--mode workflow ...] [--quick]

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.serving import (
    PREDICTION_MARKER,
    LoadClient,
    Measurement,
    Target,
    choose_client,
    commit_description,
    machine_description,
    summarize,
)
from components.config import ORCHESTRATIONS
from devstack import runs
from devstack.cli import positive
from devstack.demo import write_iris_csv
from devstack.plan import REPO_ROOT
from devstack.stack import StackState, load_state

CONCURRENCIES = (1, 8, 32)
RUN_TIMEOUT_SECONDS = 300.0
CLIENTS = ("auto", "wrk", "python")


def _progress(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


@contextmanager
def local_stack(mode: str, stack_file: Path, state_dir: Path) -> Iterator[StackState]:
    """The stack as a person starts it; ``down`` stops it however the block ends."""
    command = [sys.executable, "-m", "devstack", "--state-dir", str(state_dir)]
    up = [*command, "up", "--detach", "--stack-file", str(stack_file), "--orchestration", mode]
    subprocess.run(up, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
    try:
        yield load_state(state_dir)
    finally:
        subprocess.run([*command, "down"], cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)


def measure_predictions(
    state: StackState,
    client: LoadClient,
    scratch: Path,
    *,
    body: bytes,
    duration: int,
    repetitions: int,
) -> dict[str, Any]:
    """Each concurrency level once per repetition, in turn."""
    port = urlsplit(state.service("predict").url).port
    assert port is not None  # the stack's services have explicit ports
    target = Target("predict", port, body, 200, PREDICTION_MARKER)
    measured: dict[int, list[Measurement]] = {level: [] for level in CONCURRENCIES}
    for repetition in range(repetitions):
        for level in CONCURRENCIES:
            result = client(target, level, duration, scratch)
            _progress(
                f"{repetition + 1}/{repetitions} c{level}: {result.req_per_s:.0f} req/s, "
                f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, {result.errors} errors"
            )
            measured[level].append(result)
    figures: dict[str, Any] = {}
    for level, found in measured.items():
        rates = [run.req_per_s for run in found]
        figures[f"c{level}"] = summarize(found) | {
            "req_per_s_range": [round(min(rates), 1), round(max(rates), 1)]
        }
    base = figures["c1"]["req_per_s"]
    figures["ratios_to_c1_req_per_s"] = {
        f"c{level}": round(figures[f"c{level}"]["req_per_s"] / base, 2) if base else None
        for level in CONCURRENCIES[1:]
    }
    return figures


def measure_uploads(state: StackState, data: Path, *, uploads: int, rounds: int) -> dict[str, Any]:
    """``uploads`` runs at once per round; finished means a summary with status
    succeeded."""
    results = []
    for round_number in range(rounds):
        files = {f"load/round-{round_number}/copy-{index}.csv": data for index in range(uploads)}
        started = time.perf_counter()
        summaries = runs.upload_all_and_follow(
            state, files, timeout=RUN_TIMEOUT_SECONDS, progress=lambda _line: None
        )
        seconds = time.perf_counter() - started
        finished = sum(summary.get("status") == "succeeded" for summary in summaries)
        _progress(
            f"uploads round {round_number + 1}/{rounds}: {finished}/{uploads} in {seconds:.1f} s"
        )
        results.append(
            {
                "runs_started": uploads,
                "runs_finished": finished,
                "seconds_to_last_summary": round(seconds, 2),
                "promoted": sum(bool(summary.get("promoted")) for summary in summaries),
                "not_finished": [
                    summary for summary in summaries if summary.get("status") != "succeeded"
                ],
            }
        )
    times = [result["seconds_to_last_summary"] for result in results]
    return {
        "runs_finished": sum(result["runs_finished"] for result in results),
        "runs_started": sum(result["runs_started"] for result in results),
        "seconds_to_last_summary_median": round(statistics.median(times), 2),
        "seconds_to_last_summary_range": [min(times), max(times)],
        "rounds": results,
    }


def measure_mode(
    mode: str,
    stack_file: Path,
    work: Path,
    *,
    client: LoadClient | None,
    options: argparse.Namespace,
) -> dict[str, Any]:
    data = work / "iris.csv"
    sample = write_iris_csv(data, "target")
    with local_stack(mode, stack_file, work / mode) as state:
        champion = runs.upload_and_follow(
            state, data, name="iris.csv", timeout=RUN_TIMEOUT_SECONDS, progress=_progress
        )
        result: dict[str, Any] = {"champion_version": champion["champion_version"]}
        if client is not None:
            result["predictions"] = measure_predictions(
                state,
                client,
                work,
                body=json.dumps({"instances": [sample]}).encode(),
                duration=options.duration,
                repetitions=options.repetitions,
            )
        result["concurrent_uploads"] = measure_uploads(
            state, data, uploads=options.uploads, rounds=options.rounds
        )
    return result


def _stop_on_sigterm(_signal: int, _frame: object) -> None:
    raise SystemExit(128 + signal.SIGTERM)  # unwinds, so 'down' runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--stack-file", type=Path, default=REPO_ROOT / "Pulumi.dev.yaml")
    parser.add_argument("--mode", action="append", choices=ORCHESTRATIONS)
    parser.add_argument("--duration", type=positive(int), help="seconds per measurement (5)")
    parser.add_argument("--repetitions", type=positive(int), help="interleaved rounds (3)")
    parser.add_argument("--uploads", type=positive(int), help="uploads at once (6)")
    parser.add_argument("--rounds", type=positive(int), help="rounds of concurrent uploads (3)")
    parser.add_argument("--client", choices=CLIENTS, default="auto", help="load client (auto)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small and once")
    args = parser.parse_args(argv)
    args.duration = args.duration or (1 if args.quick else 5)
    args.repetitions = args.repetitions or (1 if args.quick else 3)
    args.uploads = args.uploads or 6
    args.rounds = args.rounds or (1 if args.quick else 3)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    client, client_info = choose_client(args.client)
    _progress(f"load client: {client_info['name']}")
    modes = args.mode or list(ORCHESTRATIONS)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as work:
        for index, mode in enumerate(modes):
            _progress(f"measuring {mode} mode")
            results[mode] = measure_mode(
                mode,
                args.stack_file.resolve(),
                Path(work),
                client=client if index == 0 else None,
                options=args,
            )
    document = {
        "benchmark": "load",
        "machine": machine_description(),
        "commit": commit_description(),
        "client": client_info,
        "settings": {
            "stack_file": str(args.stack_file),
            "seconds_per_measurement": args.duration,
            "repetitions": args.repetitions,
            "uploads_at_once": args.uploads,
            "upload_rounds": args.rounds,
            "predictions_measured_in": modes[0],
        },
        "results": results,
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
