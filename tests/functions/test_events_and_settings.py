"""Typed events from real-shaped fixtures, and settings from the environment."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from pipeline_core.errors import BadRequestError, ConfigurationError
from pipeline_core.events import (
    PUBSUB_MESSAGE_PUBLISHED,
    STORAGE_FINALIZED,
    ObjectRef,
    StorageNotification,
)
from pipeline_core.settings import (
    ProcessingSettings,
    ServingSettings,
    TrainingSettings,
    TriggerSettings,
    topic_path,
)
from tests.functions.conftest import ENVIRONMENT, load_event


def from_push(envelope: dict[str, Any]) -> StorageNotification:
    # What functions-framework hands a CloudEvent function for a push to /projects/p/topics/t.
    return StorageNotification.from_cloud_event(
        PUBSUB_MESSAGE_PUBLISHED, "ce-1", {"message": envelope["message"]}
    )


@pytest.mark.parametrize("fixture", ["gcs_finalize_push.json", "fake_gcs_finalize_push.json"])
def test_gcs_and_fake_gcs_notifications_become_the_same_typed_event(fixture: str) -> None:
    notification = from_push(load_event(fixture))
    assert notification.ref == ObjectRef("test-bucket", "raw/iris.csv", 1700000000000001)
    assert notification.event_type == "OBJECT_FINALIZE"
    assert notification.size == 2757
    assert notification.skip_reason() is None


def test_storage_cloudevent_becomes_the_same_typed_event() -> None:
    event = load_event("storage_finalized_cloudevent.json")
    notification = StorageNotification.from_cloud_event(
        STORAGE_FINALIZED, event["id"], event["data"]
    )
    assert notification.ref == ObjectRef("test-bucket", "raw/iris.csv", 1700000000000001)
    assert notification.event_id == "9876543210126"


def test_skip_reasons() -> None:
    deleted = from_push(load_event("gcs_delete_push.json"))
    assert "OBJECT_DELETE is not OBJECT_FINALIZE" in (deleted.skip_reason() or "")
    finalize = from_push(load_event("gcs_finalize_push.json"))
    outside = StorageNotification(ObjectRef("b", "models/x.json", 1), "OBJECT_FINALIZE", 10, "e")
    empty = StorageNotification(ObjectRef("b", "raw/x.csv", 1), "OBJECT_FINALIZE", 0, "e")
    assert finalize.skip_reason() is None
    assert "outside raw/" in (outside.skip_reason() or "")
    assert "zero bytes" in (empty.skip_reason() or "")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ("not a map", "no Pub/Sub 'message'"),
        ({"message": {"data": "%%%"}}, "not valid base64"),
        ({"message": {"data": base64.b64encode(b"{}").decode()}}, "no eventType"),
        (
            {
                "message": {
                    "attributes": {"eventType": "OBJECT_FINALIZE"},
                    "data": base64.b64encode(b"[1]").decode(),
                }
            },
            "not a JSON object",
        ),
        (
            {
                "message": {
                    "attributes": {
                        "eventType": "OBJECT_FINALIZE",
                        "bucketId": "b",
                        "objectId": "raw/a",
                        "objectGeneration": "x",
                    }
                }
            },
            "'generation' must be a whole number",
        ),
        (
            {
                "message": {
                    "attributes": {
                        "eventType": "OBJECT_FINALIZE",
                        "objectId": "raw/a",
                        "objectGeneration": "1",
                    }
                }
            },
            "no bucket",
        ),
        ({"message": {"attributes": {"eventType": 5}}}, "attributes must map strings"),
    ],
)
def test_malformed_messages_get_specific_errors(data: Any, words: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        StorageNotification.from_cloud_event(PUBSUB_MESSAGE_PUBLISHED, "e", data)
    assert words in str(caught.value)


def test_malformed_fixture_payload_is_rejected() -> None:
    with pytest.raises(BadRequestError, match="not JSON"):
        from_push(load_event("malformed_payload_push.json"))


def test_unsupported_cloudevent_type() -> None:
    with pytest.raises(BadRequestError, match="unsupported CloudEvent type"):
        StorageNotification.from_cloud_event("google.cloud.audit.log.v1.written", "e", {})


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ([], "JSON object"),
        ({"object": "raw/a", "generation": "1"}, "'bucket'"),
        ({"bucket": "b", "object": "", "generation": "1"}, "'object'"),
        ({"bucket": "b", "object": "raw/a", "generation": True}, "'generation'"),
        ({"bucket": "b", "object": "raw/a", "generation": -1}, "'generation'"),
        ({"bucket": "b", "object": "raw/a", "generation": "\u00b2"}, "'generation'"),
        ({"bucket": "b", "object": "raw/a", "generation": "\u0661\u0662\u0663"}, "'generation'"),
    ],
)
def test_object_refs_from_requests(payload: Any, words: str) -> None:
    with pytest.raises(BadRequestError, match=words):
        ObjectRef.from_request(payload)
    assert (
        ObjectRef.from_request({"bucket": "b", "object": "raw/a", "generation": 7}).generation == 7
    )


def test_settings_read_the_topology_names() -> None:
    processing = ProcessingSettings.from_env({**ENVIRONMENT, "FEATURE_COLUMNS": '["x", "y z"]'})
    assert processing.feature_columns == ("x", "y z")
    assert processing.min_rows == 20
    training = TrainingSettings.from_env(ENVIRONMENT)
    assert training.hyperparameters == {"n_estimators": 10}
    assert training.promotion.metric == "f1_macro"
    serving = ServingSettings.from_env(ENVIRONMENT)
    assert (serving.max_batch, serving.refresh_seconds) == (50, 0)
    trigger = TriggerSettings.from_env({**ENVIRONMENT, "WORKFLOWS_API_ENDPOINT": "127.0.0.1:9"})
    assert (
        trigger.workflow_path
        == "projects/test-project/locations/us-central1/workflows/mlp-test-ml-pipeline"
    )
    assert trigger.workflows_api_endpoint == "127.0.0.1:9"
    assert TriggerSettings.from_env(ENVIRONMENT).workflows_api_endpoint == ""


@pytest.mark.parametrize(
    ("reader", "override", "words"),
    [
        (ProcessingSettings, {"DATA_BUCKET": ""}, "DATA_BUCKET is not set"),
        (ProcessingSettings, {"MIN_ROWS": "many"}, "MIN_ROWS='many' is not a whole number"),
        (ProcessingSettings, {"MIN_ROWS": "1"}, "MIN_ROWS=1 is outside 2..10000000"),
        (ProcessingSettings, {"FEATURE_COLUMNS": "{"}, "FEATURE_COLUMNS is not valid JSON"),
        (
            ProcessingSettings,
            {"FEATURE_COLUMNS": '{"a": 1}'},
            "FEATURE_COLUMNS must be a JSON list",
        ),
        (ProcessingSettings, {"FEATURE_COLUMNS": '["target"]'}, "lists the target column"),
        (TrainingSettings, {"MODEL_TYPE": "svm"}, "MODEL_TYPE='svm' is not one of"),
        (
            TrainingSettings,
            {"MODEL_HYPERPARAMETERS": "[1]"},
            "MODEL_HYPERPARAMETERS must be a JSON object",
        ),
        (TrainingSettings, {"PROMOTION_MINIMUM": "1.5"}, "PROMOTION_MINIMUM='1.5' is outside 0..1"),
        (
            TrainingSettings,
            {"PROMOTION_TOLERANCE": "nan"},
            "PROMOTION_TOLERANCE='nan' is outside 0..1",
        ),
        (TrainingSettings, {"PROMOTION_METRIC": "auc"}, "PROMOTION_METRIC='auc'"),
        (ServingSettings, {"PREDICT_MAX_BATCH": "0"}, "PREDICT_MAX_BATCH=0 is outside"),
        (ServingSettings, {"PREDICT_RUNTIME": "gpu"}, "PREDICT_RUNTIME='gpu' is not one of"),
        (TrainingSettings, {"PREDICT_RUNTIME": "gpu"}, "PREDICT_RUNTIME='gpu' is not one of"),
        (TrainingSettings, {"MAX_TRAINING_ROWS": "50"}, "MAX_TRAINING_ROWS=50 is outside 100.."),
        (TrainingSettings, {"MAX_TRAINING_ROWS": "1e6"}, "MAX_TRAINING_ROWS='1e6' is not a whole"),
        (TriggerSettings, {"WORKFLOW_NAME": " "}, "WORKFLOW_NAME is not set"),
        (
            TriggerSettings,
            {"WORKFLOWS_API_ENDPOINT": "http://127.0.0.1:9"},
            "has a scheme; pass the gRPC target of the Executions API as host:port",
        ),
        (TriggerSettings, {"WORKFLOWS_API_ENDPOINT": "127.0.0.1"}, "is not host:port"),
        (TriggerSettings, {"WORKFLOWS_API_ENDPOINT": ":8081"}, "is not host:port"),
        (TriggerSettings, {"WORKFLOWS_API_ENDPOINT": "localhost:99999"}, "is not host:port"),
        (TriggerSettings, {"WORKFLOWS_API_ENDPOINT": "localhost:\u00b2"}, "is not host:port"),
    ],
)
def test_bad_settings_name_the_variable(reader: Any, override: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        reader.from_env({**ENVIRONMENT, **override})
    assert words in str(caught.value)


def test_topic_paths() -> None:
    assert topic_path("p", "t") == "projects/p/topics/t"
    assert topic_path("p", "projects/q/topics/t") == "projects/q/topics/t"
