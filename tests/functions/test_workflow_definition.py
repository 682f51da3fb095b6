"""workflow_defs/ml_pipeline.yaml run by the local Workflows engine against the real
entry points (served in-process through functions-framework's test clients)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.functions.conftest import IRIS, ROOT, Function, upload
from tests.functions.fakes import InMemoryStorage
from workflows_emulator.engine import ExecutionContext, WorkflowError, WorkflowProgram
from workflows_emulator.services import HttpRequest, HttpResponse, Services

DEFINITION = ROOT / "workflow_defs" / "ml_pipeline.yaml"
WORKFLOW_ENV = {
    "PROCESS_DATA_URL": "https://process-data.local",
    "TRAIN_MODEL_URL": "https://train-model.local",
    "PREDICT_URL": "https://predict.local",
    "MODEL_EVENTS_TOPIC": "mlp-test-model-events",
}
PUBSUB_HOST = "pubsub.local"


class Cloud:
    """Routes the engine's HTTP calls to the functions and records Pub/Sub publishes."""

    def __init__(self, storage: InMemoryStorage, load: Callable[[str, str], Function]) -> None:
        self.clients = {
            "process-data.local": load("process_data", "http").use(storage=storage).client,
            "train-model.local": load("train_model", "http").use(storage=storage).client,
            "predict.local": load("predict", "http").use(storage=storage).client,
        }
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.published: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.unavailable: dict[str, int] = {}

    def transport(self, request: HttpRequest) -> HttpResponse:
        host, _, path = request.url.removeprefix("https://").removeprefix("http://").partition("/")
        if host == PUBSUB_HOST:
            topic = path.removeprefix("v1/").removesuffix(":publish")
            for message in json.loads(request.body or b"{}")["messages"]:
                data = json.loads(base64.b64decode(message["data"]))
                self.published.append((topic, data, message["attributes"]))
            return HttpResponse(200, {"Content-Type": "application/json"}, b'{"messageIds": ["1"]}')
        self.calls.append((host, "/" + path, dict(request.headers)))
        if self.unavailable.get(host):
            self.unavailable[host] -= 1
            return HttpResponse(503, {"Content-Type": "application/json"}, b'{"error": {}}')
        response = self.clients[host].open(
            "/" + path, method=request.method, data=request.body, headers=dict(request.headers)
        )
        return HttpResponse(response.status_code, dict(response.headers), response.data)

    def run(self, argument: dict[str, str]) -> Any:
        context = ExecutionContext(
            workflow_id="mlp-test-ml-pipeline",
            project_id="test-project",
            env=WORKFLOW_ENV,
            pubsub_emulator_host=PUBSUB_HOST,
            services=Services(transport=self.transport, sleep=lambda _seconds, _event: None),
        )
        return WorkflowProgram.from_file(Path(DEFINITION)).run(argument, context=context)


@pytest.fixture
def cloud(storage: InMemoryStorage, function: Callable[[str, str], Function]) -> Cloud:
    return Cloud(storage, function)


def test_every_stage_call_carries_an_oidc_token_for_the_service_root(
    cloud: Cloud, storage: InMemoryStorage
) -> None:
    """Cloud Run accepts an ID token only for its root URL, also on /reload."""
    cloud.run(upload(storage, "raw/iris.csv", IRIS).to_json())
    paths = set()
    for host, path, headers in cloud.calls:
        scheme, _, token = headers["Authorization"].partition(" ")
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        assert scheme == "Bearer"
        assert claims["aud"] == f"https://{host}"
        paths.add((host, path))
    assert ("predict.local", "/reload") in paths


def test_a_good_upload_runs_every_stage_and_publishes_the_summary(
    cloud: Cloud, storage: InMemoryStorage
) -> None:
    ref = upload(storage, "raw/iris.csv", IRIS)
    summary = cloud.run(ref.to_json())
    assert summary["status"] == "succeeded"
    assert summary["generation"] == str(ref.generation)
    assert summary["promoted"] is True
    assert summary["smoke_prediction"]["model_version"] == summary["model_version"]
    assert len(summary["smoke_prediction"]["predictions"]) == 5
    # The candidate answers its smoke rows before it is promoted and served.
    assert [(host, path) for host, path, _ in cloud.calls] == [
        ("process-data.local", "/"),
        ("train-model.local", "/"),
        ("predict.local", "/"),
        ("train-model.local", "/promote"),
        ("predict.local", "/reload"),
    ]
    assert all(headers.get("X-Workflow-Execution-Id") for _, _, headers in cloud.calls)
    ((topic, message, attributes),) = cloud.published
    assert topic == "projects/test-project/topics/mlp-test-model-events"
    assert message == summary
    assert attributes == {
        "status": "succeeded",
        "object": "raw/iris.csv",
        "generation": str(ref.generation),
    }


def test_an_upload_with_other_columns_is_smoked_as_the_candidate_and_decided_by_policy(
    cloud: Cloud, storage: InMemoryStorage
) -> None:
    first = cloud.run(upload(storage, "raw/iris.csv", IRIS).to_json())
    renamed = IRIS.replace(b"sepal length (cm)", b"sepal_length", 1)
    second = cloud.run(upload(storage, "raw/renamed.csv", renamed).to_json())
    assert second["status"] == "succeeded"
    assert second["smoke_prediction"]["model_version"] == second["model_version"]
    # Equal metrics are "not worse than the champion": the policy promotes it.
    assert second["promoted"] is True
    assert second["champion_version"] == second["model_version"] != first["model_version"]
    served = cloud.clients["predict.local"].get("/model").get_json()
    assert served["feature_names"][0] == "sepal_length"


def test_a_candidate_that_cannot_serve_is_never_promoted(
    cloud: Cloud, storage: InMemoryStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = cloud.run(upload(storage, "raw/iris.csv", IRIS).to_json())
    original = storage.write

    def tamper_candidate_onnx(name: str, data: bytes, **options: Any) -> int:
        return original(name, b"evil" if name.endswith("model.onnx") else data, **options)

    monkeypatch.setattr(storage, "write", tamper_candidate_onnx)
    with pytest.raises(WorkflowError, match="409"):
        cloud.run(upload(storage, "raw/again.csv", IRIS).to_json())
    failed = cloud.published[-1][1]
    assert failed["status"] == "failed"
    assert failed["stage"] == "predict"
    assert "does not match the manifest" in failed["reason"]
    pointer = json.loads(storage.read("models/champion.json").data)
    assert pointer["model_version"] == first["model_version"]


def test_a_rejected_upload_ends_the_run_with_the_reason(
    cloud: Cloud, storage: InMemoryStorage
) -> None:
    ref = upload(storage, "raw/bad.csv", b"a,b\n1,2\n")
    summary = cloud.run(ref.to_json())
    assert summary["status"] == "rejected"
    assert summary["stage"] == "process_data"
    assert "missing target column 'target'" in summary["reason"]
    assert summary["rejection_object"] == f"rejected/raw/bad.csv/{ref.generation}.json"
    assert [message for _, message, _ in cloud.published] == [summary]
    assert [host for host, _, _ in cloud.calls] == ["process-data.local"]


def test_transient_errors_are_retried(cloud: Cloud, storage: InMemoryStorage) -> None:
    cloud.unavailable["process-data.local"] = 2
    ref = upload(storage, "raw/iris.csv", IRIS)
    assert cloud.run(ref.to_json())["status"] == "succeeded"
    assert [host for host, _, _ in cloud.calls][:3] == ["process-data.local"] * 3


def test_any_other_failure_publishes_failed_and_raises(
    cloud: Cloud, storage: InMemoryStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_TYPE", "svm")
    ref = upload(storage, "raw/iris.csv", IRIS)
    with pytest.raises(WorkflowError, match="500"):
        cloud.run(ref.to_json())
    ((_, message, attributes),) = cloud.published
    assert message["status"] == attributes["status"] == "failed"
    assert message["stage"] == "train_model"
    assert "MODEL_TYPE='svm'" in message["reason"]
    assert storage.stat("models/champion.json") is None
