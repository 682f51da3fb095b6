"""Measured, not asserted: process_data's throughput and peak memory against the pandas
a user would write by hand, on the same generated files, in one run.

Ours reads the upload from a real fake-gcs-server process through the real
google-cloud-storage client (``GcsStorage``) and writes the Parquet back there; the
pandas peer (``read_csv`` + ``dropna`` + ``drop_duplicates`` + ``to_parquet``) reads
the same file from the local disk, which favours it; so ours runs a second time over the
local disk too (``bench.directory_storage``), the peer's very I/O. Every measurement runs in a
fresh child process whose peak RSS is read from the kernel; an idle child (same
imports as ours, no work) gives the baseline. Variants interleave (ours, pandas, ours,
pandas, ...) so that a neighbour's load on the machine hits both alike. A third child
times the emulator alone (the same download, and uploads of as many bytes in as many
parts as our Parquet); ``emulator_io.share_of_ours`` is that time over ours (both overlap our
cleaning, so ours can be no faster than the emulator), and its download and upload
rates are the emulator's own throughput in the same run. Files of distinct rows spill
every 1M digests (``deduplication``), so from 10M rows the spilled digests (20 bytes a
row each way) go through the same store as well.

    python -m bench.processing [--rows 1000000 10000000 28000000] [--repeats N]
    python -m bench.processing --rows 200000 --repeats 1       # a quick run
    python -m bench.processing --end-to-end 28000000           # through the local stack

Prints one JSON document on stdout; progress goes to stderr. The default run (1M, 10M
and 28M rows: 36 MB, 362 MB, 1 GB; three, two and one repeats; pandas up to 10M rows,
beyond that it holds several GB) takes about ten minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devstack.plan import LOOPBACK, REPO_ROOT, ServicePlan, fake_gcs_binary
from devstack.processes import start_service, stop_group, wait_until_healthy
from devstack.stack import StackState, allocate_ports
from pipeline_core.contract import STREAMING_ALLOCATOR, part_objects

BUCKET = "bench-data"
PROJECT = "bench-project"
FEATURES = ("sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)")
DEFAULT_ROWS = (1_000_000, 10_000_000, 28_000_000)
PANDAS_MAX_ROWS = 10_000_000
_GENERATED_ROWS_AT_ONCE = 1_000_000
# Ours through the emulator, and ours on the peer's own I/O (the local disk): the key of
# each in a result, and the suffix of its ratio and target checks.
VARIANTS_AGAINST_PANDAS = (("ours", ""), ("ours_local_disk", "_local_disk"))
TARGETS = {
    "min_mb_per_second": 50.0,
    "min_ratio_to_pandas": 1.5,
    "max_peak_rss_mb_at_1gb": 400.0,
    "max_peak_rss_growth_over_smallest": 0.15,
}


def _progress(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def write_csv(path: Path, rows: int) -> None:
    """Distinct rows (the worst case for duplicate detection): four features with six
    decimals in [0, 10), three classes; about 36 bytes a row. Vectorized, so that a GB
    takes seconds. The class is the third of [0, 20) the first two features' sum falls
    in: a boundary a forest learns, so that an upload end to end trains a model good
    enough to become the champion (with labels independent of the features it never
    would, and the run would end before serving)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    generator = np.random.default_rng(rows)
    with path.open("wb") as out:
        out.write((",".join(f'"{name}"' for name in FEATURES) + ",target\n").encode())
        for start in range(0, rows, _GENERATED_ROWS_AT_ONCE):
            count = min(_GENERATED_ROWS_AT_ONCE, rows - start)
            micros = generator.integers(0, 10_000_000, size=(len(FEATURES), count))
            cells = [
                pc.binary_join_element_wise(
                    pc.cast(pa.array(column // 1_000_000), pa.string()),
                    pc.utf8_lpad(pc.cast(pa.array(column % 1_000_000), pa.string()), 6, "0"),
                    ".",
                )
                for column in micros
            ]
            labels = pc.cast(pa.array((micros[0] + micros[1]) * 3 // 20_000_000), pa.string())
            line = pc.binary_join_element_wise(*cells, labels, ",")
            text = pc.binary_join_element_wise(line, pa.scalar(""), "\n")
            _, offsets, data = text.buffers()
            bounds = np.frombuffer(offsets, dtype=np.int32)[[0, len(text)]]
            out.write(memoryview(data)[bounds[0] : bounds[1]])


def peak_rss_mb() -> float:
    """The kernel's high-water mark of this process image (VmHWM, in KiB). Not
    getrusage's ru_maxrss: that one survives exec, so a child would report its
    parent's peak whenever the parent had been bigger."""
    status = Path("/proc/self/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 1024, 1)


def _child_ours(generation: int, object_name: str) -> dict[str, Any]:
    from pipeline_core.events import ObjectRef
    from pipeline_core.processing import DatasetSchema, process
    from pipeline_core.storage import GcsStorage

    # As in a function instance that has served a request: client made, connection open,
    # the client library's lazily imported modules loaded.
    storage = GcsStorage(BUCKET, PROJECT)
    storage.stat(object_name)
    started = time.perf_counter()
    result = process(storage, ObjectRef(BUCKET, object_name, generation), DatasetSchema())
    seconds = time.perf_counter() - started
    parts = [
        storage.stat(name)
        for name in part_objects(result.stats["processed_data"], result.stats["processed_parts"])
    ]
    return {
        "seconds": seconds,
        "rows_out": result.stats["rows_out"],
        "parquet_bytes": sum(part.size for part in parts if part),
        "parquet_parts": len(parts),
    }


def _child_ours_disk(csv_path: str) -> dict[str, Any]:
    """The same core over the local disk (``DirectoryStorage``): the peer's I/O."""
    from bench.directory_storage import DirectoryStorage
    from pipeline_core.events import ObjectRef
    from pipeline_core.processing import DatasetSchema, process

    source = Path(csv_path)
    root = source.parent / "bucket"
    name = f"raw/{source.name}"
    (root / "raw").mkdir(parents=True, exist_ok=True)
    if not (root / name).exists():
        os.link(source, root / name)  # the generated file itself, not a copy
    storage = DirectoryStorage(root, BUCKET)
    info = storage.stat(name)
    assert info is not None
    started = time.perf_counter()
    result = process(storage, ObjectRef(BUCKET, name, info.generation), DatasetSchema())
    seconds = time.perf_counter() - started
    shutil.rmtree(root / "processed")  # the next run must process again
    return {"seconds": seconds, "rows_out": result.stats["rows_out"]}


def _child_emulator_io(
    generation: int, object_name: str, parquet_bytes: int, parts: int
) -> dict[str, Any]:
    """What ours spends in the emulator alone: the same download, and an upload of as
    many bytes as our Parquet in as many parts, through the same client and sizes."""
    from pipeline_core.storage import GcsStorage

    storage = GcsStorage(BUCKET, PROJECT)
    storage.stat(object_name)
    started = time.perf_counter()
    with storage.open_read(object_name, generation) as source:
        while source.read(4 * 2**20):
            pass
    read_seconds = time.perf_counter() - started
    part = bytes(-(-parquet_bytes // max(parts, 1)))
    for number in range(parts):
        storage.write(f"bench/io-{number}", part, content_type="application/octet-stream")
    seconds = time.perf_counter() - started  # ours deletes no part: neither is timed here
    for number in range(parts):
        storage.delete(f"bench/io-{number}")
    return {
        "seconds": seconds,
        "read_seconds": read_seconds,
        "rows_out": 0,
    }


def _child_pandas(csv_path: str) -> dict[str, Any]:
    import pandas as pd

    started = time.perf_counter()
    frame = pd.read_csv(csv_path).dropna().drop_duplicates()
    frame.to_parquet(csv_path + ".parquet")
    seconds = time.perf_counter() - started
    os.unlink(csv_path + ".parquet")
    return {"seconds": seconds, "rows_out": len(frame)}


def _child(variant: str, arguments: list[str]) -> None:
    """Runs in the measured process; its report is the last line of stdout."""
    sys.path.insert(0, str(REPO_ROOT / "function_src"))
    report: dict[str, Any] = {}
    if variant == "ours":
        report = _child_ours(int(arguments[0]), arguments[1])
    elif variant == "pandas":
        report = _child_pandas(arguments[0])
    elif variant == "ours_disk":
        report = _child_ours_disk(arguments[0])
    elif variant == "emulator_io":
        report = _child_emulator_io(
            int(arguments[0]), arguments[1], int(arguments[2]), int(arguments[3])
        )
    else:  # idle: the imports of ours, no work
        import pipeline_core.processing
        import pipeline_core.storage  # noqa: F401
    report["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(report))


def _measure(storage_url: str, variant: str, *arguments: str) -> dict[str, Any]:
    return measure_in_child(
        "bench.processing", storage_url, variant, *arguments, as_deployed=variant != "pandas"
    )


def measure_in_child(
    module: str, storage_url: str, *arguments: str, as_deployed: bool = True
) -> dict[str, Any]:
    """``python -m module --child ...`` against the emulator at ``storage_url``, in a
    process of its own (its peak RSS is the run's alone); its report is the last line.
    ``as_deployed``: with the allocator settings process_data and score_data are
    deployed with (``contract.STREAMING_ALLOCATOR``; the pandas peer runs as a user
    would run it, with the defaults)."""
    allocator = STREAMING_ALLOCATOR if as_deployed else {}
    completed = subprocess.run(
        [sys.executable, "-m", module, "--child", *arguments],
        env={**os.environ, "STORAGE_EMULATOR_HOST": storage_url, **allocator},
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    # The core logs JSON lines to stdout as well; the report is the last line.
    measured: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return measured


def _summary(runs: list[dict[str, Any]], file_mb: float) -> dict[str, Any]:
    rates = [file_mb / run["seconds"] for run in runs]
    return {
        "runs": len(runs),
        "seconds": [round(run["seconds"], 2) for run in runs],
        "mb_per_second": {
            "min": round(min(rates), 1),
            "median": round(statistics.median(rates), 1),
            "max": round(max(rates), 1),
        },
        "peak_rss_mb": {
            "min": min(run["peak_rss_mb"] for run in runs),
            "max": max(run["peak_rss_mb"] for run in runs),
        },
        "rows_out": runs[0]["rows_out"],
    }


def _repeats(rows: int, override: int | None) -> int:
    """Three runs up to 1M rows; fewer for the sizes that take tens of seconds a run."""
    if override is not None:
        return override
    return 3 if rows <= 1_000_000 else 2 if rows <= 10_000_000 else 1


def _measure_size(
    server_url: str, bucket: Any, scratch: Path, rows: int, *, repeats: int, pandas_max_rows: int
) -> dict[str, Any]:
    path = scratch / f"rows-{rows}.csv"
    _progress(f"generating {rows} rows")
    write_csv(path, rows)
    file_mb = path.stat().st_size / 2**20
    blob = bucket.blob(f"raw/rows-{rows}.csv")
    blob.upload_from_filename(str(path), timeout=600)
    ours: list[dict[str, Any]] = []
    ours_disk: list[dict[str, Any]] = []
    peer: list[dict[str, Any]] = []
    for repeat in range(repeats):
        _progress(f"{rows} rows ({file_mb:.0f} MB), run {repeat + 1}/{repeats}: ours")
        ours.append(_measure(server_url, "ours", str(blob.generation), blob.name))
        for processed in bucket.list_blobs(prefix="processed/"):
            processed.delete()  # the next run must process again, not read the outcome
        _progress(f"{rows} rows, run {repeat + 1}/{repeats}: ours, local disk")
        ours_disk.append(_measure(server_url, "ours_disk", str(path)))
        if rows <= pandas_max_rows:
            _progress(f"{rows} rows, run {repeat + 1}/{repeats}: pandas")
            peer.append(_measure(server_url, "pandas", str(path)))
    _progress(f"{rows} rows: the emulator's share (download + Parquet-sized upload)")
    emulator = _measure(
        server_url,
        "emulator_io",
        str(blob.generation),
        blob.name,
        str(ours[0]["parquet_bytes"]),
        str(ours[0]["parquet_parts"]),
    )
    blob.delete()
    path.unlink()
    parquet_mb = ours[0]["parquet_bytes"] / 2**20
    result: dict[str, Any] = {
        "rows": rows,
        "file_mb": round(file_mb, 1),
        "ours": _summary(ours, file_mb),
        "ours_local_disk": _summary(ours_disk, file_mb),
        "emulator_io": {
            "seconds": round(emulator["seconds"], 2),
            "download_seconds": round(emulator["read_seconds"], 2),
            "parquet_mb": round(parquet_mb, 1),
            "download_mb_per_second": round(file_mb / emulator["read_seconds"], 1),
            "upload_mb_per_second": round(
                parquet_mb / (emulator["seconds"] - emulator["read_seconds"]), 1
            ),
        },
    }
    # The download and the upload overlap our cleaning, so ours takes at least this long.
    result["emulator_io"]["share_of_ours"] = round(
        emulator["seconds"] / statistics.median(run["seconds"] for run in ours), 2
    )
    if peer:
        result["pandas"] = _summary(peer, file_mb)
        peer_rates = result["pandas"]["mb_per_second"]
        for variant, suffix in VARIANTS_AGAINST_PANDAS:
            rates = result[variant]["mb_per_second"]
            result[f"ratio_to_pandas{suffix}"] = {
                "median": round(rates["median"] / peer_rates["median"], 2),
                "worst": round(rates["min"] / peer_rates["max"], 2),
            }
    return result


def _targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of issue 9 for each variant of ours: its threshold, the value this
    run measured (None when the run had no file it applies to) and whether it is met."""
    checked: list[dict[str, Any]] = []

    def check(name: str, variant: str, value: float | None, met: bool | None) -> None:
        checked.append(
            {
                "name": name,
                "variant": variant,
                "target": TARGETS[name],
                "value": None if value is None else round(value, 3),
                "met": met,
            }
        )

    from_1m = [result for result in results if result["rows"] >= 1_000_000]
    smallest, largest = results[0], results[-1]
    for variant, suffix in VARIANTS_AGAINST_PANDAS:
        slowest = min((result[variant]["mb_per_second"]["min"] for result in from_1m), default=None)
        check(
            "min_mb_per_second",
            variant,
            slowest,
            None if slowest is None else slowest >= TARGETS["min_mb_per_second"],
        )
        ratios = [
            result[f"ratio_to_pandas{suffix}"]["median"]
            for result in from_1m
            if f"ratio_to_pandas{suffix}" in result
        ]
        lowest = min(ratios, default=None)
        check(
            "min_ratio_to_pandas",
            variant,
            lowest,
            None if lowest is None else lowest >= TARGETS["min_ratio_to_pandas"],
        )
        peak = largest[variant]["peak_rss_mb"]["max"]
        at_1gb = peak if largest["file_mb"] >= 900 else None
        check(
            "max_peak_rss_mb_at_1gb",
            variant,
            at_1gb,
            None if at_1gb is None else at_1gb <= TARGETS["max_peak_rss_mb_at_1gb"],
        )
        growth = peak / smallest[variant]["peak_rss_mb"]["max"] - 1
        check(
            "max_peak_rss_growth_over_smallest",
            variant,
            growth,
            growth <= TARGETS["max_peak_rss_growth_over_smallest"],
        )
    return checked


@contextmanager
def fake_gcs(scratch: Path, bucket: str) -> Iterator[tuple[str, Any]]:
    """fake-gcs-server (in memory, its files in ``scratch``) holding the empty ``bucket``,
    stopped on exit. Yields its URL, for children, and a client of it; this process's
    other clients reach it too (STORAGE_EMULATOR_HOST)."""
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
    server = start_service(plan, scratch)
    try:
        wait_until_healthy([server], timeout=30, hints={})
        os.environ["STORAGE_EMULATOR_HOST"] = server.url
        client = storage.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        )
        client.create_bucket(bucket)
        yield server.url, client
    finally:
        stop_group(server)


def measure_throughput(
    rows: list[int], repeats: int | None, pandas_max_rows: int
) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-processing-") as scratch,
        fake_gcs(Path(scratch), BUCKET) as (storage_url, client),
    ):
        baseline = _measure(storage_url, "idle")
        results = [
            _measure_size(
                storage_url,
                client.bucket(BUCKET),
                Path(scratch),
                size,
                repeats=_repeats(size, repeats),
                pandas_max_rows=pandas_max_rows,
            )
            for size in sorted(rows)
        ]
    targets = _targets(results)
    return {
        "baseline_rss_mb": baseline["peak_rss_mb"],
        "results": results,
        # A target's met is None when the run had no file it applies to (all sizes below
        # 1M rows, or none of ~1 GB); the run then does not count as meeting them all.
        "targets": targets,
        "all_targets_met": all(target["met"] for target in targets),
    }


# Rows whose class the generated files' rule decides (``write_csv``), far from its
# boundaries, and that class.
_SERVING_PROBES = (([1.0, 1.0, 5.0, 5.0], "0"), ([9.0, 9.0, 5.0, 5.0], "2"))
_SERVING_WAIT_SECONDS = 60.0


def _wait_for_serving(state: StackState, model_version: str, record: Callable[[str], None]) -> None:
    """Until predict answers with ``model_version`` (it loads a new champion on its next
    request, within seconds); records when, and what it answered for the probes."""
    from devstack import runs

    payload = {"instances": [features for features, _ in _SERVING_PROBES]}
    deadline = time.monotonic() + _SERVING_WAIT_SECONDS
    while True:
        answer = runs.predict(state, payload)
        if answer.get("model_version") == model_version:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"predict still serves {answer.get('model_version')} "
                f"{_SERVING_WAIT_SECONDS:.0f} s after {model_version} became the champion"
            )
        time.sleep(0.5)
    labels = [prediction["label"] for prediction in answer["predictions"]]
    expected = [label for _, label in _SERVING_PROBES]
    record(f"serving: predict answers with {model_version}: {labels} (the rule says {expected})")


def measure_end_to_end(rows: int, stack_file: Path) -> dict[str, Any]:
    """One upload of a generated file through the local stack (workflow mode), with the
    time of each stage as ``upload --wait`` reports it."""
    from devstack import runs
    from devstack.stack import load_state

    stages: list[dict[str, Any]] = []
    started = time.perf_counter()

    def record(line: str) -> None:
        _progress(line)
        stages.append({"line": line, "at_seconds": round(time.perf_counter() - started, 1)})

    with tempfile.TemporaryDirectory(prefix="bench-processing-e2e-") as work:
        state_dir = Path(work) / "stack"
        path = Path(work) / f"rows-{rows}.csv"
        _progress(f"generating {rows} rows")
        write_csv(path, rows)
        file_mb = round(path.stat().st_size / 2**20, 1)
        devstack = [sys.executable, "-m", "devstack", "--state-dir", str(state_dir)]
        _progress("starting the local stack")
        subprocess.run(
            [*devstack, "up", "--detach", "--stack-file", str(stack_file)],
            cwd=REPO_ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            state = load_state(state_dir)
            started = time.perf_counter()
            summary = runs.upload_and_follow(
                state, path, name=path.name, timeout=3600, progress=record
            )
            total = time.perf_counter() - started
            if summary.get("promoted"):
                _wait_for_serving(state, str(summary["model_version"]), record)
        finally:
            subprocess.run([*devstack, "down"], cwd=REPO_ROOT, check=True)
    return {
        "rows": rows,
        "file_mb": file_mb,
        "stages": stages,
        "upload_to_summary_seconds": round(total, 1),
        "upload_to_champion_serving_seconds": next(
            (stage["at_seconds"] for stage in stages if stage["line"].startswith("serving")), None
        ),
        "status": summary.get("status"),
        "model_version": summary.get("model_version"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.processing")
    parser.add_argument("--rows", type=int, nargs="+", default=list(DEFAULT_ROWS))
    parser.add_argument("--repeats", type=int, help="runs per size (default 3, 2, 1 by size)")
    parser.add_argument("--pandas-max-rows", type=int, default=PANDAS_MAX_ROWS)
    parser.add_argument(
        "--end-to-end",
        type=int,
        metavar="ROWS",
        help="instead: upload a file of ROWS rows through the local stack, stage by stage",
    )
    parser.add_argument("--stack-file", type=Path, default=REPO_ROOT / "Pulumi.dev.yaml")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1:])
        return
    document: dict[str, Any] = {
        "benchmark": "processing",
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
    }
    if args.end_to_end:
        document["end_to_end"] = measure_end_to_end(args.end_to_end, args.stack_file.resolve())
    else:
        document.update(measure_throughput(args.rows, args.repeats, args.pandas_max_rows))
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
