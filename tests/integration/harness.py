"""Helpers of the integration tier: the devstack CLI as a subprocess, data sets, and
reads of the local bucket and Pub/Sub emulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np
import pandas as pd
import requests
import yaml

from devstack.plan import LOOPBACK, REPO_ROOT
from devstack.processes import RunningService, group_alive
from devstack.pubsub import ReceivedMessage
from devstack.stack import StackState

FEATURES = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")
T = TypeVar("T")


def devstack(
    state_dir: Path, *args: str, timeout: float = 300, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack", "--state-dir", str(state_dir), *args],
        cwd=REPO_ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# What 'up' says when a port it chose was taken before its service bound it.
PORT_TAKEN_ADVICE = "run the command again to pick"


def run_benchmark(module: str, *args: str) -> dict[str, Any]:
    """``python -m module args`` to its end (5 minutes at most), which must succeed; its
    JSON document (stdout holds only that)."""
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    document: dict[str, Any] = json.loads(completed.stdout)
    return document


def up_detached(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``up --detach``, once more when a port it chose was taken meanwhile: the test
    workers (and anyone else on the machine) pick free ports at the same moments, and
    the CLI's advice for that race is to run it again."""
    started = devstack(state_dir, "up", "--detach", *args)
    if started.returncode != 0 and PORT_TAKEN_ADVICE in started.stderr:
        started = devstack(state_dir, "up", "--detach", *args)
    return started


def write_test_stack_file(
    directory: Path, *, stage_timeout_seconds: int | None = None, trees: int = 10
) -> Path:
    """Pulumi.dev.yaml with a small forest of ``trees`` (speed) and no champion caching
    in predict, so a promotion is served at once. ``stage_timeout_seconds`` shortens
    process_data's and train_model's timeouts, and with them how long a killed attempt's
    lease lives."""
    document = yaml.safe_load((REPO_ROOT / "Pulumi.dev.yaml").read_text(encoding="utf-8"))
    document["config"]["ml-pipeline:hyperparameters"] = {"n_estimators": trees}
    document["config"]["ml-pipeline:modelRefreshSeconds"] = 0
    if stage_timeout_seconds is not None:
        for stage in ("process_data", "train_model"):
            functions = document["config"]["ml-pipeline:functions"]
            functions[stage]["timeoutSeconds"] = stage_timeout_seconds
    # Attempts come about 3 s apart: 8 leave about 20 s to restart a stopped service
    # before its message is dead-lettered, enough on two busy cores.
    document["config"]["ml-pipeline:deadLetterMaxAttempts"] = 8
    path = directory / "Pulumi.itest.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def separable_csv(path: Path, *, rows_per_class: int = 60, seed: int = 1) -> Path:
    """Three classes far apart: any model scores 1.0."""
    generator = np.random.default_rng(seed)
    frames = []
    for label in range(3):
        centre = np.full(len(FEATURES), 10.0 * label)
        values = centre + generator.normal(0, 0.1, size=(rows_per_class, len(FEATURES)))
        frame = pd.DataFrame(values, columns=list(FEATURES))
        frame["target"] = label
        frames.append(frame)
    pd.concat(frames).sample(frac=1.0, random_state=seed).to_csv(path, index=False)
    return path


def overlapping_csv(path: Path, *, rows: int = 3000, seed: int = 3) -> Path:
    """Three classes that overlap: a forest scores about 0.82 (above the minimum, below
    separable data) and grows deep trees: with 100 trees, training 3,000 rows and
    compiling them takes about two seconds."""
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, 3, size=rows)
    values = labels[:, None] * 1.2 + generator.normal(size=(rows, len(FEATURES)))
    frame = pd.DataFrame(values, columns=list(FEATURES))
    frame["target"] = labels
    frame.to_csv(path, index=False)
    return path


def random_labels_csv(path: Path, *, rows: int = 180, seed: int = 2) -> Path:
    """Labels independent of the features: no model can beat chance (about 1/3)."""
    generator = np.random.default_rng(seed)
    frame = pd.DataFrame(generator.normal(size=(rows, len(FEATURES))), columns=list(FEATURES))
    frame["target"] = generator.integers(0, 3, size=rows)
    frame.to_csv(path, index=False)
    return path


def read_object(state: StackState, name: str) -> bytes | None:
    blob = state.storage_client().bucket(state.bucket).get_blob(name)
    return None if blob is None else bytes(blob.download_as_bytes())


def object_resource(state: StackState, name: str) -> dict[str, Any]:
    """The JSON API resource of an object, the payload of its notification."""
    url = f"{state.storage_url}/storage/v1/b/{state.bucket}/o/{quote(name, safe='')}"
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    resource: dict[str, Any] = response.json()
    return resource


def object_exists(state: StackState, name: str) -> bool:
    return state.storage_client().bucket(state.bucket).get_blob(name) is not None


def kill(service: RunningService) -> None:
    """SIGKILL the service's process group (a crash, no graceful shutdown) and wait
    until it is gone."""
    os.killpg(service.pid, signal.SIGKILL)
    wait_for(lambda: not group_alive(service.pid) or None, timeout=30, what=f"{service.name} dying")


def freeze(service: RunningService, seconds: float) -> None:
    """An outage that keeps the service's state: its process group stopped (SIGSTOP:
    connections are accepted, nothing is answered) for ``seconds``, then continued."""
    os.killpg(service.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.killpg(service.pid, signal.SIGCONT)


def model_versions(state: StackState) -> set[str]:
    blobs = state.storage_client().list_blobs(state.bucket, prefix="models/")
    return {blob.name.split("/")[1] for blob in blobs if blob.name.endswith("/manifest.json")}


def champion_version(state: StackState) -> str | None:
    data = read_object(state, "models/champion.json")
    return None if data is None else str(json.loads(data)["model_version"])


def wait_for(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.5
) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def pull_matching(
    state: StackState, subscription: str, predicate: Callable[[ReceivedMessage], bool]
) -> ReceivedMessage | None:
    pubsub = state.pubsub()
    messages = pubsub.pull(subscription)
    pubsub.acknowledge(subscription, [message.ack_id for message in messages])
    return next((message for message in messages if predicate(message)), None)


@contextmanager
def unavailable_service(port: int) -> Iterator[list[str]]:
    """Stand in for a stopped service on its port, answering every POST with 503 (a
    transient failure to Pub/Sub and Workflows alike); yields the paths it refused."""
    refused: list[str] = []

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            refused.append(self.path)
            self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: the refusals are the test's evidence, not noise."""

    server = ThreadingHTTPServer((LOOPBACK, port), Refuse)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield refused
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def log_count(path: Path, text: str) -> int:
    return path.read_text(encoding="utf-8", errors="replace").count(text)
