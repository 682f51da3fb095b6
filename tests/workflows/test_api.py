"""The Executions API through the real google-cloud-workflows client (gRPC) and over REST.

Most tests serve stand-in programs (plain Python behaviours) so the API is checked on
its own; ``test_real_engine_*`` run actual workflow YAML through the engine.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import requests
from google.api_core import exceptions
from google.cloud.workflows.executions_v1 import ExecutionsClient
from google.cloud.workflows.executions_v1.services.executions.transports import (
    ExecutionsGrpcTransport,
)
from google.cloud.workflows.executions_v1.types import Execution, ExecutionView

from workflows_emulator.api import DeployedWorkflow, ExecutionService, ExecutionsServer
from workflows_emulator.engine import Cancelled, ExecutionContext
from workflows_emulator.errors import DefinitionError, WorkflowError

PROJECT = "local-project"
LOCATION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}/workflows"
WAIT_SECONDS = 20.0


class StandInProgram:
    """Runs a Python behaviour where a workflow would run."""

    def __init__(self, behaviour: Callable[[Any, ExecutionContext], Any]) -> None:
        self.behaviour = behaviour
        self.contexts: list[ExecutionContext] = []

    def run(self, argument: Any = None, *, context: ExecutionContext | None = None) -> Any:
        assert context is not None
        self.contexts.append(context)
        if context.on_step is not None:
            context.on_step("main", "first")
        return self.behaviour(argument, context)


def echo(argument: Any, context: ExecutionContext) -> Any:
    return {"argument": argument, "execution": context.execution_id, "env": dict(context.env)}


def fail(argument: Any, context: ExecutionContext) -> Any:
    assert context.on_step is not None
    context.on_step("main", "call_stage")
    raise WorkflowError.tagged("HttpError", "HTTP server responded with error code 500", code=500)


class Gate:
    """A behaviour that reports a step, then waits until released or cancelled."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, argument: Any, context: ExecutionContext) -> Any:
        assert context.on_step is not None
        context.on_step("waiter", "hold")
        self.entered.set()
        while not self.release.wait(0.01):
            if context.cancel_event.is_set():
                raise Cancelled()
        return "released"


def deployed(workflow_id: str, program: StandInProgram) -> DeployedWorkflow:
    return DeployedWorkflow(workflow_id, program, "000001-abc")


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def programs(gate: Gate) -> dict[str, StandInProgram]:
    return {
        "echo": StandInProgram(echo),
        "fail": StandInProgram(fail),
        "gate": StandInProgram(gate),
    }


@pytest.fixture
def server(programs: dict[str, StandInProgram], gate: Gate) -> Iterator[ExecutionsServer]:
    service = ExecutionService(
        workflows={key: deployed(key, program) for key, program in programs.items()},
        env={"GREETING": "hi"},
        project=PROJECT,
        location=LOCATION,
    )
    running = ExecutionsServer.for_service(service)
    running.start()
    yield running
    gate.release.set()
    running.stop()


@pytest.fixture
def client(server: ExecutionsServer) -> Iterator[ExecutionsClient]:
    channel = grpc.insecure_channel(server.grpc_target)
    yield ExecutionsClient(transport=ExecutionsGrpcTransport(channel=channel))
    channel.close()


def wait_until_done(client: ExecutionsClient, name: str) -> Execution:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        execution = client.get_execution(name=name)
        if execution.state != Execution.State.ACTIVE:
            return execution
        time.sleep(0.02)
    raise AssertionError(f"{name} still ACTIVE after {WAIT_SECONDS} s")


def test_create_returns_active_then_succeeds_with_json_result(
    client: ExecutionsClient, programs: dict[str, StandInProgram]
) -> None:
    created = client.create_execution(
        parent=f"{PARENT}/echo",
        execution=Execution(
            argument=json.dumps({"object": "raw/a.csv"}),
            labels={"source": "test"},
            call_log_level=Execution.CallLogLevel.LOG_ERRORS_ONLY,
        ),
    )
    assert created.state == Execution.State.ACTIVE
    assert created.name.startswith(f"{PARENT}/echo/executions/")
    assert created.start_time.year >= 2024

    done = wait_until_done(client, created.name)

    assert done.state == Execution.State.SUCCEEDED
    execution_id = created.name.rsplit("/", 1)[-1]
    assert json.loads(done.result) == {
        "argument": {"object": "raw/a.csv"},
        "execution": execution_id,
        "env": {"GREETING": "hi"},
    }
    assert done.end_time >= done.start_time
    assert done.duration.total_seconds() >= 0
    assert done.workflow_revision_id == "000001-abc"
    assert json.loads(done.argument) == {"object": "raw/a.csv"}
    assert dict(done.labels) == {"source": "test"}
    assert done.call_log_level == Execution.CallLogLevel.LOG_ERRORS_ONLY
    context = programs["echo"].contexts[0]
    assert (context.workflow_id, context.project_id, context.location) == (
        "echo",
        PROJECT,
        LOCATION,
    )


def test_uncaught_error_fails_with_payload_and_context(client: ExecutionsClient) -> None:
    created = client.create_execution(parent=f"{PARENT}/fail", execution=Execution())

    done = wait_until_done(client, created.name)

    assert done.state == Execution.State.FAILED
    assert json.loads(done.error.payload) == {
        "message": "HTTP server responded with error code 500",
        "tags": ["HttpError"],
        "code": 500,
    }
    assert "call_stage" in done.error.context
    assert [(e.routine, e.step) for e in done.error.stack_trace.elements] == [
        ("main", "call_stage")
    ]
    assert [(s.routine, s.step) for s in done.status.current_steps] == [("main", "call_stage")]
    assert done.result == ""


def test_active_execution_reports_its_current_step(client: ExecutionsClient, gate: Gate) -> None:
    created = client.create_execution(parent=f"{PARENT}/gate", execution=Execution())
    assert gate.entered.wait(WAIT_SECONDS)

    active = client.get_execution(name=created.name)

    assert active.state == Execution.State.ACTIVE
    assert [(s.routine, s.step) for s in active.status.current_steps] == [("waiter", "hold")]
    gate.release.set()
    assert json.loads(wait_until_done(client, created.name).result) == "released"


def test_cancel_marks_cancelled_and_stops_the_run(
    client: ExecutionsClient, gate: Gate, programs: dict[str, StandInProgram]
) -> None:
    created = client.create_execution(parent=f"{PARENT}/gate", execution=Execution())
    assert gate.entered.wait(WAIT_SECONDS)

    cancelled = client.cancel_execution(name=created.name)

    assert cancelled.state == Execution.State.CANCELLED
    assert programs["gate"].contexts[0].cancel_event.is_set()
    assert client.get_execution(name=created.name).state == Execution.State.CANCELLED
    with pytest.raises(exceptions.FailedPrecondition):
        client.cancel_execution(name=created.name)


def test_list_is_newest_first_with_pages_and_basic_view(client: ExecutionsClient) -> None:
    names = [
        client.create_execution(
            parent=f"{PARENT}/echo", execution=Execution(argument=json.dumps(i))
        ).name
        for i in range(3)
    ]
    for name in names:
        wait_until_done(client, name)

    first_page = client.list_executions(request={"parent": f"{PARENT}/echo", "page_size": 2})
    listed = list(first_page)

    assert [e.name for e in listed] == list(reversed(names))
    assert all(e.state == Execution.State.SUCCEEDED for e in listed)
    assert all(e.argument == "" and e.result == "" for e in listed)  # BASIC view
    full = client.list_executions(request={"parent": f"{PARENT}/echo", "view": ExecutionView.FULL})
    assert [json.loads(e.argument) for e in full] == [2, 1, 0]
    assert list(client.list_executions(parent=f"{PARENT}/fail")) == []


def test_unknown_workflow_and_execution_are_not_found(client: ExecutionsClient) -> None:
    with pytest.raises(exceptions.NotFound):
        client.create_execution(parent=f"{PARENT}/nope", execution=Execution())
    with pytest.raises(exceptions.NotFound):
        client.get_execution(name=f"{PARENT}/echo/executions/does-not-exist")
    other_project = f"projects/other/locations/{LOCATION}/workflows/echo"
    with pytest.raises(exceptions.NotFound):
        client.create_execution(parent=other_project, execution=Execution())


def test_argument_must_be_json(client: ExecutionsClient) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="argument is not valid JSON"):
        client.create_execution(parent=f"{PARENT}/echo", execution=Execution(argument="{oops"))


def test_rest_round_trip_in_google_json(server: ExecutionsServer) -> None:
    base = f"{server.url}/v1/{PARENT}/echo/executions"

    created = requests.post(base, json={"argument": '{"n": 1}'}, timeout=10)

    assert created.status_code == 200
    body = created.json()
    assert body["state"] == "ACTIVE"
    assert body["startTime"].endswith("Z")
    assert body["argument"] == '{"n": 1}'
    assert "endTime" not in body and "result" not in body
    name = body["name"]
    deadline = time.monotonic() + WAIT_SECONDS
    while (got := requests.get(f"{server.url}/v1/{name}", timeout=10).json())["state"] == "ACTIVE":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert got["state"] == "SUCCEEDED"
    assert got["endTime"].endswith("Z") and got["duration"].endswith("s")
    assert json.loads(got["result"])["argument"] == {"n": 1}
    assert got["workflowRevisionId"] == "000001-abc"

    listed = requests.get(base, params={"pageSize": "1"}, timeout=10).json()
    assert [e["name"] for e in listed["executions"]] == [name]
    assert "argument" not in listed["executions"][0]
    as_integers = requests.get(
        f"{server.url}/v1/{name}", params={"$alt": "json;enum-encoding=int"}, timeout=10
    ).json()
    assert as_integers["state"] == int(Execution.State.SUCCEEDED)


def test_rest_cancel_and_errors_in_google_format(server: ExecutionsServer, gate: Gate) -> None:
    base = f"{server.url}/v1/{PARENT}"
    name = requests.post(f"{base}/gate/executions", json={}, timeout=10).json()["name"]
    assert gate.entered.wait(WAIT_SECONDS)

    cancelled = requests.post(f"{server.url}/v1/{name}:cancel", json={}, timeout=10)

    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
    missing = requests.post(f"{base}/nope/executions", json={}, timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"]["status"] == "NOT_FOUND"
    assert missing.json()["error"]["code"] == 404
    assert "nope" in missing.json()["error"]["message"]
    bad_field = requests.post(f"{base}/echo/executions", json={"argumnt": "1"}, timeout=10)
    assert bad_field.status_code == 400
    assert bad_field.json()["error"]["status"] == "INVALID_ARGUMENT"
    bad_query = requests.get(f"{base}/echo/executions", params={"size": "1"}, timeout=10)
    assert bad_query.status_code == 400 and "size" in bad_query.json()["error"]["message"]
    bad_token = requests.get(f"{base}/echo/executions", params={"pageToken": "x"}, timeout=10)
    assert bad_token.status_code == 400
    filtered = requests.get(
        f"{base}/echo/executions", params={"filter": "state=FAILED"}, timeout=10
    )
    assert filtered.status_code == 400 and "not supported" in filtered.json()["error"]["message"]
    unknown_route = requests.get(f"{server.url}/v2/{PARENT}/echo", timeout=10)
    assert unknown_route.status_code == 404
    assert unknown_route.json()["error"]["status"] == "NOT_FOUND"
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_stop_cancels_active_executions(
    server: ExecutionsServer, client: ExecutionsClient, gate: Gate
) -> None:
    created = client.create_execution(parent=f"{PARENT}/gate", execution=Execution())
    assert gate.entered.wait(WAIT_SECONDS)

    server.stop()

    assert server.service.get(created.name).state == Execution.State.CANCELLED


def test_invalid_definition_stops_the_server_before_it_serves(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("main:\n  steps:\n    - odd:\n        frobnicate: 1\n", encoding="utf-8")

    with pytest.raises(DefinitionError):
        ExecutionsServer(
            "127.0.0.1", 0, workflows={"broken": broken}, env={}, project=PROJECT, location=LOCATION
        )


def test_missing_definition_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no definition file"):
        ExecutionsServer(
            "127.0.0.1",
            0,
            workflows={"gone": tmp_path / "gone.yaml"},
            env={},
            project=PROJECT,
            location=LOCATION,
        )


ECHO_WORKFLOW = """\
main:
  params: [args]
  steps:
    - greet:
        return:
          argument: ${args}
          greeting: ${sys.get_env("GREETING")}
          execution: ${sys.get_env("GOOGLE_CLOUD_WORKFLOW_EXECUTION_ID")}
"""

FAILING_WORKFLOW = """\
main:
  steps:
    - fail:
        raise:
          message: stage failed
          tags: [StageError]
"""


@contextmanager
def serving_files(
    directory: Path, sources: Mapping[str, str], env: Mapping[str, str] | None = None
) -> Iterator[ExecutionsClient]:
    """Serve each workflow source (id -> YAML) through the real engine; a gRPC client."""
    for workflow_id, source in sources.items():
        (directory / f"{workflow_id}.yaml").write_text(source, encoding="utf-8")
    with ExecutionsServer(
        "127.0.0.1",
        0,
        workflows={workflow_id: directory / f"{workflow_id}.yaml" for workflow_id in sources},
        env=dict(env or {}),
        project=PROJECT,
        location=LOCATION,
    ) as server:
        channel = grpc.insecure_channel(server.grpc_target)
        try:
            yield ExecutionsClient(transport=ExecutionsGrpcTransport(channel=channel))
        finally:
            channel.close()


def test_real_engine_runs_a_workflow_file(tmp_path: Path) -> None:
    workflows = {"echo": ECHO_WORKFLOW, "fails": FAILING_WORKFLOW}
    with serving_files(tmp_path, workflows, {"GREETING": "hello"}) as client:
        created = client.create_execution(
            parent=f"{PARENT}/echo", execution=Execution(argument='{"bucket": "b"}')
        )
        failed = client.create_execution(parent=f"{PARENT}/fails", execution=Execution())
        done = wait_until_done(client, created.name)
        failed_done = wait_until_done(client, failed.name)

    assert done.state == Execution.State.SUCCEEDED, done.error.payload
    assert json.loads(done.result) == {
        "argument": {"bucket": "b"},
        "greeting": "hello",
        "execution": created.name.rsplit("/", 1)[-1],
    }
    assert failed_done.state == Execution.State.FAILED
    assert json.loads(failed_done.error.payload) == {
        "message": "stage failed",
        "tags": ["StageError"],
    }
