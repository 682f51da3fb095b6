"""Batch scoring throughput and memory: ``python -m bench.scoring``, JSON on stdout.

A champion is trained by the real pipeline code (process, train the default
RandomForest of 100 trees, smoke, promote) on iris, as the demo does, against
fake-gcs-server. Each run then scores a fresh upload generation of an
unlabelled file through ``pipeline_core.scoring.score`` with the real storage client,
in a child process of its own (its peak RSS is that run's alone). ONNX Runtime and the
joblib fallback alternate (onnx, joblib, onnx, ...); the large file, scored with ONNX,
shows whether memory stays flat in the file size. Each run also reports its CPU
seconds (user + sys of all its threads while it scored), which a busy machine changes
far less than the rate. The stage scores each block in one slice per CPU it may use
(``machine.cpus`` in the JSON), so the rate depends on that count and on the machine's
load (``machine.load_average``): the ratios, the ranges and the CPU seconds are the
point. The default run (1M rows x 3 per runtime, 3M rows x 2) takes about two minutes
on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.processing import fake_gcs, measure_in_child, peak_rss_mb
from devstack.demo import write_iris_csv
from devstack.plan import FUNCTION_SOURCE

# The core is imported as the functions import it (function_src on the path).
sys.path.insert(0, str(FUNCTION_SOURCE.parent))

BUCKET = "bench-scoring"
PROJECT = "bench-project"
# The demo's iris columns (devstack.demo.write_iris_csv).
FEATURES = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")
TARGET_ROWS_PER_SECOND = 200_000
# "Peak RSS flat in the file size": the large file's peak over the small one's.
TARGET_PEAK_RSS_GROWTH = 1.15
_CHUNK_ROWS = 500_000


def _progress(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def write_rows(path: Path, rows: int, *, seed: int) -> None:
    """Unlabelled iris-like rows: iris measurements drawn at random with a little
    jitter, two decimals (about 16 bytes a row), in the columns the champion knows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    from sklearn.datasets import load_iris

    measurements = load_iris().data
    generator = np.random.default_rng(seed)
    schema = pa.schema([(name, pa.float64()) for name in FEATURES])
    options = pa_csv.WriteOptions(quoting_style="none")
    with pa_csv.CSVWriter(str(path), schema, write_options=options) as writer:
        for start in range(0, rows, _CHUNK_ROWS):
            count = min(_CHUNK_ROWS, rows - start)
            drawn = measurements[generator.integers(0, len(measurements), size=count)]
            values = np.round(drawn + generator.normal(0, 0.05, size=drawn.shape), 2)
            columns = [pa.array(column) for column in values.T]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def _child(runtime: str, object_name: str, generation: int) -> None:
    from pipeline_core.events import ObjectRef
    from pipeline_core.scoring import ScoringSpec, score
    from pipeline_core.storage import GcsStorage

    storage = GcsStorage(BUCKET, PROJECT)
    storage.stat(object_name)  # a warm instance: client made, connection open
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = score(
        storage, ObjectRef(BUCKET, object_name, generation), ScoringSpec(runtime=runtime)
    )
    seconds = time.perf_counter() - started
    report = {
        "seconds": seconds,
        # user + sys of every thread of the process: what the run cost, whatever the load
        "cpu_seconds": time.process_time() - cpu_started,
        "rows": summary["rows_in"],
        "runtime": summary["runtime"],
        "peak_rss_mb": peak_rss_mb(),
    }
    print(json.dumps(report))


def _train_champion(client: Any, scratch: Path) -> str:
    """The demo's champion, by the real stages: iris processed, the default forest
    trained, smoked through predict's loading and promoted."""
    from pipeline_core import logging as log
    from pipeline_core.events import ObjectRef, TrainingRequest
    from pipeline_core.processing import DatasetSchema, process
    from pipeline_core.settings import TrainingSettings
    from pipeline_core.storage import GcsStorage
    from pipeline_core.training import train_smoke_and_promote

    log.set_stream(sys.stderr)  # stdout carries the report alone
    data = scratch / "iris.csv"
    write_iris_csv(data, "target")
    blob = client.bucket(BUCKET).blob("raw/iris.csv")
    blob.upload_from_filename(str(data))
    storage = GcsStorage(BUCKET, PROJECT)
    source = ObjectRef(BUCKET, blob.name, int(blob.generation))
    processed = process(storage, source, DatasetSchema()).to_json()
    settings = TrainingSettings(project=PROJECT, data_bucket=BUCKET)  # random_forest, 100 trees
    decision = train_smoke_and_promote(
        storage, TrainingRequest.of_processed(source, processed), settings
    )
    if not decision["promoted"]:
        raise RuntimeError(f"the champion was not promoted: {decision['reason']}")
    _progress(f"champion {decision['model_version']}: default random_forest on iris")
    return str(decision["model_version"])


def _score_once(client: Any, storage_url: str, data: Path, runtime: str) -> dict[str, Any]:
    """A fresh generation of the file scored in a child; its objects are deleted after,
    so the in-memory emulator does not grow with every run."""
    bucket = client.bucket(BUCKET)
    blob = bucket.blob(f"score/{data.name}")
    blob.upload_from_filename(str(data))
    measured = measure_in_child(
        "bench.scoring", storage_url, runtime, blob.name, str(blob.generation)
    )
    for name in [item.name for item in client.list_blobs(BUCKET, prefix="predictions/")]:
        bucket.blob(name).delete()
    blob.delete()
    measured["rows_per_second"] = measured["rows"] / measured["seconds"]
    return measured


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [run["rows_per_second"] for run in runs]
    return {
        "runs": len(runs),
        "rows": runs[0]["rows"],
        "served_by": sorted({run["runtime"] for run in runs}),
        "seconds": [round(run["seconds"], 2) for run in runs],
        # Less sensitive to the machine's load than the rate: what the run cost.
        "cpu_seconds": [round(run["cpu_seconds"], 2) for run in runs],
        "rows_per_second": {
            "min": round(min(rates)),
            "median": round(statistics.median(rates)),
            "max": round(max(rates)),
        },
        "peak_rss_mb": {
            "min": min(run["peak_rss_mb"] for run in runs),
            "max": max(run["peak_rss_mb"] for run in runs),
        },
    }


def run(rows: int, large_rows: int, repeats: int) -> dict[str, Any]:
    from pipeline_core.machine import available_cpus

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as folder:
        scratch = Path(folder)
        with fake_gcs(scratch, BUCKET) as (storage_url, client):
            version = _train_champion(client, scratch)
            small, large = scratch / f"rows-{rows}.csv", scratch / f"rows-{large_rows}.csv"
            write_rows(small, rows, seed=2)
            write_rows(large, large_rows, seed=3)
            small_mb, large_mb = (round(path.stat().st_size / 2**20, 1) for path in (small, large))
            measured: dict[str, list[dict[str, Any]]] = {"onnx": [], "joblib": []}
            for index in range(repeats):
                for runtime in ("onnx", "joblib"):
                    _progress(f"scoring {rows:,} rows with {runtime} ({index + 1}/{repeats})")
                    measured[runtime].append(_score_once(client, storage_url, small, runtime))
            _progress(f"scoring {large_rows:,} rows with onnx")
            big = [
                _score_once(client, storage_url, large, "onnx") for _ in range(max(1, repeats - 1))
            ]
    onnx, joblib, grown = (_summary(measured["onnx"]), _summary(measured["joblib"]), _summary(big))
    median = onnx["rows_per_second"]["median"]
    rss_growth = round(grown["peak_rss_mb"]["max"] / onnx["peak_rss_mb"]["max"], 2)
    return {
        "benchmark": "scoring",
        # The stage scores a block in one slice per CPU: the figures scale with these.
        "machine": {
            "cpus": available_cpus(),
            "load_average": {"before": load_before, "after": os.getloadavg()},
        },
        "model": {"version": version, "type": "random_forest", "n_estimators": 100},
        "file_mb": {"small": small_mb, "large": large_mb},
        "onnx": onnx,
        "joblib": joblib,
        "onnx_large_file": grown,
        "ratios": {
            "onnx_over_joblib_rows_per_second": round(
                median / joblib["rows_per_second"]["median"], 2
            ),
            "peak_rss_large_over_small": rss_growth,
            "rows_large_over_small": round(large_rows / rows, 2),
        },
        "targets": {
            "onnx_rows_per_second_at_least": TARGET_ROWS_PER_SECOND,
            "peak_rss_large_over_small_at_most": TARGET_PEAK_RSS_GROWTH,
            "met": {
                "onnx_rows_per_second": median >= TARGET_ROWS_PER_SECOND,
                "peak_rss_flat": rss_growth <= TARGET_PEAK_RSS_GROWTH,
            },
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scoring")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--large-rows", type=int, default=3_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("RUNTIME", "OBJECT", "GENERATION"))
    args = parser.parse_args(argv)
    if args.child:
        runtime, object_name, generation = args.child
        _child(runtime, object_name, int(generation))
        return 0
    print(json.dumps(run(args.rows, args.large_rows, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
