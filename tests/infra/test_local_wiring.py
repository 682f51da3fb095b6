"""The cloud program and the local stack name the same wiring.

The same stack config is run through the Pulumi program (under mocks) and through
``devstack.plan``; every topic, subscription, push path, bucket and notification prefix
the cloud declares must be what the local stack creates, in both orchestration modes.
Only the local stand-in for bucket notifications (one topic fake-gcs-server publishes
every object event to, and its push to the router) exists locally alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components import topology
from components.config import ORCHESTRATIONS, Orchestration, StackConfig
from devstack.plan import NOTIFICATIONS, StackPlan, plan_stack, port_names
from pipeline_core.contract import RAW_PREFIX
from tests.infra.harness import PROJECT, REGION, STACK, Deployment, Types

CLOUDEVENT = "google.cloud.pubsub.topic.v1.messagePublished"


@dataclass(frozen=True)
class Push:
    """A delivery as plain names: what it reads, where it pushes, where failures go."""

    subscription: str | None  # None: Eventarc's managed subscription (cloud only)
    topic: str
    function: str  # function key
    path: str
    dead_letter_topic: str | None


@dataclass(frozen=True)
class Wiring:
    topics: frozenset[str]
    buckets: frozenset[str]  # the buckets the pipeline's data lives in
    notifications: frozenset[tuple[str, str]]  # (object prefix, topic)
    pull_subscriptions: frozenset[tuple[str, str]]  # (subscription, topic)
    pushes: frozenset[Push]
    function_environments: dict[str, dict[str, str]]  # function key -> contract env


def _short(topic_id: str) -> str:
    return topic_id.rsplit("/", 1)[-1]


def cloud_wiring(deployment: Deployment, config: StackConfig) -> Wiring:
    wiring = topology.topology_for(config)
    keys = {topology.function_name(config, spec.key): spec.key for spec in wiring.functions}
    functions = {
        keys[resource.inputs["name"]]: resource for resource in deployment.of_type(Types.FUNCTION)
    }
    urls = {key: resource.outputs["serviceConfig"]["uri"] for key, resource in functions.items()}
    pushes = set()
    pulls = set()
    for subscription in deployment.of_type(Types.SUBSCRIPTION):
        name, topic = subscription.inputs["name"], _short(subscription.inputs["topic"])
        endpoint = subscription.inputs.get("pushConfig", {}).get("pushEndpoint")
        if endpoint is None:
            pulls.add((name, topic))
            continue
        (function,) = (key for key, url in urls.items() if endpoint.startswith(url + "/"))
        dead_letter = subscription.inputs.get("deadLetterPolicy", {}).get("deadLetterTopic")
        pushes.add(
            Push(
                name,
                topic,
                function,
                endpoint[len(urls[function]) :],
                None if dead_letter is None else _short(dead_letter),
            )
        )
    for key, resource in functions.items():
        trigger = resource.inputs.get("eventTrigger")
        if trigger is not None:
            assert trigger["eventType"] == CLOUDEVENT
            # Eventarc sends the CloudEvent itself: its push path is the function's own.
            topic = _short(trigger["pubsubTopic"])
            pushes.add(Push(None, topic, key, "", None))
    notifications = deployment.of_type(Types.NOTIFICATION)
    return Wiring(
        topics=frozenset(topic.inputs["name"] for topic in deployment.of_type(Types.TOPIC)),
        buckets=frozenset(n.inputs["bucket"] for n in notifications),
        notifications=frozenset(
            (n.inputs["objectNamePrefix"], _short(n.inputs["topic"])) for n in notifications
        ),
        pull_subscriptions=frozenset(pulls),
        pushes=frozenset(pushes),
        function_environments={
            key: _contract_env(wiring, key, resource.get("serviceConfig.environmentVariables"))
            for key, resource in functions.items()
        },
    )


def local_wiring(plan: StackPlan) -> Wiring:
    urls = {key: plan.service(key).url for key in (f.key for f in plan.topology.functions)}
    pushes = set()
    pulls = set()
    for subscription in plan.subscriptions:
        if subscription.topic == plan.bucket_events_topic:
            continue  # the local stand-in for bucket notifications
        if subscription.push_endpoint is None:
            pulls.add((subscription.name, subscription.topic))
            continue
        (function,) = (
            key for key, url in urls.items() if subscription.push_endpoint.startswith(url + "/")
        )
        path = subscription.push_endpoint[len(urls[function]) :]
        mechanism = _mechanism(plan, subscription.topic, function)
        pushes.add(
            Push(
                None if mechanism == "eventarc" else subscription.name,
                subscription.topic,
                function,
                "" if mechanism == "eventarc" else path,
                subscription.dead_letter_topic,
            )
        )
        if mechanism == "eventarc":
            # The emulator push stands in for Eventarc: a CloudEvent path, no dead letters.
            assert path == f"/projects/{plan.config.project}/topics/{subscription.topic}"
    argv = plan.service(NOTIFICATIONS).argv
    routes = [argv[index + 1] for index, word in enumerate(argv) if word == "--route"]
    return Wiring(
        topics=frozenset(plan.topics.values()),
        buckets=frozenset({plan.bucket}),
        notifications=frozenset(
            (prefix, topic) for prefix, _, topic in (route.partition("=") for route in routes)
        ),
        pull_subscriptions=frozenset(pulls),
        pushes=frozenset(pushes),
        function_environments={
            key: _contract_env(plan.topology, key, plan.service(key).env) for key in urls
        },
    )


def _mechanism(plan: StackPlan, topic_name: str, function: str) -> topology.Mechanism:
    (delivery,) = (
        delivery
        for delivery in plan.topology.deliveries
        if plan.topics[delivery.topic] == topic_name and delivery.function == function
    )
    return delivery.mechanism


def _contract_env(wiring: topology.Topology, key: str, env: Any) -> dict[str, str]:
    """The function's environment as the contract names it (emulator hosts left out)."""
    return {name: env[name] for name in wiring.function(key).env}


@pytest.mark.parametrize("orchestration", ORCHESTRATIONS)
def test_the_local_stack_names_the_wiring_the_cloud_program_declares(
    orchestration: Orchestration, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The config the session's deployment was run with (tests/infra/conftest.py).
    deployment: Deployment = request.getfixturevalue(f"{orchestration}_stack")
    values = {} if orchestration == "workflow" else {"orchestration": orchestration}
    config = StackConfig.from_values(project=PROJECT, region=REGION, stack=STACK, values=values)
    ports = {name: 30000 + index for index, name in enumerate(port_names(config))}

    cloud = cloud_wiring(deployment, config)
    local = local_wiring(plan_stack(config, ports, data_dir=tmp_path))

    assert local.topics == cloud.topics
    assert local.buckets == cloud.buckets == {topology.data_bucket_name(config)}
    assert local.notifications == cloud.notifications
    assert {prefix for prefix, _ in cloud.notifications} == {
        RAW_PREFIX,
        config.score_prefix,
    }
    assert local.pull_subscriptions == cloud.pull_subscriptions
    dead_letter_hold = topology.dead_letter_subscription_name(config)
    assert (dead_letter_hold, f"{config.name_prefix}-dead-letter") in cloud.pull_subscriptions
    assert local.pushes == cloud.pushes
    assert len(cloud.pushes) == len(topology.topology_for(config).deliveries)
    # The functions receive the same names: bucket, topics, workflow, prefixes.
    for key, cloud_env in cloud.function_environments.items():
        local_env = local.function_environments[key]
        assert local_env.keys() == cloud_env.keys()
        for name, value in cloud_env.items():
            if value is not None:  # an Output the mocks could not resolve is compared above
                assert local_env[name] == value, (key, name)
