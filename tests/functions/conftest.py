"""Shared fixtures: environment, in-memory bucket, fakes, data sets and event fixtures."""

from __future__ import annotations

import base64
import copy
import io
import json
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from functions_framework import create_app
from sklearn.datasets import load_breast_cancer, load_iris, load_wine

from pipeline_core import logging as log
from pipeline_core.contract import part_objects
from pipeline_core.events import ObjectRef, TrainingRequest
from pipeline_core.processing import DatasetSchema, process
from pipeline_core.storage import Storage
from tests.functions.fakes import InMemoryPublisher, InMemoryStorage, RecordingStarter

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"
SOURCE = str(ROOT / "function_src" / "main.py")
BUCKET = "test-bucket"
PROJECT = "test-project"
ENVIRONMENT = {
    "GOOGLE_CLOUD_PROJECT": PROJECT,
    "DATA_BUCKET": BUCKET,
    "TARGET_COLUMN": "target",
    "FEATURE_COLUMNS": "[]",
    "MIN_ROWS": "20",
    "MODEL_TYPE": "random_forest",
    "MODEL_HYPERPARAMETERS": '{"n_estimators": 10}',
    "PROMOTION_METRIC": "f1_macro",
    "PROMOTION_MINIMUM": "0.7",
    "PROMOTION_TOLERANCE": "0.0",
    "PREDICT_MAX_BATCH": "50",
    "MODEL_REFRESH_SECONDS": "0",
    "MODEL_EVENTS_TOPIC": "mlp-test-model-events",
    "MODEL_TRAINING_TOPIC": "mlp-test-model-training-trigger",
    "MODEL_SERVING_TOPIC": "mlp-test-model-serving-trigger",
    "WORKFLOW_NAME": "mlp-test-ml-pipeline",
    "WORKFLOW_LOCATION": "us-central1",
}


@pytest.fixture(autouse=True)
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    log.set_stream(stream)
    yield stream
    log.set_stream(None)


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WORKFLOWS_API_ENDPOINT", raising=False)
    return dict(ENVIRONMENT)


@pytest.fixture
def storage() -> InMemoryStorage:
    return InMemoryStorage(BUCKET)


@pytest.fixture
def publisher() -> InMemoryPublisher:
    return InMemoryPublisher()


@pytest.fixture
def starter() -> RecordingStarter:
    return RecordingStarter()


def dataset_csv(loader: Callable[..., Any] = load_iris, *, class_names: bool = False) -> bytes:
    """A bundled data set as CSV; ``class_names``: its target as the class names (the
    demo data's species) rather than their indices."""
    bunch = loader(as_frame=True)
    frame = bunch.frame
    if class_names:
        frame["target"] = bunch.target_names[bunch.target]
    text: str = frame.to_csv(index=False)
    return text.encode()


# The demo data: iris with the species as its target values (devstack/demo.py).
IRIS = dataset_csv(load_iris, class_names=True)
IRIS_CLASSES = ["setosa", "versicolor", "virginica"]
WINE = dataset_csv(load_wine)
BREAST_CANCER = dataset_csv(load_breast_cancer)


def reading_threads() -> set[threading.Thread]:
    """The live threads that read and parse an upload's CSV ahead (``csv_source.Ahead``)."""
    return {
        thread
        for thread in threading.enumerate()
        if thread.name.startswith("csv-") and thread.is_alive()
    }


def upload(storage: InMemoryStorage, name: str, data: bytes) -> ObjectRef:
    generation = storage.write(name, data, content_type="text/csv")
    return ObjectRef(storage.bucket, name, generation)


def processed_request(storage: InMemoryStorage, name: str, data: bytes) -> TrainingRequest:
    """Upload ``data`` as ``name`` and process it: the request that trains from it."""
    ref = upload(storage, name, data)
    result = process(storage, ref, DatasetSchema())
    return TrainingRequest.of_processed(ref, result.to_json())


def read_processed(storage: Storage, processed: Mapping[str, Any]) -> pa.Table:
    """The rows a processing result (its JSON or stats.json) names, parts in order."""
    names = part_objects(processed["processed_data"], processed["processed_parts"])
    return pa.concat_tables(
        pq.read_table(pa.BufferReader(storage.read(name).data)) for name in names
    )


def load_event(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return document


def push_for(fixture: str, ref: ObjectRef, size: int) -> dict[str, Any]:
    """A fixture envelope re-pointed at ``ref`` (same shape, our object)."""
    envelope = copy.deepcopy(load_event(fixture))
    message = envelope["message"]
    resource = json.loads(base64.b64decode(message["data"]))
    resource.update(
        name=ref.name, bucket=ref.bucket, generation=str(ref.generation), size=str(size)
    )
    message["data"] = base64.b64encode(json.dumps(resource).encode()).decode()
    message["attributes"].update(
        objectId=ref.name, bucketId=ref.bucket, objectGeneration=str(ref.generation)
    )
    return envelope


PUSH_PATH = f"/projects/{PROJECT}/topics/mlp-test-data-uploaded"


class Function:
    """One entry point loaded by functions-framework, with fakes in its runtime."""

    def __init__(self, target: str, signature_type: str) -> None:
        self.app = create_app(  # type: ignore[no-untyped-call]
            target=target, source=SOURCE, signature_type=signature_type
        )
        self.module = sys.modules["main"]
        self.client = self.app.test_client()

    def use(self, *, storage: Storage | None = None, **fakes: Any) -> Function:
        """Fakes in the entry point's runtime; ``storage`` is the one bucket it may open."""
        if storage is not None:
            fakes["open_bucket"] = only_bucket(storage)
        for name, value in fakes.items():
            setattr(self.module.runtime, name, value)
        return self


def only_bucket(storage: Storage) -> Callable[[str, str], Storage]:
    """A runtime's ``open_bucket`` that opens ``storage`` in the test's project and
    refuses any other bucket, so a handler cannot reach one it was not configured with."""

    def open_bucket(project: str, bucket: str) -> Storage:
        assert (project, bucket) == (PROJECT, storage.bucket), f"no bucket {project}/{bucket}"
        return storage

    return open_bucket


@pytest.fixture
def function(environment: dict[str, str]) -> Callable[[str, str], Function]:
    return Function
