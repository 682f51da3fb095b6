"""One test per GCP pitfall in DESIGN.md, each against the whole program under mocks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.packaging import package_source
from components.services import APIS
from tests.infra.harness import (
    DEPLOYER_EMAIL,
    PROJECT,
    PROJECT_NUMBER,
    REPOSITORY_ROOT,
    STORAGE_AGENT,
    Deployment,
    Resource,
    Types,
    account_member,
)

PUBSUB_AGENT = f"serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"

# Which API each resource type calls; every such resource must wait for it.
API_OF_TYPE = {
    Types.ACCOUNT: "iam",
    Types.ACCOUNT_IAM: "iam",
    Types.PROJECT_IAM: "iam",
    Types.BUCKET: "storage",
    Types.BUCKET_IAM: "storage",
    Types.BUCKET_OBJECT: "storage",
    Types.NOTIFICATION: "storage",
    Types.TOPIC: "pubsub",
    Types.TOPIC_IAM: "pubsub",
    Types.SUBSCRIPTION: "pubsub",
    Types.SUBSCRIPTION_IAM: "pubsub",
    Types.SERVICE_IDENTITY: None,  # checked per service in pitfall 3
    Types.FUNCTION: "cloudfunctions",
    Types.RUN_INVOKER: "run",
    Types.WORKFLOW: "workflows",
    Types.ALERT_POLICY: "monitoring",
    Types.NOTIFICATION_CHANNEL: "monitoring",
    Types.DASHBOARD: "monitoring",
    Types.LOG_METRIC: "logging",
}


def api(deployment: Deployment, key: str) -> Resource:
    (service,) = [s for s in deployment.of_type(Types.API) if s.inputs["service"] == APIS[key]]
    return service


def grants(deployment: Deployment, type_: str, **inputs: Any) -> list[Resource]:
    return [
        g
        for g in deployment.of_type(type_)
        if all(g.inputs.get(key) == value for key, value in inputs.items())
    ]


def test_pitfall_01_notification_waits_for_the_storage_agent_publisher_grant(
    stack: Deployment,
) -> None:
    notifications = stack.of_type(Types.NOTIFICATION)
    assert len(notifications) == 2  # training uploads and scoring uploads
    for notification in notifications:
        topic_name = notification.inputs["topic"].rsplit("/", 1)[1]
        (grant,) = grants(
            stack,
            Types.TOPIC_IAM,
            topic=topic_name,
            role="roles/pubsub.publisher",
            member=f"serviceAccount:{STORAGE_AGENT}",
        )
        assert stack.waits_for(notification, grant)


def test_pitfall_02_trigger_accounts_receive_events_and_invoke_never_compute_default(
    events_stack: Deployment,
) -> None:
    trigger_member = account_member(events_stack, "evtrig")
    triggered = [f for f in events_stack.of_type(Types.FUNCTION) if "eventTrigger" in f.inputs]
    assert len(triggered) == 2
    for function in triggered:
        email = function.get("eventTrigger.serviceAccountEmail")
        assert f"serviceAccount:{email}" == trigger_member
        assert not email.endswith("-compute@developer.gserviceaccount.com")
        service = function.outputs["serviceConfig"]["service"]
        assert grants(
            events_stack,
            Types.RUN_INVOKER,
            name=service,
            member=trigger_member,
            role="roles/run.invoker",
        )
    assert grants(
        events_stack, Types.PROJECT_IAM, member=trigger_member, role="roles/eventarc.eventReceiver"
    )


def test_pitfall_03_service_identities_are_created_after_their_apis(stack: Deployment) -> None:
    identities = {i.inputs["service"]: i for i in stack.of_type(Types.SERVICE_IDENTITY)}
    assert set(identities) == {APIS["pubsub"], APIS["eventarc"]}
    assert stack.waits_for(identities[APIS["pubsub"]], api(stack, "pubsub"))
    assert stack.waits_for(identities[APIS["eventarc"]], api(stack, "eventarc"))


@pytest.mark.parametrize("bucket_location", ["EU", "europe-west1"])
def test_pitfall_04_pubsub_triggers_sit_in_the_functions_single_region(
    deploy: Callable[..., Deployment], bucket_location: str
) -> None:
    """Eventarc Pub/Sub triggers exist in single regions only: a multi-region bucket
    (EU) must not make them 'eu', which the deploy would refuse."""
    deployment = deploy(orchestration="events", bucketLocation=bucket_location)
    triggered = [f for f in deployment.of_type(Types.FUNCTION) if "eventTrigger" in f.inputs]
    assert triggered
    assert {f.get("eventTrigger.triggerRegion") for f in triggered} == {"europe-west1"}
    assert {f.get("eventTrigger.eventType") for f in triggered} == {
        "google.cloud.pubsub.topic.v1.messagePublished"
    }
    assert {b.inputs["location"] for b in deployment.of_type(Types.BUCKET)} >= {bucket_location}


def test_pitfall_05_every_resource_waits_for_its_api_and_apis_survive_destroy(
    stack: Deployment,
) -> None:
    for service in stack.of_type(Types.API):
        assert service.inputs["disableOnDestroy"] is False
    checked = 0
    for resource in stack.resources:
        if not resource.custom or resource.type == Types.API:
            continue
        assert resource.type in API_OF_TYPE, f"no API known for {resource.type}"
        key = API_OF_TYPE[resource.type]
        if key is not None:
            assert stack.waits_for(resource, api(stack, key)), resource.name
            checked += 1
    assert checked > 40


def test_pitfall_06_source_object_is_named_by_content(stack: Deployment, tmp_path: Path) -> None:
    (source_object,) = stack.of_type(Types.BUCKET_OBJECT)
    tree = tmp_path / "function_src"
    tree.mkdir()
    for name in package_source(REPOSITORY_ROOT / "function_src").files:
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPOSITORY_ROOT / "function_src" / name).read_bytes())
    assert package_source(tree).object_name() == source_object.inputs["name"]
    with (tree / "main.py").open("a", encoding="utf-8") as main:
        main.write("\n# a handler change\n")
    assert package_source(tree).object_name() != source_object.inputs["name"]


def _http_calls(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if str(node.get("call", "")).startswith("http."):
            yield node
        for value in node.values():
            yield from _http_calls(value)
    elif isinstance(node, list):
        for item in node:
            yield from _http_calls(item)


def test_pitfall_07_invokers_are_granted_on_cloud_run_and_workflow_uses_oidc(
    workflow_stack: Deployment,
) -> None:
    types = {r.type for r in workflow_stack.resources}
    assert not any(t.startswith("gcp:cloudfunctionsv2/functionIam") for t in types)
    workflow_member = account_member(workflow_stack, "wf")
    invoked = {
        g.inputs["name"].rsplit("/", 1)[1]
        for g in grants(workflow_stack, Types.RUN_INVOKER, member=workflow_member)
    }
    assert invoked == {"mlp-dev-process-data", "mlp-dev-train-model", "mlp-dev-predict"}
    (workflow,) = workflow_stack.of_type(Types.WORKFLOW)
    calls = list(_http_calls(yaml.safe_load(workflow.inputs["sourceContents"])))
    assert calls
    assert all(call["args"]["auth"]["type"] == "OIDC" for call in calls)


def test_pitfall_08_builds_use_the_dedicated_build_account(stack: Deployment) -> None:
    build_email = account_member(stack, "build").removeprefix("serviceAccount:")
    for function in stack.of_type(Types.FUNCTION):
        assert function.get("buildConfig.serviceAccount") == (
            f"projects/{PROJECT}/serviceAccounts/{build_email}"
        )
        assert function.get("serviceConfig.serviceAccountEmail") != build_email


def test_pitfall_09_deliveries_needing_a_dead_letter_queue_are_explicit_subscriptions(
    stack: Deployment,
) -> None:
    pushes = [s for s in stack.of_type(Types.SUBSCRIPTION) if "pushConfig" in s.inputs]
    expected = {"workflow": "mlp-dev-data-uploaded", "events": "mlp-dev-model-serving-trigger"}
    mode = stack.exports["orchestration"]
    assert sorted(s.inputs["topic"].rsplit("/", 1)[1] for s in pushes) == sorted(
        [expected[mode], "mlp-dev-score-uploaded"]
    )
    for push in pushes:
        assert (
            push.get("deadLetterPolicy.deadLetterTopic")
            == f"projects/{PROJECT}/topics/mlp-dev-dead-letter"
        )
        assert push.get("deadLetterPolicy.maxDeliveryAttempts") == 5
    pushed_services = {push.get("pushConfig.oidcToken.audience") for push in pushes}
    eventarc_uris = {
        f.outputs["serviceConfig"]["uri"]
        for f in stack.of_type(Types.FUNCTION)
        if "eventTrigger" in f.inputs
    }
    assert not pushed_services & eventarc_uris


def test_pitfall_09_dead_letter_attempts_follow_config(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(deadLetterMaxAttempts=12)
    pushes = [s for s in deployment.of_type(Types.SUBSCRIPTION) if "pushConfig" in s.inputs]
    assert {push.get("deadLetterPolicy.maxDeliveryAttempts") for push in pushes} == {12}


def test_pitfall_10_dead_letter_topic_has_agent_grants_and_its_own_subscription(
    stack: Deployment,
) -> None:
    (publisher,) = grants(
        stack,
        Types.TOPIC_IAM,
        topic="mlp-dev-dead-letter",
        member=PUBSUB_AGENT,
        role="roles/pubsub.publisher",
    )
    holds = [
        s
        for s in stack.of_type(Types.SUBSCRIPTION)
        if s.inputs["topic"].endswith("/mlp-dev-dead-letter")
    ]
    assert len(holds) == 1
    assert "pushConfig" not in holds[0].inputs
    assert holds[0].inputs["messageRetentionDuration"] == "604800s"
    for source in (s for s in stack.of_type(Types.SUBSCRIPTION) if "deadLetterPolicy" in s.inputs):
        assert grants(
            stack,
            Types.SUBSCRIPTION_IAM,
            subscription=source.inputs["name"],
            member=PUBSUB_AGENT,
            role="roles/pubsub.subscriber",
        )
        assert stack.waits_for(source, publisher)


def test_pitfall_11_pubsub_agent_may_mint_tokens_for_the_push_identity(stack: Deployment) -> None:
    push_member = account_member(stack, "evtrig")
    push_email = push_member.removeprefix("serviceAccount:")
    (token_grant,) = grants(
        stack,
        Types.ACCOUNT_IAM,
        member=PUBSUB_AGENT,
        role="roles/iam.serviceAccountTokenCreator",
    )
    assert (
        token_grant.inputs["serviceAccountId"] == f"projects/{PROJECT}/serviceAccounts/{push_email}"
    )
    for push in (s for s in stack.of_type(Types.SUBSCRIPTION) if "pushConfig" in s.inputs):
        assert push.get("pushConfig.oidcToken.serviceAccountEmail") == push_email
        assert stack.waits_for(push, token_grant)


def test_pitfall_12_workflow_deletion_protection_is_configurable(
    workflow_stack: Deployment, deploy: Callable[..., Deployment]
) -> None:
    (default,) = workflow_stack.of_type(Types.WORKFLOW)
    assert default.inputs["deletionProtection"] is True
    (dev,) = deploy(workflowDeletionProtection=False).of_type(Types.WORKFLOW)
    assert dev.inputs["deletionProtection"] is False


def test_pitfall_13_deployer_may_act_as_every_account_before_attaching_it(
    stack: Deployment,
) -> None:
    acts_as = {
        g.inputs["serviceAccountId"]: g
        for g in grants(
            stack,
            Types.ACCOUNT_IAM,
            member=f"user:{DEPLOYER_EMAIL}",
            role="roles/iam.serviceAccountUser",
        )
    }
    accounts = {a.outputs["name"] for a in stack.of_type(Types.ACCOUNT)}
    assert set(acts_as) == accounts
    attachers = [
        *stack.of_type(Types.FUNCTION),
        *stack.of_type(Types.WORKFLOW),
        *(s for s in stack.of_type(Types.SUBSCRIPTION) if "pushConfig" in s.inputs),
    ]
    for attacher in attachers:
        for grant in acts_as.values():
            assert stack.waits_for(attacher, grant), (attacher.name, grant.name)
