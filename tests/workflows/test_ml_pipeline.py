"""``workflow_defs/ml_pipeline.yaml`` on the engine, against local stubs of the stages.

The stubs stand in for process_data, train_model (``/`` trains a candidate, ``/promote``
decides it) and predict (HTTP contracts in docs/ARCHITECTURE.md) and for the Pub/Sub
emulator's publish endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import StackConfig
from components.topology import workflow_environment
from tests.workflows.conformance.http_stub import HttpStub, Reply
from workflows_emulator.engine import ExecutionContext, WorkflowProgram
from workflows_emulator.errors import WorkflowError

WORKFLOW = Path(__file__).resolve().parents[2] / "workflow_defs" / "ml_pipeline.yaml"
PROJECT = "test-project"
TOPIC_NAME = "mlp-model-events"
TOPIC = f"projects/{PROJECT}/topics/{TOPIC_NAME}"
EXECUTION_ID = "exec-42"
EVENT = {"bucket": "data-bucket", "object": "raw/iris.csv", "generation": 17}
SOURCE = {"bucket": "data-bucket", "object": "raw/iris.csv", "generation": "17"}

PROCESSED = {
    "status": "processed",
    "processed_data": "processed/raw/iris.csv/17/data/",
    "processed_parts": 3,
    "stats_object": "processed/raw/iris.csv/17/stats.json",
    "rows_in": 150,
    "rows_out": 148,
    "features": ["sepal_length", "petal_length"],
    "target_column": "target",
}
SMOKE_INSTANCES = [{"sepal_length": 5.1, "petal_length": 1.4}]
CANDIDATE = "20261121T193000123456Z-ab12cd"
TRAINED = {
    "model_version": CANDIDATE,
    "metrics": {"accuracy": 0.97, "f1_macro": 0.96},
    "decided": False,
    "promoted": False,
    "champion_version": None,
    "reason": "registered as a candidate",
    "smoke_instances": SMOKE_INSTANCES,
}
DECIDED = {
    **TRAINED,
    "decided": True,
    "promoted": True,
    "champion_version": CANDIDATE,
    "reason": "first model",
}
PREDICTION = {
    "model_version": "20261121T193000123456Z-ab12cd",
    "predictions": [{"label": "setosa", "confidence": 0.99, "probabilities": {"setosa": 0.99}}],
}


@pytest.fixture(scope="module")
def program() -> WorkflowProgram:
    return WorkflowProgram.from_file(WORKFLOW)


@pytest.fixture
def stub() -> Iterator[HttpStub]:
    server = HttpStub().start()
    yield server
    server.stop()


def run(program: WorkflowProgram, stub: HttpStub) -> Any:
    env = workflow_environment(
        function_urls={
            "process_data": f"{stub.url}/process",
            "train_model": f"{stub.url}/train",
            "predict": f"{stub.url}/predict",
        },
        topic_names={"model_events": TOPIC_NAME},
    )
    context = ExecutionContext(
        workflow_id="mlp-ml-pipeline",
        execution_id=EXECUTION_ID,
        project_id=PROJECT,
        env=env,
        pubsub_emulator_host=stub.host,
    )
    return program.run(EVENT, context=context)


def script_healthy_stages(stub: HttpStub) -> None:
    stub.script("/process", [Reply(200, PROCESSED)])
    stub.script("/train", [Reply(200, TRAINED)])
    stub.script("/train/promote", [Reply(200, DECIDED)])
    stub.script("/predict/reload", [Reply(200, {"model_version": TRAINED["model_version"]})])
    stub.script("/predict", [Reply(200, PREDICTION)])


def only_published(stub: HttpStub) -> dict[str, Any]:
    messages = stub.published(TOPIC)
    assert len(messages) == 1, messages
    return messages[0]


def test_success_returns_and_publishes_the_summary(
    program: WorkflowProgram, stub: HttpStub
) -> None:
    script_healthy_stages(stub)

    summary = run(program, stub)

    assert summary == {
        "status": "succeeded",
        **SOURCE,
        "model_version": CANDIDATE,
        "promoted": True,
        "champion_version": CANDIDATE,
        "metrics": {"accuracy": 0.97, "f1_macro": 0.96},
        "reason": "first model",
        "smoke_prediction": PREDICTION,
    }
    message = only_published(stub)
    assert json.loads(message["data"]) == summary
    assert message["attributes"] == {
        "status": "succeeded",
        "object": "raw/iris.csv",
        "generation": "17",
    }
    (process_call,) = stub.calls("/process")
    assert process_call.method == "POST"
    assert process_call.body == SOURCE
    assert process_call.headers.get("X-Workflow-Execution-Id") == EXECUTION_ID
    (train_call,) = stub.calls("/train")
    assert train_call.body == {
        **SOURCE,
        "processed_data": PROCESSED["processed_data"],
        "processed_parts": 3,
    }
    (smoke_call,) = stub.calls("/predict")
    assert smoke_call.body == {
        "instances": SMOKE_INSTANCES,
        "parameters": {"model_version": CANDIDATE},
    }
    (promote_call,) = stub.calls("/train/promote")
    assert promote_call.body == {**SOURCE, "model_version": CANDIDATE}
    assert len(stub.calls("/predict/reload")) == 1
    order = [call.path for call in stub.requests]
    assert order.index("/predict") < order.index("/train/promote") < order.index("/predict/reload")


def test_a_candidate_the_policy_keeps_out_is_smoked_but_not_served(
    program: WorkflowProgram, stub: HttpStub
) -> None:
    script_healthy_stages(stub)
    kept_out = {**DECIDED, "promoted": False, "champion_version": None, "reason": "below minimum"}
    stub.script("/train/promote", [Reply(200, kept_out)])

    summary = run(program, stub)

    assert summary["status"] == "succeeded"
    assert summary["promoted"] is False
    assert summary["reason"] == "below minimum"
    assert summary["smoke_prediction"] == PREDICTION  # the candidate's own answer
    assert summary["champion_version"] is None
    assert stub.calls("/predict/reload") == []
    assert json.loads(only_published(stub)["data"]) == summary


def test_a_candidate_that_fails_its_smoke_test_is_never_promoted(
    program: WorkflowProgram, stub: HttpStub
) -> None:
    script_healthy_stages(stub)
    refusal = {"error": {"code": "model_refused", "message": "artifact SHA-256 mismatch"}}
    stub.script("/predict", [Reply(409, refusal)])

    with pytest.raises(WorkflowError):
        run(program, stub)

    assert stub.calls("/train/promote") == []
    assert stub.calls("/predict/reload") == []
    failed = json.loads(only_published(stub)["data"])
    assert failed["status"] == "failed"
    assert failed["stage"] == "predict"
    assert "SHA-256 mismatch" in failed["reason"]


def test_transient_failure_is_retried_to_success(program: WorkflowProgram, stub: HttpStub) -> None:
    script_healthy_stages(stub)
    stub.script("/process", [Reply(503, "warming up"), Reply(200, PROCESSED)])

    summary = run(program, stub)

    assert summary["status"] == "succeeded"
    assert len(stub.calls("/process")) == 2
    assert only_published(stub)["attributes"]["status"] == "succeeded"


def test_rejected_data_ends_the_run_with_a_rejected_summary(
    program: WorkflowProgram, stub: HttpStub
) -> None:
    script_healthy_stages(stub)
    rejection = {
        "error": {
            "code": "rejected",
            "reason": "missing target column 'target'",
            "rejection_object": "rejected/raw/iris.csv/17.json",
        }
    }
    stub.script("/process", [Reply(422, rejection)])

    summary = run(program, stub)

    assert summary == {
        "status": "rejected",
        **SOURCE,
        "stage": "process_data",
        "reason": "missing target column 'target'",
        "rejection_object": "rejected/raw/iris.csv/17.json",
    }
    assert len(stub.calls("/process")) == 1  # a rejection is permanent: never retried
    assert stub.calls("/train") == []
    message = only_published(stub)
    assert json.loads(message["data"]) == summary
    assert message["attributes"]["status"] == "rejected"


def test_other_failure_publishes_failed_and_fails_the_run(
    program: WorkflowProgram, stub: HttpStub
) -> None:
    script_healthy_stages(stub)
    stub.script("/train", [Reply(500, {"error": {"code": "internal", "reason": "disk full"}})])

    with pytest.raises(WorkflowError) as raised:
        run(program, stub)

    assert "HttpError" in raised.value.tags
    assert raised.value.payload["code"] == 500
    assert len(stub.calls("/train")) == 1  # 500 is not among http.default_retry's codes
    assert stub.calls("/predict") == []
    assert stub.calls("/train/promote") == []
    message = only_published(stub)
    failed = json.loads(message["data"])
    assert failed["status"] == "failed"
    assert failed["stage"] == "train_model"
    assert {key: failed[key] for key in SOURCE} == SOURCE
    assert "disk full" in failed["reason"]
    assert message["attributes"] == {
        "status": "failed",
        "object": "raw/iris.csv",
        "generation": "17",
    }


def test_unreachable_pubsub_fails_the_run_with_a_clear_error(
    program: WorkflowProgram, stub: HttpStub
) -> None:
    script_healthy_stages(stub)
    context = ExecutionContext(
        project_id=PROJECT,
        env={
            "PROCESS_DATA_URL": f"{stub.url}/process",
            "TRAIN_MODEL_URL": f"{stub.url}/train",
            "PREDICT_URL": f"{stub.url}/predict",
            "MODEL_EVENTS_TOPIC": TOPIC_NAME,
        },
        pubsub_emulator_host=None,
    )

    with pytest.raises(WorkflowError) as raised:
        program.run(EVENT, context=context)

    assert "ConnectionError" in raised.value.tags


def test_a_stage_is_retried_longer_than_a_crashed_attempts_lease_lives() -> None:
    """A killed stage leaves its lease for the stage's timeout; the retries of
    call_stage must outlast it, or the run fails although nothing runs any more."""
    steps = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["call_stage"]["steps"]
    retry = next(step["post"]["retry"] for step in steps if "post" in step)
    backoff = retry["backoff"]
    delays = [
        min(backoff["initial_delay"] * backoff["multiplier"] ** attempt, backoff["max_delay"])
        for attempt in range(retry["max_retries"])
    ]
    defaults = StackConfig(
        project="p", region="r", stack="dev", bucket_location="r", name_prefix="mlp"
    ).functions
    for stage in ("process_data", "train_model"):
        assert sum(delays) > defaults[stage].timeout_seconds
