"""The local wiring is derived from the topology and the stack config (no processes)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from components import topology
from components.config import Orchestration, load_stack_file
from devstack.plan import (
    REPO_ROOT,
    WORKFLOWS,
    plan_stack,
    port_names,
    service_names,
)
from workflows_emulator.cli import build_parser as emulator_parser


@pytest.mark.parametrize("mode", ["workflow", "events"])
def test_plan_follows_the_topology_and_config(mode: Orchestration, tmp_path: Path) -> None:
    config = replace(
        load_stack_file(REPO_ROOT / "Pulumi.dev.yaml"),
        orchestration=mode,
        dead_letter_max_attempts=7,
    )
    wiring = topology.build_topology(mode)
    ports = {name: 20000 + index for index, name in enumerate(port_names(config))}

    plan = plan_stack(config, ports, data_dir=tmp_path)

    assert set(plan.topics.values()) == {
        topology.resource_name(config, spec.suffix) for spec in wiring.topics
    }
    by_name = {subscription.name: subscription for subscription in plan.subscriptions}
    for delivery in wiring.deliveries:
        subscription = by_name[topology.push_subscription_name(config, delivery)]
        function = wiring.function(delivery.function)
        assert subscription.topic == plan.topics[delivery.topic]
        assert subscription.push_endpoint is not None
        assert subscription.push_endpoint.startswith(f"http://127.0.0.1:{ports[function.key]}/")
        if function.signature == "cloudevent":
            assert subscription.push_endpoint.endswith(
                f"/projects/{config.project}/topics/{subscription.topic}"
            )
        if delivery.dead_letter:
            assert subscription.dead_letter_topic == plan.topics["dead_letter"]
            assert subscription.max_delivery_attempts == 7
        else:
            assert subscription.dead_letter_topic is None
        assert subscription.ack_deadline_seconds == min(
            config.function(function.settings_key).timeout_seconds, 600
        )
    dead_letter = by_name[plan.dead_letter_subscription]
    assert (dead_letter.topic, dead_letter.push_endpoint) == (plan.topics["dead_letter"], None)
    # The summaries are kept, under the name the cloud stack gives its subscription.
    assert plan.summary_subscription == topology.summary_subscription_name(config)
    summaries = by_name[plan.summary_subscription]
    assert (summaries.topic, summaries.push_endpoint) == (plan.topics["model_events"], None)

    for function in wiring.functions:
        environment = plan.service(function.key).env
        expected = topology.function_environment(
            config,
            function,
            bucket=plan.bucket,
            topic_names=plan.topics,
            workflow_name=topology.workflow_name(config),
        )
        assert expected.items() <= environment.items()
        assert environment["PUBSUB_EMULATOR_HOST"] == f"127.0.0.1:{ports['pubsub']}"
        assert environment["STORAGE_EMULATOR_HOST"] == f"http://127.0.0.1:{ports['storage']}"
        assert environment["FUNCTION_TARGET"] == function.entry_point  # as Cloud Run sets it
        starts_executions = mode == "workflow" and function.key == "trigger_workflow"
        assert ("WORKFLOWS_API_ENDPOINT" in environment) is starts_executions
        if starts_executions:
            # The real ExecutionsClient speaks gRPC: host:port of the gRPC listener.
            workflows = plan.service(WORKFLOWS)
            assert workflows.grpc_port is not None
            assert environment["WORKFLOWS_API_ENDPOINT"] == f"127.0.0.1:{workflows.grpc_port}"
            assert workflows.grpc_port != workflows.port
            assert ("--grpc-port", str(workflows.grpc_port)) in zip(
                workflows.argv, workflows.argv[1:], strict=False
            )
    assert (WORKFLOWS in {service.name for service in plan.services}) is (mode == "workflow")
    assert sorted(ports.values()) == sorted(
        port for service in plan.services for port in service.ports
    )


def test_plan_refuses_a_missing_port(tmp_path: Path) -> None:
    config = load_stack_file(REPO_ROOT / "Pulumi.dev.yaml")
    ports = dict.fromkeys(service_names(config)[:-1], 20000)  # workflows' ports left out

    with pytest.raises(ValueError, match="no port for service"):
        plan_stack(config, ports, data_dir=tmp_path)


def test_workflow_mode_runs_the_emulator_by_its_own_command_line(tmp_path: Path) -> None:
    """devstack reaches the Workflows emulator only as a process: what it runs is a
    command line the emulator's parser accepts, serving the workflow under its cloud name."""
    config = replace(load_stack_file(REPO_ROOT / "Pulumi.dev.yaml"), orchestration="workflow")
    ports = {name: 20000 + index for index, name in enumerate(port_names(config))}

    workflows = plan_stack(config, ports, data_dir=tmp_path).service(WORKFLOWS)

    assert workflows.argv[1:3] == ("-m", "workflows_emulator")
    assert workflows.env["PYTHONPATH"] == str(REPO_ROOT)
    arguments = emulator_parser().parse_args(workflows.argv[3:])
    assert arguments.command == "serve"
    assert (arguments.host, arguments.port, arguments.grpc_port) == (
        "127.0.0.1",
        workflows.port,
        workflows.grpc_port,
    )
    assert (arguments.project, arguments.location) == (config.project, config.region)
    assert arguments.workflow == [
        (topology.workflow_name(config), str(REPO_ROOT / "workflow_defs" / "ml_pipeline.yaml"))
    ]
