"""The scoring stage under mocks: its prefix, function, account, grants and delivery in
both modes, and the configuration that shapes them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from components.config import ConfigError
from tests.infra.harness import (
    PROJECT,
    Deployment,
    Types,
    account_member,
    function_named,
)

DATA_BUCKET = f"mlp-dev-data-{PROJECT}"
OBJECTS = f"projects/_/buckets/{DATA_BUCKET}/objects/"


def test_score_data_runs_as_its_own_account_with_its_settings(stack: Deployment) -> None:
    function = function_named(stack, "mlp-dev-score-data")
    account = account_member(stack, "score").removeprefix("serviceAccount:")
    assert function.get("serviceConfig.serviceAccountEmail") == account
    assert function.get("serviceConfig.availableMemory") == "4Gi"  # 2 vCPUs
    assert function.get("serviceConfig.timeoutSeconds") == 540
    environment = function.get("serviceConfig.environmentVariables")
    assert environment["SCORE_PREFIX"] == "score/"
    assert environment["ID_COLUMN"] == ""
    assert environment["MODEL_EVENTS_TOPIC"] == "mlp-dev-model-events"
    assert environment["PREDICT_RUNTIME"] == "onnx"
    assert "eventTrigger" not in function.inputs  # a push subscription delivers to it


def test_scoring_uploads_are_pushed_to_score_data_with_oidc_and_a_dead_letter_queue(
    stack: Deployment,
) -> None:
    (push,) = [
        s
        for s in stack.of_type(Types.SUBSCRIPTION)
        if s.inputs["topic"] == f"projects/{PROJECT}/topics/mlp-dev-score-uploaded"
    ]
    function = function_named(stack, "mlp-dev-score-data")
    uri = function.outputs["serviceConfig"]["uri"]
    assert push.get("pushConfig.pushEndpoint") == (
        f"{uri}/projects/{PROJECT}/topics/mlp-dev-score-uploaded"
    )
    assert push.get("pushConfig.oidcToken") == {
        "serviceAccountEmail": account_member(stack, "evtrig").removeprefix("serviceAccount:"),
        "audience": uri,
    }
    assert push.get("deadLetterPolicy.deadLetterTopic").endswith("/mlp-dev-dead-letter")
    assert push.inputs["ackDeadlineSeconds"] == 540  # as long as the function may run
    # Only the push identity may invoke score_data.
    invokers = {
        g.inputs["member"]
        for g in stack.of_type(Types.RUN_INVOKER)
        if g.inputs["name"].endswith("/mlp-dev-score-data")
    }
    assert invokers == {account_member(stack, "evtrig")}


def test_scoring_waits_for_its_grants_and_the_notification_for_its_publisher(
    stack: Deployment,
) -> None:
    function = function_named(stack, "mlp-dev-score-data")
    member = account_member(stack, "score")
    bucket_grants = [g for g in stack.of_type(Types.BUCKET_IAM) if g.inputs["member"] == member]
    assert len(bucket_grants) == 3
    assert all(stack.waits_for(function, grant) for grant in bucket_grants)
    (notification,) = [
        n for n in stack.of_type(Types.NOTIFICATION) if n.inputs["objectNamePrefix"] == "score/"
    ]
    (publisher,) = [
        g
        for g in stack.of_type(Types.TOPIC_IAM)
        if g.inputs["topic"] == "mlp-dev-score-uploaded"
        and g.inputs["role"] == "roles/pubsub.publisher"
    ]
    assert stack.waits_for(notification, publisher)
    # The upload notification keeps its resource names (renaming would recreate it).
    names = {n.name for n in stack.of_type(Types.NOTIFICATION)}
    assert names == {"mlp-dev-pipeline-data-uploads", "mlp-dev-pipeline-data-score-uploads"}


def test_a_configured_scoring_prefix_and_id_column_reach_notification_grant_and_function(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(scorePrefix="batch/incoming/", idColumn="customer_id")
    (notification,) = [
        n
        for n in deployment.of_type(Types.NOTIFICATION)
        if n.inputs["topic"].endswith("/mlp-dev-score-uploaded")
    ]
    assert notification.inputs["objectNamePrefix"] == "batch/incoming/"
    member = account_member(deployment, "score")
    conditions = {
        g.inputs["condition"]["expression"]
        for g in deployment.of_type(Types.BUCKET_IAM)
        if g.inputs["member"] == member
    }
    assert f'resource.name.startsWith("{OBJECTS}batch/incoming/")' in conditions
    environment = function_named(deployment, "mlp-dev-score-data").get(
        "serviceConfig.environmentVariables"
    )
    assert (environment["SCORE_PREFIX"], environment["ID_COLUMN"]) == (
        "batch/incoming/",
        "customer_id",
    )
    assert deployment.exports["scoring_uri"] == f"gs://{DATA_BUCKET}/batch/incoming/"


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"scorePrefix": "raw/score/"}, "overlaps the pipeline's own prefix 'raw/'"),
        ({"scorePrefix": "predictions/"}, "overlaps the pipeline's own prefix 'predictions/'"),
        ({"scorePrefix": "score"}, "ending with '/'"),
        ({"scorePrefix": "a b/"}, "not an object-name prefix"),
        ({"idColumn": "target"}, "is the target or a feature column"),
        ({"idColumn": "label"}, "a column the predictions file already has"),
    ],
)
def test_scoring_config_errors_stop_the_program(
    deploy: Callable[..., Deployment], values: dict[str, str], words: str
) -> None:
    with pytest.raises(ConfigError, match=r"ml-pipeline:(scorePrefix|idColumn)") as raised:
        deploy(**values)
    assert words in str(raised.value)
