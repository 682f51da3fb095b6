"""Measured, not asserted: how fast predict serves, ONNX Runtime against the joblib path.

predict runs exactly as the local stack starts it (``devstack.plan``: functions-framework
with the stack's environment and fake-gcs-server), twice, with ``PREDICT_RUNTIME=onnx``
and ``PREDICT_RUNTIME=joblib``, over one champion that the real processing, training,
smoke and promotion code built from iris in the bucket. An empty POST, which predict
rejects (400) before it touches a model, is the framework's floor. In one run,
interleaved per repetition:

* load: one-row requests at concurrency 1 and 8, and a 1,000-row request at
  concurrency 1, with ``wrk`` when it is installed, a bounded Python client otherwise;
* cold start: exec of functions-framework to the first correct prediction, the model
  fetched from the bucket (median of 5 per runtime);
* in-process cost of ``parse_instances`` + ``LoadedModel.predict`` on 1 and 1,000 rows,
  the champion loaded through ``ModelService`` exactly as predict loads it.

    python -m bench.serving [--duration 5] [--repetitions 3] [--quick]

Prints one JSON document on stdout (figures and the targets of issue 8, each with
whether it is met); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from components.config import StackConfig, load_stack_file
from devstack.cli import positive
from devstack.demo import write_iris_csv
from devstack.plan import (
    FUNCTION_SOURCE,
    LOOPBACK,
    REPO_ROOT,
    STORAGE,
    ServicePlan,
    StackPlan,
    plan_stack,
    port_names,
)
from devstack.processes import RunningService, start_service, stop_group, wait_until_healthy
from devstack.stack import allocate_ports

# The bench imports the deployed package as the functions do (devstack puts
# function_src on their PYTHONPATH).
sys.path.insert(0, str(FUNCTION_SOURCE.parent))

from pipeline_core import logging as core_log
from pipeline_core.contract import RAW_PREFIX, Env
from pipeline_core.registry import ModelRegistry
from pipeline_core.serving import LoadedModel, ModelService, parse_instances
from pipeline_core.settings import ServingSettings
from pipeline_core.storage import GcsStorage

PREDICT = "predict"
RUNTIMES = ("onnx", "joblib")
FLOOR = "floor"
CONCURRENCIES = (1, 8)
BATCH_ROWS = 1000
BATCH_SCENARIO = f"batch_{BATCH_ROWS}_c1"
COLD_STARTS = 5
START_TIMEOUT_SECONDS = 120.0
COLD_START_POLL_SECONDS = 0.005
COLD_CONCURRENT_REQUESTS = max(CONCURRENCIES)
# The Python client's bound besides the duration, so a fast server cannot make a
# measurement unbounded in memory.
PYTHON_CLIENT_MAX_REQUESTS = 200_000
PREDICTION_MARKER = b'"predictions"'
WRK_RESULT_PREFIX = "BENCH-RESULT "
CLIENTS = ("auto", "wrk", "python")

# Issue 8's targets, all about the ONNX path: (name, comparison, bound, description).
TARGETS = (
    ("c8_onnx_to_joblib_req_per_s", ">=", 12.0, "ONNX req/s at c=8 over joblib's"),
    ("c8_onnx_to_floor_req_per_s", ">=", 0.7, "ONNX req/s at c=8 over the floor's"),
    ("c1_onnx_one_row_p50_ms", "<=", 2.0, "one-row p50 at c=1, ms"),
    ("cold_start_onnx_median_s", "<=", 1.0, "cold start median, s"),
    ("batch_1000_onnx_p50_ms", "<=", 20.0, "1,000-row request p50 at c=1, ms"),
)


def _progress(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Target:
    """One kind of request against one server, and what a correct answer is."""

    name: str
    port: int
    body: bytes
    expected_status: int
    expected_text: bytes  # must appear in the answer; empty: the status alone decides

    def accepts(self, status: int, answer: bytes) -> bool:
        return status == self.expected_status and self.expected_text in answer


@dataclass(frozen=True)
class Measurement:
    requests: int
    seconds: float
    errors: int  # wrong status or body, or a socket error
    p50_ms: float
    p99_ms: float
    # CPU (user + system) the server's processes spent per request: less sensitive to
    # other work on shared cores than req/s; None where /proc is not there to read it.
    server_cpu_us_per_request: float | None = None

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "req_per_s": round(self.req_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "requests": self.requests,
            "errors": self.errors,
            "server_cpu_us_per_request": _rounded(self.server_cpu_us_per_request, 1),
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def group_cpu_seconds(process_group: int) -> float | None:
    """User + system CPU seconds of the live processes of ``process_group`` (the
    functions-framework server and its gunicorn worker), from /proc; None without it."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    ticks = 0
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while being listed
            continue
        # Fields after the parenthesised command: state ppid pgrp ... utime(12) stime(13).
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == process_group:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# (target, concurrency, whole seconds, scratch folder) -> the measurement
LoadClient = Callable[[Target, int, int, Path], Measurement]

_WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  local file = assert(io.open([==[BODY_PATH]==], "rb"))
  local body = file:read("*a")
  file:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if #body > 0 then wrk.body = body else wrk.headers["Content-Length"] = "0" end
  unexpected = 0
end
function response(status, headers, body)
  if status ~= EXPECTED_STATUS
      or not string.find(body, [==[EXPECTED_TEXT]==], 1, true) then
    unexpected = unexpected + 1
  end
end
function done(summary, latency, requests)
  local wrong = 0
  for _, thread in ipairs(threads) do wrong = wrong + thread:get("unexpected") end
  local e = summary.errors
  io.write(string.format(
    'RESULT_PREFIX{"requests": %d, "duration_us": %d, "unexpected": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, wrong, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_load(target: Target, concurrency: int, duration: int, scratch: Path) -> Measurement:
    """One wrk thread (it is event-driven; a second would take a core from the server)."""
    body_path = scratch / f"body-{target.name}.json"
    body_path.write_bytes(target.body)
    script_path = scratch / f"request-{target.name}.lua"
    script_path.write_text(
        _WRK_SCRIPT.replace("BODY_PATH", str(body_path))
        .replace("EXPECTED_STATUS", str(target.expected_status))
        .replace("EXPECTED_TEXT", target.expected_text.decode())
        .replace("RESULT_PREFIX", WRK_RESULT_PREFIX),
        encoding="utf-8",
    )
    completed = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "30s",
         "-s", str(script_path), f"http://{LOOPBACK}:{target.port}/"],
        capture_output=True, text=True, check=False, timeout=duration + 60,
    )  # fmt: skip
    lines = [line for line in completed.stdout.splitlines() if line.startswith(WRK_RESULT_PREFIX)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(
            f"wrk exited {completed.returncode} without a result:\n"
            f"{completed.stdout}\n{completed.stderr}"
        )
    result = json.loads(lines[-1].removeprefix(WRK_RESULT_PREFIX))
    return Measurement(
        requests=result["requests"],
        seconds=result["duration_us"] / 1e6,
        errors=result["unexpected"] + result["socket_errors"],
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
    )


def python_load(target: Target, concurrency: int, duration: int, _scratch: Path) -> Measurement:
    """Threads with one keep-alive connection each, bounded by time and request count."""
    cap = PYTHON_CLIENT_MAX_REQUESTS // concurrency
    headers = {"Content-Type": "application/json", "Content-Length": str(len(target.body))}

    def one_connection(deadline: float) -> tuple[list[float], int]:
        latencies: list[float] = []
        wrong = 0
        connection = http.client.HTTPConnection(LOOPBACK, target.port, timeout=30)
        try:
            while len(latencies) < cap and time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    connection.request("POST", "/", body=target.body, headers=headers)
                    answer = connection.getresponse()
                    accepted = target.accepts(answer.status, answer.read())
                except (OSError, http.client.HTTPException):
                    accepted = False
                    connection.close()  # the next request reconnects
                latencies.append(time.perf_counter() - started)
                wrong += not accepted
        finally:
            connection.close()
        return latencies, wrong

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one_connection, [started + duration] * concurrency))
    elapsed = time.perf_counter() - started
    latencies = sorted(itertools.chain.from_iterable(found for found, _ in results))
    return Measurement(
        requests=len(latencies),
        seconds=elapsed,
        errors=sum(wrong for _, wrong in results),
        p50_ms=_percentile(latencies, 50) * 1000,
        p99_ms=_percentile(latencies, 99) * 1000,
    )


def _percentile(ordered: Sequence[float], percent: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))]


def choose_client(name: str = "auto") -> tuple[LoadClient, dict[str, Any]]:
    """wrk when installed (or asked for), the Python client otherwise."""
    if name == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    if name == "python" or shutil.which("wrk") is None:
        return python_load, {
            "name": "python",
            "detail": "wrk is not installed (apt-get install wrk); threads with one "
            "http.client keep-alive connection each, bounded by duration and "
            f"{PYTHON_CLIENT_MAX_REQUESTS} requests; the client shares the GIL and the "
            "cores, so its req/s are lower bounds",
        }
    # wrk has no --version; it prints its version line first, then the usage.
    banner = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    version = (banner.stdout or banner.stderr).splitlines()[0].strip()
    return wrk_load, {"name": "wrk", "version": version, "threads": 1, "keep_alive": True}


@dataclass(frozen=True)
class Champion:
    version: str
    features: list[dict[str, float]]  # every iris row's features, plain floats


def build_champion(plan: StackPlan, storage: GcsStorage, scratch: Path, client: Any) -> Champion:
    """The real pipeline's path: upload, process, train, smoke the candidate through
    predict's loading, promote; each stage with the settings its function receives."""
    from pipeline_core.events import ObjectRef, TrainingRequest
    from pipeline_core.processing import DatasetSchema, process
    from pipeline_core.settings import ProcessingSettings, TrainingSettings
    from pipeline_core.training import train_smoke_and_promote

    processing = ProcessingSettings.from_env(plan.service("process_data").env)
    training = TrainingSettings.from_env(plan.service("train_model").env)
    data = scratch / "iris.csv"
    write_iris_csv(data, processing.target_column)
    blob = client.bucket(plan.bucket).blob(f"{RAW_PREFIX}iris.csv")
    blob.upload_from_filename(str(data))
    source = ObjectRef(plan.bucket, blob.name, int(blob.generation))
    _progress(f"processing {blob.name} and training {training.model_type}")
    processed = process(
        storage,
        source,
        DatasetSchema(processing.target_column, processing.feature_columns, processing.min_rows),
        chunk_rows=processing.chunk_rows,
        lease_seconds=processing.timeout_seconds,
    ).to_json()
    request = TrainingRequest.of_processed(source, processed)
    decision = train_smoke_and_promote(storage, request, training)
    version = decision["model_version"]
    if not decision["promoted"]:
        raise RuntimeError(f"the candidate was not promoted: {decision['reason']}")
    with data.open(encoding="utf-8", newline="") as rows:
        features = [
            {name: float(value) for name, value in row.items() if name != training.target_column}
            for row in csv.DictReader(rows)
        ]
    return Champion(version, features)


def predict_plan(
    config: StackConfig, storage_port: int, runtime: str, data_dir: Path
) -> ServicePlan:
    """predict as the local stack plans it (own free port, the given storage), with
    ``PREDICT_RUNTIME`` set."""
    ports = {**allocate_ports(port_names(config)), STORAGE: storage_port}
    service = plan_stack(config, ports, data_dir=data_dir).service(PREDICT)
    return replace(
        service,
        name=f"{PREDICT}-{runtime}",
        env={**service.env, Env.PREDICT_RUNTIME: runtime},
    )


def _post(port: int, body: bytes, timeout: float = 30) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def _get_json(port: int, path: str) -> Any:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def _answers_health(port: int) -> bool:
    try:
        _get_json(port, "/health")
    except (OSError, http.client.HTTPException, ValueError):
        return False
    return True


@contextmanager
def running(plan: ServicePlan, log_dir: Path) -> Iterator[RunningService]:
    """A started service, stopped by its process group however the block ends."""
    service = start_service(plan, log_dir)
    try:
        yield service
    finally:
        stop_group(service)


def cold_start(
    plan: ServicePlan, log_dir: Path, body: bytes, expected: Mapping[str, Any]
) -> dict[str, float]:
    """Seconds from exec to the first answer of /health, and to the first prediction
    equal to ``expected`` (the model is fetched from the bucket on the first request)."""
    started = time.perf_counter()
    deadline = started + START_TIMEOUT_SECONDS
    with running(plan, log_dir) as service:
        _wait_listening(service, deadline)
        listening = time.perf_counter() - started
        while True:
            status, answer = _post(service.port, body)
            if status == 200 and json.loads(answer) == expected:
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{plan.name} gave no correct prediction: {status} {answer!r}")
            time.sleep(COLD_START_POLL_SECONDS)
        predicted = time.perf_counter() - started
    return {"listening_s": listening, "first_prediction_s": predicted}


def _wait_listening(service: RunningService, deadline: float) -> None:
    while not _answers_health(service.port):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{service.name} did not answer within {START_TIMEOUT_SECONDS} s")
        time.sleep(COLD_START_POLL_SECONDS)


def concurrent_first_requests(
    plan: ServicePlan, log_dir: Path, body: bytes, expected: Mapping[str, Any]
) -> dict[str, Any]:
    """A fresh instance that gets its first requests side by side, as a scaled-out
    instance does: how many answers are not the correct prediction, and their statuses."""
    with running(plan, log_dir) as service:
        _wait_listening(service, time.perf_counter() + START_TIMEOUT_SECONDS)
        with ThreadPoolExecutor(COLD_CONCURRENT_REQUESTS) as pool:
            answers = list(
                pool.map(lambda _: _post(service.port, body), range(COLD_CONCURRENT_REQUESTS))
            )
    wrong = [
        status for status, answer in answers if status != 200 or json.loads(answer) != expected
    ]
    return {"requests": len(answers), "wrong": len(wrong), "wrong_statuses": sorted(wrong)}


def _median_us(call: Callable[[], object], budget_seconds: float) -> tuple[float, int]:
    call()  # first-call allocations are not the steady state
    samples: list[int] = []
    deadline = time.perf_counter() + budget_seconds
    while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 100_000):
        begun = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - begun)
    return statistics.median(samples) / 1000, len(samples)


def _in_process_once(
    model: LoadedModel, payload: Any, max_batch: int, budget: float
) -> dict[str, float]:
    """Median µs of the request path, and of its parse and model-only parts (the rest of
    ``predict`` builds the response)."""
    rows = parse_instances(payload, model.feature_names, max_batch)
    total, iterations = _median_us(
        lambda: model.predict(parse_instances(payload, model.feature_names, max_batch)), budget
    )
    parse, _ = _median_us(lambda: parse_instances(payload, model.feature_names, max_batch), budget)
    probabilities, _ = _median_us(lambda: model.predictor.probabilities(rows), budget)
    return {
        "total": total,
        "parse": parse,
        "probabilities": probabilities,
        "iterations": iterations,
    }


@dataclass(frozen=True)
class Setup:
    """What every measurement shares: the bucket with its champion and how to start
    predict for each runtime."""

    scratch: Path
    log_dir: Path
    storage: GcsStorage
    champion: Champion
    predict_plans: Mapping[str, ServicePlan]
    serving: ServingSettings

    @property
    def one_row(self) -> dict[str, Any]:
        return {"instances": self.champion.features[:1]}

    @property
    def batch(self) -> dict[str, Any]:
        rows = itertools.islice(itertools.cycle(self.champion.features), BATCH_ROWS)
        return {"instances": list(rows)}


def prepare(config: StackConfig, scratch: Path, cleanup: ExitStack) -> Setup:
    """fake-gcs-server as the local stack starts it (stopped by ``cleanup``), its bucket,
    and a champion in it."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    log_dir = scratch / "logs"
    log_dir.mkdir()
    plan = plan_stack(config, allocate_ports(port_names(config)), data_dir=scratch)
    storage_service = cleanup.enter_context(running(plan.service(STORAGE), log_dir))
    wait_until_healthy([storage_service], timeout=START_TIMEOUT_SECONDS, hints={})
    client = gcs.Client(
        project=config.project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": storage_service.url},
    )
    client.create_bucket(plan.bucket)
    storage = GcsStorage(plan.bucket, config.project, client=client)
    champion = build_champion(plan, storage, scratch, client)
    _progress(f"champion {champion.version}")
    plans = {
        runtime: predict_plan(config, storage_service.port, runtime, scratch)
        for runtime in RUNTIMES
    }
    serving = ServingSettings.from_env(plans[RUNTIMES[0]].env)
    return Setup(scratch, log_dir, storage, champion, plans, serving)


def load_champion(setup: Setup, runtime: str) -> LoadedModel:
    """The champion as predict loads it: fetched, verified, and run by ``runtime``."""
    service = ModelService(
        ModelRegistry(setup.storage), refresh_seconds=setup.serving.refresh_seconds, runtime=runtime
    )
    return service.current()


def measure_in_process(setup: Setup, repetitions: int, budget: float) -> dict[str, Any]:
    """parse_instances + predict in this process, each runtime's champion loaded through
    ``ModelService`` as predict loads it; interleaved per repetition."""
    models = {runtime: load_champion(setup, runtime) for runtime in RUNTIMES}
    payloads = {"one_row": setup.one_row, f"rows_{BATCH_ROWS}": setup.batch}
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        runtime: {size: [] for size in payloads} for runtime in RUNTIMES
    }
    for _ in range(repetitions):
        for runtime, model in models.items():
            for size, payload in payloads.items():
                samples[runtime][size].append(
                    _in_process_once(model, payload, setup.serving.max_batch, budget)
                )
    summary: dict[str, Any] = {}
    for runtime, by_size in samples.items():
        summary[runtime] = {"runtime_loaded": models[runtime].runtime}
        for size, runs in by_size.items():
            summary[runtime][size] = {
                f"{part}_us": round(statistics.median(run[part] for run in runs), 1)
                for part in ("total", "parse", "probabilities")
            } | {"iterations": int(sum(run["iterations"] for run in runs))}
        batch_total = summary[runtime][f"rows_{BATCH_ROWS}"]["total_us"]
        summary[runtime][f"per_row_in_{BATCH_ROWS}_us"] = round(batch_total / BATCH_ROWS, 2)
    return summary


def measure_cold_starts(setup: Setup, count: int) -> dict[str, Any]:
    """Interleaved starts per runtime; correct means the answer a warm service gives."""
    body = json.dumps(setup.one_row).encode()
    expected = {}
    for runtime in RUNTIMES:
        model = load_champion(setup, runtime)
        expected[runtime] = model.predict(parse_instances(setup.one_row, model.feature_names, 1))
    runs: dict[str, list[dict[str, float]]] = {runtime: [] for runtime in RUNTIMES}
    for attempt in range(count):
        for runtime in RUNTIMES:
            measured = cold_start(
                setup.predict_plans[runtime], setup.log_dir, body, expected[runtime]
            )
            _progress(
                f"cold start {attempt + 1}/{count} {runtime}: "
                f"{measured['first_prediction_s']:.2f} s"
            )
            runs[runtime].append(measured)
    return {
        runtime: {
            "median_s": round(statistics.median(run["first_prediction_s"] for run in found), 3),
            "listening_median_s": round(statistics.median(run["listening_s"] for run in found), 3),
            "runs_s": [round(run["first_prediction_s"], 3) for run in found],
            "concurrent_first_requests": concurrent_first_requests(
                setup.predict_plans[runtime], setup.log_dir, body, expected[runtime]
            ),
        }
        for runtime, found in runs.items()
    }


def _load_targets(setup: Setup, ports: Mapping[str, int]) -> dict[str, dict[str, Target]]:
    """Scenario -> what is loaded in it; the floor goes to the ONNX server (it never
    reaches a model, so either would do)."""
    one_row = json.dumps(setup.one_row).encode()
    batch = json.dumps(setup.batch).encode()
    scenarios: dict[str, dict[str, Target]] = {}
    for concurrency in CONCURRENCIES:
        scenarios[f"c{concurrency}"] = {
            runtime: Target(runtime, ports[runtime], one_row, 200, PREDICTION_MARKER)
            for runtime in RUNTIMES
        } | {FLOOR: Target(FLOOR, ports[RUNTIMES[0]], b"", 400, b"")}
    scenarios[BATCH_SCENARIO] = {
        runtime: Target(f"{runtime}-batch", ports[runtime], batch, 200, PREDICTION_MARKER)
        for runtime in RUNTIMES
    }
    return scenarios


def _concurrency(scenario: str) -> int:
    return 1 if scenario == BATCH_SCENARIO else int(scenario.removeprefix("c"))


def measure_load(
    setup: Setup, client: LoadClient, duration: int, repetitions: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """Both runtimes' servers up at once, loaded one at a time, A B A B; returns the
    summary per scenario and the runtime each server says it serves."""
    with ExitStack() as servers:
        started = {
            runtime: servers.enter_context(running(setup.predict_plans[runtime], setup.log_dir))
            for runtime in RUNTIMES
        }
        wait_until_healthy(list(started.values()), timeout=START_TIMEOUT_SECONDS, hints={})
        served = {}
        for runtime, server in started.items():
            status, answer = _post(server.port, json.dumps(setup.one_row).encode())
            if status != 200:  # the first prediction also loads the champion
                raise RuntimeError(f"{server.name} answered {status}: {answer!r}")
            served[runtime] = _get_json(server.port, "/model").get("runtime")
        scenarios = _load_targets(setup, {runtime: s.port for runtime, s in started.items()})
        measured: dict[str, dict[str, list[Measurement]]] = {
            scenario: {name: [] for name in targets} for scenario, targets in scenarios.items()
        }
        by_port = {server.port: server.pid for server in started.values()}
        for repetition in range(repetitions):
            for scenario, targets in scenarios.items():
                for name, target in targets.items():
                    result = _with_server_cpu(
                        by_port[target.port],
                        partial(client, target, _concurrency(scenario), duration, setup.scratch),
                    )
                    _progress(
                        f"{repetition + 1}/{repetitions} {scenario} {name}: "
                        f"{result.req_per_s:.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                        f"{result.errors} errors, "
                        f"server CPU {result.server_cpu_us_per_request or 0:.0f} us/request"
                    )
                    measured[scenario][name].append(result)
    summary = {
        scenario: {name: summarize(runs) for name, runs in by_name.items()}
        for scenario, by_name in measured.items()
    }
    return summary, served


def _with_server_cpu(process_group: int, load: Callable[[], Measurement]) -> Measurement:
    """``load``'s measurement with the CPU the server spent on it, per request."""
    before = group_cpu_seconds(process_group)
    measured = load()
    after = group_cpu_seconds(process_group)
    if before is None or after is None or not measured.requests:
        return measured
    per_request = (after - before) / measured.requests * 1e6
    return replace(measured, server_cpu_us_per_request=per_request)


def summarize(runs: Sequence[Measurement]) -> dict[str, Any]:
    cpu = [run.server_cpu_us_per_request for run in runs if run.server_cpu_us_per_request]
    return {
        "req_per_s": round(statistics.median(run.req_per_s for run in runs), 1),
        "p50_ms": round(statistics.median(run.p50_ms for run in runs), 3),
        "p99_ms": round(statistics.median(run.p99_ms for run in runs), 3),
        "server_cpu_us_per_request": (
            round(statistics.median(cpu), 1) if len(cpu) == len(runs) else None
        ),
        "errors": sum(run.errors for run in runs),
        "requests": sum(run.requests for run in runs),
        "runs": [run.to_json() for run in runs],
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def _ratios(load: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    ratios = {}
    for scenario in (f"c{concurrency}" for concurrency in CONCURRENCIES):
        rates = {name: figures["req_per_s"] for name, figures in load[scenario].items()}
        cpu = {
            name: figures["server_cpu_us_per_request"] for name, figures in load[scenario].items()
        }
        ratios[scenario] = {
            "onnx_to_joblib": _ratio(rates["onnx"], rates["joblib"]),
            "onnx_to_floor": _ratio(rates["onnx"], rates[FLOOR]),
            "joblib_to_floor": _ratio(rates["joblib"], rates[FLOOR]),
            # The same comparison in server CPU per request (floor over ONNX, so that
            # higher is better as for req/s): what the cores allow on a quiet machine.
            "onnx_to_floor_by_server_cpu": (
                _ratio(cpu[FLOOR], cpu["onnx"]) if cpu[FLOOR] and cpu["onnx"] else None
            ),
        }
    return ratios


def _targets(figures: Mapping[str, float | None]) -> list[dict[str, Any]]:
    checked = []
    for name, comparison, bound, description in TARGETS:
        value = figures[name]
        met = value is not None and (value >= bound if comparison == ">=" else value <= bound)
        checked.append(
            {
                "name": name,
                "what": description,
                "target": f"{comparison} {bound:g}",
                "value": value,
                "met": met,
            }
        )
    return checked


def _server_settings() -> dict[str, Any]:
    """What functions-framework gives gunicorn: it reads WORKERS and THREADS from the
    environment, which the servers inherit from this process."""
    return {
        "command": "functions-framework as the local stack starts it (gunicorn, gthread)",
        "workers": int(os.environ.get("WORKERS", "1")),
        "threads": int(os.environ.get("THREADS", str((os.cpu_count() or 1) * 4))),
    }


def _git(*args: str) -> str:
    completed = subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    return completed.stdout.strip()


def machine_description() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # The cores may be shared: ratios within one run are what compare.
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
    }


def commit_description() -> dict[str, Any]:
    # Uncommitted edits of the served code change what was measured.
    uncommitted = _git("status", "--porcelain", "--", "function_src")
    return {
        "head": _git("log", "-1", "--format=%h %s"),
        "uncommitted_in_function_src": uncommitted.splitlines(),
    }


def run(
    stack_file: Path,
    *,
    duration: int,
    repetitions: int,
    cold_starts: int,
    in_process_budget: float,
    client_name: str = "auto",
) -> dict[str, Any]:
    """The whole benchmark; returns the JSON document."""
    config = load_stack_file(stack_file)
    client, client_info = choose_client(client_name)
    _progress(f"load client: {client_info['name']}")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as work, ExitStack() as cleanup:
        setup = prepare(config, Path(work), cleanup)
        _progress("in-process cost per runtime")
        in_process = measure_in_process(setup, repetitions, in_process_budget)
        cold = measure_cold_starts(setup, cold_starts)
        load, served = measure_load(setup, client, duration, repetitions)
    ratios = _ratios(load)
    checked = _targets(
        {
            "c8_onnx_to_joblib_req_per_s": ratios["c8"]["onnx_to_joblib"],
            "c8_onnx_to_floor_req_per_s": ratios["c8"]["onnx_to_floor"],
            "c1_onnx_one_row_p50_ms": load["c1"]["onnx"]["p50_ms"],
            "cold_start_onnx_median_s": cold["onnx"]["median_s"],
            "batch_1000_onnx_p50_ms": load[BATCH_SCENARIO]["onnx"]["p50_ms"],
        }
    )
    return {
        "benchmark": "serving",
        "machine": machine_description(),
        "commit": commit_description(),
        "client": client_info,
        "settings": {
            "stack_file": str(stack_file),
            "duration_seconds": duration,
            "repetitions": repetitions,
            "cold_starts": cold_starts,
            "model_type": config.model_type,
            "hyperparameters": dict(config.hyperparameters),
            "champion_version": setup.champion.version,
            "runtime_served": served,
            "server": _server_settings(),
            "floor": "POST / with an empty body: 400 from predict before any model is touched",
        },
        "load": load,
        "ratios": ratios,
        "cold_start": cold,
        "in_process": in_process,
        "targets": checked,
        "all_targets_met": all(target["met"] for target in checked),
    }


def _stop_on_sigterm(_signal: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signal.SIGTERM)  # unwinds, so every service is stopped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--stack-file", type=Path, default=REPO_ROOT / "Pulumi.dev.yaml")
    parser.add_argument(
        "--duration", type=positive(int), help="whole seconds per load measurement (5; quick 1)"
    )
    parser.add_argument("--repetitions", type=positive(int), help="interleaved rounds (3; quick 1)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 s, 1 repetition, 1 cold start"
    )
    parser.add_argument("--client", choices=CLIENTS, default="auto", help="load client (auto)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # The core logs JSON lines to stdout, which carries only this benchmark's document.
    core_log.set_stream(sys.stderr)
    document = run(
        args.stack_file.resolve(),
        duration=args.duration or (1 if args.quick else 5),
        repetitions=args.repetitions or (1 if args.quick else 3),
        cold_starts=1 if args.quick else COLD_STARTS,
        in_process_budget=0.2 if args.quick else 1.0,
        client_name=args.client,
    )
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
