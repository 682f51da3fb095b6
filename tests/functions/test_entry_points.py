"""Every entry point through functions-framework, with real-shaped events and fakes."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline_core.contract import training_lease_object
from pipeline_core.events import ObjectRef
from pipeline_core.leases import acquire
from tests.functions.conftest import (
    IRIS,
    IRIS_CLASSES,
    PUSH_PATH,
    Function,
    load_event,
    log_lines,
    push_for,
    upload,
)
from tests.functions.fakes import InMemoryPublisher, InMemoryStorage, RecordingStarter

Loader = Callable[[str, str], Function]


def http(function: Loader, target: str, storage: InMemoryStorage) -> Any:
    return function(target, "http").use(storage=storage).client


def processed(function: Loader, storage: InMemoryStorage, data: bytes = IRIS) -> dict[str, Any]:
    ref = upload(storage, "raw/iris.csv", data)
    response = http(function, "process_data", storage).post("/", json=ref.to_json())
    assert response.status_code == 200, response.get_json()
    return {**ref.to_json(), **response.get_json()}


# What train_model's POST / takes: the upload and its processed data.
TRAINING_KEYS = ("bucket", "object", "generation", "processed_data", "processed_parts")


def trained(function: Loader, storage: InMemoryStorage) -> dict[str, Any]:
    """The workflow's sequence over HTTP: train a candidate, smoke it pinned, promote it."""
    body = processed(function, storage)
    source = {key: body[key] for key in ("bucket", "object", "generation")}
    trainer = http(function, "train_model", storage)
    response = trainer.post("/", json={key: body[key] for key in TRAINING_KEYS})
    assert response.status_code == 200, response.get_json()
    candidate: dict[str, Any] = response.get_json()
    assert candidate["decided"] is False
    smoke = http(function, "predict", storage).post(
        "/",
        json={
            "instances": candidate["smoke_instances"],
            "parameters": {"model_version": candidate["model_version"]},
        },
    )
    assert smoke.status_code == 200, smoke.get_json()
    assert smoke.get_json()["model_version"] == candidate["model_version"]
    decided = trainer.post("/promote", json={**source, "model_version": candidate["model_version"]})
    assert decided.status_code == 200, decided.get_json()
    result: dict[str, Any] = decided.get_json()
    return result


def test_process_data_http(function: Loader, storage: InMemoryStorage) -> None:
    body = processed(function, storage)
    assert body["status"] == "processed"
    assert body["rows_out"] == 149
    assert body["processed_data"] == f"processed/raw/iris.csv/{body['generation']}/data/"
    assert body["processed_parts"] == 1
    client = http(function, "process_data", storage)
    again = client.post(
        "/",
        json={"bucket": body["bucket"], "object": body["object"], "generation": body["generation"]},
    )
    assert again.status_code == 200
    assert again.get_json()["processed_data"] == body["processed_data"]
    assert again.get_json()["processed_parts"] == body["processed_parts"] == 1


@pytest.mark.parametrize(
    ("target", "routes"), [("process_data", "/"), ("train_model", "/, /promote")]
)
def test_stage_functions_serve_only_their_routes(
    function: Loader, storage: InMemoryStorage, target: str, routes: str
) -> None:
    response = http(function, target, storage).post("/foo", json={})
    assert response.status_code == 404
    assert response.get_json()["error"] == {
        "code": "not_found",
        "message": f"no route /foo; use {routes}",
    }
    assert storage.names() == []


@pytest.mark.parametrize(
    "case",
    [
        ("POST", b"{not json", 400, "bad_request"),
        ("POST", b"", 400, "bad_request"),
        ("POST", b'{"bucket": "test-bucket"}', 400, "bad_request"),
        ("GET", b"", 405, "method_not_allowed"),
        (
            "POST",
            b'{"bucket": "test-bucket", "object": "raw/missing.csv", "generation": "3"}',
            404,
            "not_found",
        ),
    ],
)
def test_process_data_bad_requests(
    function: Loader, storage: InMemoryStorage, case: tuple[str, bytes, int, str]
) -> None:
    method, data, status, code = case
    response = http(function, "process_data", storage).open(
        "/", method=method, data=data, content_type="application/json"
    )
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code


def test_process_data_rejection_is_a_422_with_the_reason(
    function: Loader, storage: InMemoryStorage
) -> None:
    ref = upload(storage, "raw/bad.csv", b"a,b,label\n1,2,3\n")
    response = http(function, "process_data", storage).post("/", json=ref.to_json())
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "rejected"
    assert "missing target column 'target'" in error["reason"]
    assert error["rejection_object"] == f"rejected/raw/bad.csv/{ref.generation}.json"


def test_train_model_http(function: Loader, storage: InMemoryStorage) -> None:
    result = trained(function, storage)
    assert result["promoted"] is True
    assert result["champion_version"] == result["model_version"]
    assert set(result) == {
        "model_version",
        "metrics",
        "promoted",
        "champion_version",
        "reason",
        "smoke_instances",
        "serving_runtime",
        "decided",
    }
    assert result["decided"] is True
    assert result["serving_runtime"] == "onnx"


def test_train_model_permanent_errors(
    function: Loader, storage: InMemoryStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = processed(function, storage)
    client = http(function, "train_model", storage)
    missing = client.post(
        "/", json={"bucket": "test-bucket", "object": "raw/iris.csv", "generation": "1"}
    )
    assert missing.status_code == 400
    assert "processed_data" in missing.get_json()["error"]["message"]
    monkeypatch.setenv("MODEL_HYPERPARAMETERS", '{"depth": 3}')
    request = {key: body[key] for key in TRAINING_KEYS}
    bad = client.post("/", json=request)
    assert bad.status_code == 422
    assert "unknown hyperparameter 'depth'" in bad.get_json()["error"]["message"]


def test_configuration_errors_are_500_naming_the_variable(
    function: Loader, storage: InMemoryStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIN_ROWS", "lots")
    ref = upload(storage, "raw/iris.csv", IRIS)
    response = http(function, "process_data", storage).post("/", json=ref.to_json())
    assert response.status_code == 500
    assert "MIN_ROWS='lots'" in response.get_json()["error"]["message"]


def test_predict_without_a_champion_is_503(function: Loader, storage: InMemoryStorage) -> None:
    client = http(function, "predict", storage)
    response = client.post("/", json={"instances": [[1, 2, 3, 4]]})
    assert response.status_code == 503
    assert "no champion" in response.get_json()["error"]["message"]
    health = client.get("/health").get_json()
    assert health["model_loaded"] is False
    assert client.post("/reload").status_code == 503
    assert client.get("/model").status_code == 503


def test_predict_routes(function: Loader, storage: InMemoryStorage) -> None:
    result = trained(function, storage)
    client = http(function, "predict", storage)
    answer = client.post("/", json={"instances": result["smoke_instances"]})
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["model_version"] == result["model_version"]
    assert len(body["predictions"]) == len(result["smoke_instances"])
    assert set(body["predictions"][0]) == {"label", "confidence", "probabilities"}
    single = client.post("/", json={"features": [6.9, 3.1, 5.1, 2.3]}).get_json()
    assert single["predictions"][0]["label"] == "virginica"
    assert client.get("/health").get_json() == {
        "status": "ok",
        "model_loaded": True,
        "model_version": result["model_version"],
    }
    described = client.get("/model").get_json()
    assert described["feature_names"] == [
        "sepal length (cm)",
        "sepal width (cm)",
        "petal length (cm)",
        "petal width (cm)",
    ]
    assert described["classes"] == IRIS_CLASSES
    push = {
        "message": {"data": base64.b64encode(b'{"model_version": "x"}').decode(), "messageId": "1"},
        "subscription": "s",
    }
    reloaded = client.post("/reload", json=push)
    assert reloaded.get_json() == {"status": "serving", "model_version": result["model_version"]}


@pytest.mark.parametrize(
    "case",
    [
        ("POST", "/", b"{oops", 400, "not valid JSON"),
        ("POST", "/", b'"text"', 400, "JSON object or list"),
        (
            "POST",
            "/",
            b'{"instances": [{"petal length (cm)": 1}]}',
            422,
            "instance 0 is missing feature",
        ),
        (
            "POST",
            "/",
            b'{"instances": [[1, 2, "x", 4]]}',
            422,
            "instance 0: feature 'petal length (cm)' must be a number",
        ),
        (
            "POST",
            "/",
            b'{"instances": [[1, 2, 3, 4], [1, 2, 3, NaN]]}',
            422,
            "instance 1: feature 'petal width (cm)' must be finite",
        ),
        (
            "POST",
            "/",
            b'{"instances": [[1, 2, 3, 1' + b"0" * 400 + b"]]}",
            422,
            "instance 0: feature 'petal width (cm)' must be finite",
        ),
        ("POST", "/", b'{"instances": [[1, 2, 3, false]]}', 422, "got False"),
        ("POST", "/", b"[" * 100_000 + b"]" * 100_000, 400, "nests JSON arrays or objects"),
        ("POST", "/", b'{"instances": [[1, 2, null, 4]]}', 422, "is null"),
        (
            "POST",
            "/",
            json.dumps({"instances": [[1, 2, 3, 4]] * 51}).encode(),
            413,
            "batch limit of 50",
        ),
        ("GET", "/", b"", 405, "use POST"),
        ("DELETE", "/model", b"", 405, "use GET"),
        ("GET", "/reload", b"", 405, "use POST"),
        ("GET", "/nowhere", b"", 404, "no route /nowhere"),
        # Routes functions-framework answers itself: JSON too.
        ("GET", "/robots.txt", b"", 404, "Not Found"),
        ("GET", "/favicon.ico", b"", 404, "Not Found"),
        # Python refuses integers of over 4,300 digits with a plain ValueError.
        ("POST", "/", b"[" + b"1" * 5000 + b"]", 400, "not valid JSON"),
        ("POST", "/", b'{"instances": [[1, 2, 3, 1e39]]}', 422, "beyond the float32 range"),
    ],
)
def test_predict_errors_are_json_and_actionable(
    function: Loader, storage: InMemoryStorage, case: tuple[str, str, bytes, int, str]
) -> None:
    method, path, payload, status, words = case
    trained(function, storage)
    response = http(function, "predict", storage).open(
        path, method=method, data=payload, content_type="application/json"
    )
    assert response.status_code == status
    assert words in response.get_json()["error"]["message"]


def push(client: Any, envelope: dict[str, Any]) -> Any:
    return client.post(PUSH_PATH, json=envelope)


def test_trigger_workflow_from_a_push(
    function: Loader, storage: InMemoryStorage, captured_logs: io.StringIO
) -> None:
    starter = RecordingStarter()
    ref = upload(storage, "raw/iris.csv", IRIS)
    client = function("trigger_workflow", "cloudevent").use(storage=storage, starter=starter).client
    envelope = push_for("gcs_finalize_push.json", ref, len(IRIS))
    assert push(client, envelope).status_code == 200
    assert push(client, envelope).status_code == 200  # redelivery
    assert starter.started == [
        (
            "projects/test-project/locations/us-central1/workflows/mlp-test-ml-pipeline",
            ref.to_json(),
        )
    ]
    lines = log_lines(captured_logs)
    assert any(line.get("event_id") == envelope["message"]["messageId"] for line in lines)


@pytest.mark.parametrize("fixture", ["gcs_delete_push.json", "malformed_payload_push.json"])
def test_trigger_workflow_acknowledges_what_it_skips(
    function: Loader, storage: InMemoryStorage, fixture: str, captured_logs: io.StringIO
) -> None:
    starter = RecordingStarter()
    client = function("trigger_workflow", "cloudevent").use(storage=storage, starter=starter).client
    assert push(client, load_event(fixture)).status_code == 200
    assert starter.started == []
    severities = {line["severity"] for line in log_lines(captured_logs)}
    assert ("ERROR" in severities) is (fixture == "malformed_payload_push.json")


def test_trigger_workflow_acknowledges_a_generation_of_non_ascii_digits(
    function: Loader, storage: InMemoryStorage, captured_logs: io.StringIO
) -> None:
    starter = RecordingStarter()
    ref = upload(storage, "raw/iris.csv", IRIS)
    client = function("trigger_workflow", "cloudevent").use(storage=storage, starter=starter).client
    envelope = push_for("gcs_finalize_push.json", ref, len(IRIS))
    envelope["message"]["attributes"]["objectGeneration"] = "\u00b2"
    assert push(client, envelope).status_code == 200
    assert starter.started == []
    errors = [line for line in log_lines(captured_logs) if line["severity"] == "ERROR"]
    assert len(errors) == 1
    assert "'generation' must be a whole number" in errors[0]["message"]


def test_train_model_during_a_live_attempt_is_a_503_to_retry(
    function: Loader, storage: InMemoryStorage
) -> None:
    body = processed(function, storage)
    source = ObjectRef.from_request(body)
    acquire(storage, training_lease_object(source), seconds=540, clock=lambda: datetime.now(UTC))
    request = {key: body[key] for key in TRAINING_KEYS}
    response = http(function, "train_model", storage).post("/", json=request)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "run_in_progress"
    assert storage.names("models/") == [training_lease_object(source)]


def test_trigger_workflow_api_failure_is_retried(
    function: Loader, storage: InMemoryStorage
) -> None:
    starter = RecordingStarter(failures=1)
    ref = upload(storage, "raw/iris.csv", IRIS)
    client = function("trigger_workflow", "cloudevent").use(storage=storage, starter=starter).client
    envelope = push_for("fake_gcs_finalize_push.json", ref, len(IRIS))
    assert push(client, envelope).status_code == 500
    assert push(client, envelope).status_code == 200
    assert len(starter.started) == 1


def test_events_mode_process_then_train(function: Loader, storage: InMemoryStorage) -> None:
    publisher = InMemoryPublisher()
    ref = upload(storage, "raw/iris.csv", IRIS)
    processing = (
        function("process_data_event", "cloudevent")
        .use(storage=storage, publisher=publisher)
        .client
    )
    assert (
        push(processing, push_for("fake_gcs_finalize_push.json", ref, len(IRIS))).status_code == 200
    )
    (training_message,) = publisher.to(
        "projects/test-project/topics/mlp-test-model-training-trigger"
    )
    assert training_message["processed_data"].startswith("processed/raw/iris.csv/")
    assert training_message["processed_parts"] == 1

    training = (
        function("train_model_event", "cloudevent").use(storage=storage, publisher=publisher).client
    )
    envelope = {
        "message": {
            "data": base64.b64encode(json.dumps(training_message).encode()).decode(),
            "messageId": "77",
        },
        "subscription": "projects/test-project/subscriptions/training",
    }
    assert (
        training.post(
            "/projects/test-project/topics/mlp-test-model-training-trigger", json=envelope
        ).status_code
        == 200
    )
    (serving,) = publisher.to("projects/test-project/topics/mlp-test-model-serving-trigger")
    (summary,) = publisher.to("projects/test-project/topics/mlp-test-model-events")
    assert summary["status"] == "succeeded"
    assert summary["model_version"] == serving["model_version"]
    assert summary["object"] == "raw/iris.csv"
    assert publisher.messages[-1][2] == {
        "status": "succeeded",
        "object": "raw/iris.csv",
        "generation": str(ref.generation),
    }


def test_events_mode_rejection_is_published_and_acknowledged(
    function: Loader, storage: InMemoryStorage
) -> None:
    publisher = InMemoryPublisher()
    ref = upload(storage, "raw/bad.csv", b"x,y\n1,2\n")
    client = (
        function("process_data_event", "cloudevent")
        .use(storage=storage, publisher=publisher)
        .client
    )
    assert push(client, push_for("gcs_finalize_push.json", ref, 8)).status_code == 200
    (summary,) = publisher.to("projects/test-project/topics/mlp-test-model-events")
    assert summary["status"] == "rejected"
    assert summary["stage"] == "process_data"
    assert summary["rejection_object"] == f"rejected/raw/bad.csv/{ref.generation}.json"


def test_events_mode_accepts_a_storage_cloudevent(
    function: Loader, storage: InMemoryStorage
) -> None:
    publisher = InMemoryPublisher()
    ref = upload(storage, "raw/iris.csv", IRIS)
    event = load_event("storage_finalized_cloudevent.json")
    event["data"].update(name=ref.name, generation=str(ref.generation))
    client = (
        function("process_data_event", "cloudevent")
        .use(storage=storage, publisher=publisher)
        .client
    )
    response = client.post("/", data=json.dumps(event), content_type="application/cloudevents+json")
    assert response.status_code == 200
    assert len(publisher.to("projects/test-project/topics/mlp-test-model-training-trigger")) == 1


def test_events_mode_malformed_training_message_is_acknowledged(
    function: Loader, storage: InMemoryStorage
) -> None:
    publisher = InMemoryPublisher()
    client = (
        function("train_model_event", "cloudevent").use(storage=storage, publisher=publisher).client
    )
    envelope = {
        "message": {"data": base64.b64encode(b'{"bucket": 1}').decode(), "messageId": "1"},
        "subscription": "s",
    }
    assert client.post("/projects/p/topics/t", json=envelope).status_code == 200
    assert publisher.messages == []
