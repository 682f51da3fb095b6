"""A local Workflows Executions API, served over REST (JSON) and gRPC.

The cloud service exposes ``google.cloud.workflows.executions.v1.Executions``. The
pinned ``google-cloud-workflows`` client only ships a gRPC transport for executions,
so the server speaks both wire formats over one in-memory ``ExecutionService``:

- REST on ``url`` (``/v1/projects/{p}/locations/{l}/workflows/{w}/executions`` ...),
  JSON as Google's REST mapping renders ``Execution`` (camelCase, RFC 3339 times,
  enum names) and errors as ``{"error": {"code", "message", "status"}}``;
- gRPC on ``grpc_target`` (insecure, loopback), for ``ExecutionsClient`` with an
  ``ExecutionsGrpcTransport`` over ``grpc.insecure_channel``.

Each execution runs ``WorkflowProgram.run`` in a background thread; ``cancel`` sets
its cancel event and marks it CANCELLED at once, as the service does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, get_args
from urllib.parse import parse_qs, urlsplit

import grpc  # type: ignore[import-untyped]
from google.cloud.workflows.executions_v1 import types as executions_types
from google.protobuf import json_format  # type: ignore[import-untyped]

from workflows_emulator import logs
from workflows_emulator.engine import Cancelled, ExecutionContext, WorkflowProgram
from workflows_emulator.errors import WorkflowError

Execution = executions_types.Execution

ExecutionState = Literal["ACTIVE", "SUCCEEDED", "FAILED", "CANCELLED"]
# The views of the API; the service's unspecified view means FULL for get, BASIC for list.
View = Literal["BASIC", "FULL"]
_VIEWS: tuple[View, ...] = get_args(View)

_LOG = logging.getLogger(__name__)

# Documented limits of the service: an argument of at most 32 KiB, pages of at most
# 100 executions in the BASIC view (the default of list) and 100 in FULL.
MAX_ARGUMENT_BYTES = 32 * 1024
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 100
# How long stop() waits for cancelled executions to notice their cancel event.
_STOP_GRACE_SECONDS = 5.0

_WORKFLOW_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_PARENT = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/workflows/(?P<workflow>[^/]+)"
_EXECUTIONS_PATH = re.compile(rf"^/v1/{_PARENT}/executions$")
_EXECUTION_PATH = re.compile(rf"^/v1/{_PARENT}/executions/(?P<execution>[^/:]+)$")
_CANCEL_PATH = re.compile(rf"^/v1/{_PARENT}/executions/(?P<execution>[^/:]+):cancel$")
_EXECUTION_NAME = re.compile(rf"^{_PARENT}/executions/(?P<execution>[^/:]+)$")
_PARENT_NAME = re.compile(rf"^{_PARENT}$")


class ApiError(Exception):
    """A request the API refuses, with the canonical status both wire formats map."""

    _HTTP: ClassVar[dict[grpc.StatusCode, HTTPStatus]] = {
        grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
        grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
        grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    }

    def __init__(self, status: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def http_status(self) -> HTTPStatus:
        return self._HTTP[self.status]

    def to_json(self) -> dict[str, Any]:
        return {
            "error": {
                "code": int(self.http_status),
                "message": self.message,
                "status": self.status.name,
            }
        }


def _not_found(what: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, f"{what} not found")


def _invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


class Program(Protocol):
    """What the service runs: ``WorkflowProgram``, or a stand-in in the API's own tests."""

    def run(self, argument: Any = None, *, context: ExecutionContext | None = None) -> Any: ...


@dataclass(frozen=True)
class DeployedWorkflow:
    """A workflow as deployed: its parsed program and a revision id derived from its source."""

    workflow_id: str
    program: Program
    revision_id: str

    @classmethod
    def load(cls, workflow_id: str, path: Path) -> DeployedWorkflow:
        if not _WORKFLOW_ID.match(workflow_id):
            raise ValueError(
                f"workflow id '{workflow_id}' is invalid: use a letter followed by up to 63 "
                "letters, digits, '-' or '_'"
            )
        if not path.is_file():
            raise FileNotFoundError(f"workflow '{workflow_id}': no definition file at {path}")
        source = path.read_text(encoding="utf-8")
        program = WorkflowProgram.from_source(source, filename=str(path))
        # The service numbers revisions "000001-abc"; the suffix tells two sources apart.
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        return cls(workflow_id, program, f"000001-{digest[:3]}")


@dataclass
class _ExecutionRecord:
    name: str
    workflow: DeployedWorkflow
    sequence: int
    argument: str
    call_log_level: Execution.CallLogLevel
    start_time: datetime
    labels: dict[str, str] = field(default_factory=dict)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    state: ExecutionState = "ACTIVE"
    end_time: datetime | None = None
    result: str = ""
    error_payload: str = ""
    error_context: str = ""
    current_step: tuple[str, str] | None = None
    thread: threading.Thread | None = None

    def to_message(self, view: View) -> Execution:
        message = Execution(
            name=self.name,
            start_time=self.start_time,
            state=self.state,
            workflow_revision_id=self.workflow.revision_id,
        )
        if self.end_time is not None:
            message.end_time = self.end_time
            message.duration = self.end_time - self.start_time
        if view == "BASIC":
            return message
        message.argument = self.argument
        message.labels = self.labels
        message.call_log_level = self.call_log_level
        if self.result:
            message.result = self.result
        if self.error_payload:
            message.error = Execution.Error(
                payload=self.error_payload,
                context=self.error_context,
                stack_trace=self._stack_trace(),
            )
        # Once the run has ended, currentSteps keeps the last step attempted (the reference).
        if self.current_step is not None:
            routine, step = self.current_step
            message.status = Execution.Status(
                current_steps=[Execution.Status.Step(routine=routine, step=step)]
            )
        return message

    def _stack_trace(self) -> Execution.StackTrace:
        if self.current_step is None:
            return Execution.StackTrace()
        routine, step = self.current_step
        return Execution.StackTrace(
            elements=[Execution.StackTraceElement(routine=routine, step=step)]
        )


def _now() -> datetime:
    return datetime.now(UTC)


class ExecutionService:
    """Create, get, list and cancel executions of the deployed workflows, in memory."""

    def __init__(
        self,
        *,
        workflows: Mapping[str, DeployedWorkflow],
        env: Mapping[str, str],
        project: str,
        location: str,
        pubsub_emulator_host: str | None = None,
    ) -> None:
        self._workflows = dict(workflows)
        self._env = dict(env)
        self._project = project
        self._location = location
        # As in ExecutionContext, the connector targets $PUBSUB_EMULATOR_HOST by default.
        self._pubsub_emulator_host = pubsub_emulator_host or os.environ.get("PUBSUB_EMULATOR_HOST")
        self._lock = threading.Lock()
        self._records: dict[str, _ExecutionRecord] = {}
        self._sequence = 0
        self._accepting = True

    def create(self, parent: str, execution: Execution) -> Execution:
        workflow = self._workflow(parent)
        argument = execution.argument or ""
        if len(argument.encode("utf-8")) > MAX_ARGUMENT_BYTES:
            raise _invalid(f"argument exceeds the {MAX_ARGUMENT_BYTES}-byte limit")
        try:
            decoded = json.loads(argument) if argument else None
        except json.JSONDecodeError as error:
            raise _invalid(f"argument is not valid JSON: {error}") from error
        with self._lock:
            if not self._accepting:
                raise ApiError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            self._sequence += 1
            record = _ExecutionRecord(
                name=f"{parent}/executions/{uuid.uuid4()}",
                workflow=workflow,
                sequence=self._sequence,
                argument=argument,
                call_log_level=Execution.CallLogLevel(execution.call_log_level),
                labels=dict(execution.labels),
                start_time=_now(),
            )
            self._records[record.name] = record
            record.thread = threading.Thread(
                target=self._run,
                args=(record, decoded),
                name=f"execution-{record.name.rsplit('/', 1)[-1]}",
                daemon=True,
            )
            snapshot = record.to_message("FULL")
        record.thread.start()
        return snapshot

    def get(
        self,
        name: str,
        view: View | None = None,
    ) -> Execution:
        with self._lock:
            record = self._record(name)
            return record.to_message(view or "FULL")

    def list(
        self,
        parent: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        view: View | None = None,
        filter_expression: str = "",
        order_by: str = "",
    ) -> executions_types.ListExecutionsResponse:
        self._workflow(parent)
        if filter_expression or order_by:
            raise _invalid(
                "filter and orderBy are not supported by the local Executions API; "
                "executions are listed newest first"
            )
        if page_size < 0:
            raise _invalid(f"pageSize must not be negative, got {page_size}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before = _decode_page_token(page_token) if page_token else None
        with self._lock:
            matching = sorted(
                (
                    record
                    for record in self._records.values()
                    if record.name.startswith(parent + "/executions/")
                    and (before is None or record.sequence < before)
                ),
                key=lambda record: record.sequence,
                reverse=True,
            )
            page = matching[:size]
            messages = [record.to_message(view or "BASIC") for record in page]
        response = executions_types.ListExecutionsResponse(executions=messages)
        if len(matching) > size:
            response.next_page_token = _encode_page_token(page[-1].sequence)
        return response

    def cancel(self, name: str) -> Execution:
        with self._lock:
            record = self._record(name)
            if record.state != "ACTIVE":
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"execution {name} is not active (state {record.state})",
                )
            record.state = "CANCELLED"
            record.end_time = _now()
            record.cancel_event.set()
            # Under the lock: whoever sees the execution ended finds its log line too.
            _log_end(record, "CANCELLED", record.end_time, None)
            return record.to_message("FULL")

    def shutdown(self) -> None:
        """Refuse new executions, cancel the active ones and wait briefly for them to end."""
        with self._lock:
            self._accepting = False
            active = [r for r in self._records.values() if r.state == "ACTIVE"]
        for record in active:
            try:
                self.cancel(record.name)
            except ApiError:
                continue  # it finished meanwhile
        for record in active:
            if record.thread is not None:
                record.thread.join(_STOP_GRACE_SECONDS)

    def _workflow(self, parent: str) -> DeployedWorkflow:
        match = _PARENT_NAME.match(parent)
        if match is None:
            raise _invalid(
                f"parent '{parent}' is not projects/PROJECT/locations/LOCATION/workflows/ID"
            )
        workflow = self._workflows.get(match["workflow"])
        if (
            match["project"] != self._project
            or match["location"] != self._location
            or workflow is None
        ):
            raise _not_found(f"Workflow {parent}")
        return workflow

    def _record(self, name: str) -> _ExecutionRecord:
        match = _EXECUTION_NAME.match(name)
        if match is None:
            raise _invalid(
                f"name '{name}' is not projects/PROJECT/locations/LOCATION/workflows/ID/"
                "executions/EXECUTION"
            )
        record = self._records.get(name)
        if record is None:
            raise _not_found(f"Execution {name}")
        return record

    def _run(self, record: _ExecutionRecord, argument: Any) -> None:
        execution_id = record.name.rsplit("/", 1)[-1]
        ids = {"workflow": record.workflow.workflow_id, "execution_id": execution_id}

        def on_step(routine: str, step: str) -> None:
            with self._lock:
                record.current_step = (routine, step)
            logs.event(f"step {step}", **ids, routine=routine, step=step)

        def on_log(entry: dict[str, Any]) -> None:
            # sys.log: text as the message, a map also as a field, as Cloud Logging has it.
            payload = entry.get("json")
            text = entry["text"] if payload is None else json.dumps(payload, sort_keys=True)
            extra = {} if payload is None else {"json": payload}
            logs.event(text, severity=entry["severity"], **ids, source="sys.log", **extra)

        logs.event("execution started", **ids)
        context = ExecutionContext(
            workflow_id=record.workflow.workflow_id,
            execution_id=execution_id,
            project_id=self._project,
            location=self._location,
            env=self._env,
            cancel_event=record.cancel_event,
            on_step=on_step,
            on_log=on_log,
            pubsub_emulator_host=self._pubsub_emulator_host,
        )
        try:
            result = record.workflow.program.run(argument, context=context)
        except Cancelled:
            return  # cancel() already recorded the end
        except WorkflowError as error:
            self._finish(record, "FAILED", payload=error.payload)
        except Exception as error:
            # An engine defect must not leave the execution ACTIVE forever.
            _LOG.exception("execution %s crashed the engine", record.name)
            crash = {
                "message": f"internal error of the local engine: {error!r}",
                "tags": ["InternalError"],
            }
            self._finish(record, "FAILED", payload=crash)
        else:
            self._finish(record, "SUCCEEDED", result=json.dumps(result, separators=(",", ":")))

    def _finish(
        self,
        record: _ExecutionRecord,
        state: ExecutionState,
        *,
        result: str = "",
        payload: Any = None,
    ) -> None:
        with self._lock:
            if record.state != "ACTIVE":
                return  # cancelled while the last step was finishing
            record.state = state
            record.end_time = _now()
            record.result = result
            if state == "FAILED":
                record.error_payload = json.dumps(payload, separators=(",", ":"))
                record.error_context = _error_context(record)
            # Under the lock: whoever sees the execution ended finds its log line too.
            _log_end(record, state, record.end_time, payload)


def _log_end(record: _ExecutionRecord, state: ExecutionState, ended: datetime, error: Any) -> None:
    logs.event(
        f"execution {state.lower()}",
        severity="ERROR" if state == "FAILED" else "INFO",
        workflow=record.workflow.workflow_id,
        execution_id=record.name.rsplit("/", 1)[-1],
        state=state,
        duration_ms=round((ended - record.start_time).total_seconds() * 1000, 1),
        **({"error": error} if state == "FAILED" else {}),
    )


def _error_context(record: _ExecutionRecord) -> str:
    if record.current_step is None:
        return "The execution failed before its first step"
    routine, step = record.current_step
    return f'The execution failed with an unhandled error in step "{step}", routine "{routine}"'


def _encode_page_token(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"before:{sequence}".encode()).decode("ascii")


def _decode_page_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
        prefix, _, number = text.partition(":")
        if prefix != "before":
            raise ValueError(prefix)
        return int(number)
    except (ValueError, UnicodeError, binascii.Error) as error:
        raise _invalid(f"pageToken '{token}' was not issued by this server") from error


def load_workflows(paths: Mapping[str, Path]) -> dict[str, DeployedWorkflow]:
    """Parse every definition up front, so an invalid one stops the server before it serves."""
    return {
        workflow_id: DeployedWorkflow.load(workflow_id, Path(path))
        for workflow_id, path in paths.items()
    }


def default_workflow_paths(directory: Path) -> dict[str, Path]:
    """Every ``*.yaml`` definition of ``directory``, by file stem (as the stack deploys them)."""
    return {path.stem: path for path in sorted(directory.glob("*.yaml"))}


# --- REST -------------------------------------------------------------------------------

_LIST_PARAMETERS = frozenset({"pageSize", "pageToken", "view", "filter", "orderBy"})
_GET_PARAMETERS = frozenset({"view"})
# System parameters any Google REST client may add (enum encoding, field masks).
_SYSTEM_PARAMETERS = frozenset({"$alt", "alt", "$fields", "fields", "prettyPrint"})


class _RestHandler(BaseHTTPRequestHandler):
    server: _RestServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        _LOG.debug("rest: " + format, *args)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        if method == "GET" and url.path == "/healthz":
            self._send(HTTPStatus.OK, {"status": "ok"})
            return
        try:
            message = self._route(method, url.path, query, self._read_body())
        except ApiError as error:
            self._send(error.http_status, error.to_json())
            return
        enums_as_integers = "enum-encoding=int" in query.get("$alt", "")
        self._send(HTTPStatus.OK, _to_json(message, enums_as_integers))

    def _route(self, method: str, path: str, query: Mapping[str, str], body: bytes) -> Any:
        service = self.server.service
        if method == "POST" and (match := _EXECUTIONS_PATH.match(path)):
            _check_parameters(query, frozenset())
            return service.create(_parent(match), _execution_from_body(body))
        if method == "GET" and (match := _EXECUTIONS_PATH.match(path)):
            _check_parameters(query, _LIST_PARAMETERS)
            return service.list(
                _parent(match),
                page_size=_integer(query, "pageSize"),
                page_token=query.get("pageToken", ""),
                view=_view(query.get("view", "")),
                filter_expression=query.get("filter", ""),
                order_by=query.get("orderBy", ""),
            )
        if method == "GET" and _EXECUTION_PATH.match(path):
            _check_parameters(query, _GET_PARAMETERS)
            return service.get(path.removeprefix("/v1/"), _view(query.get("view", "")))
        if method == "POST" and _CANCEL_PATH.match(path):
            _check_parameters(query, frozenset())
            return service.cancel(path.removeprefix("/v1/").removesuffix(":cancel"))
        raise ApiError(grpc.StatusCode.NOT_FOUND, f"no method {method} {path} in this API")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            return self.rfile.read(int(length))
        except ValueError as error:
            raise _invalid(f"Content-Length '{length}' is not a number") from error

    def _send(self, status: HTTPStatus, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _RestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: ExecutionService) -> None:
        super().__init__(address, _RestHandler)
        self.service = service


def _parent(match: re.Match[str]) -> str:
    return (
        f"projects/{match['project']}/locations/{match['location']}/workflows/{match['workflow']}"
    )


def _check_parameters(query: Mapping[str, str], allowed: frozenset[str]) -> None:
    unknown = sorted(set(query) - allowed - _SYSTEM_PARAMETERS)
    if unknown:
        raise _invalid(f"unknown query parameter '{unknown[0]}'")


def _integer(query: Mapping[str, str], key: str) -> int:
    text = query.get(key, "0")
    try:
        return int(text)
    except ValueError as error:
        raise _invalid(f"{key} must be an integer, got '{text}'") from error


def _view(value: str | int) -> View | None:
    """A view named (REST) or numbered (gRPC, REST with integer enums); None if unspecified."""
    text = str(value)
    try:
        name = executions_types.ExecutionView(int(text)).name if text.isdigit() else text
    except ValueError:
        name = text
    if name in ("", "EXECUTION_VIEW_UNSPECIFIED"):
        return None
    for view in _VIEWS:
        if name == view:
            return view
    raise _invalid(f"view must be BASIC or FULL, got '{text}'")


def _execution_from_body(body: bytes) -> Execution:
    if not body.strip():
        return Execution()
    try:
        parsed: Execution = Execution.from_json(body.decode("utf-8"), ignore_unknown_fields=False)
        return parsed
    except (json_format.ParseError, ValueError, UnicodeError) as error:
        # ParseError names the offending field.
        raise _invalid(f"invalid Execution in the request body: {error}") from error


def _to_json(message: Any, enums_as_integers: bool) -> dict[str, Any]:
    rendered: dict[str, Any] = json.loads(
        type(message).to_json(
            message,
            use_integers_for_enums=enums_as_integers,
            indent=None,
            always_print_fields_with_no_presence=False,
        )
    )
    return rendered


# --- gRPC -------------------------------------------------------------------------------

_GRPC_SERVICE = "google.cloud.workflows.executions.v1.Executions"


def _grpc_handler(service: ExecutionService) -> grpc.GenericRpcHandler:
    def call(
        request_type: Any, response_type: Any, handle: Callable[[Any], Any]
    ) -> grpc.RpcMethodHandler:
        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return handle(request)
            except ApiError as error:
                context.abort(error.status, error.message)

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=request_type.deserialize,
            response_serializer=response_type.serialize,
        )

    return grpc.method_handlers_generic_handler(
        _GRPC_SERVICE,
        {
            "CreateExecution": call(
                executions_types.CreateExecutionRequest,
                Execution,
                lambda request: service.create(request.parent, request.execution),
            ),
            "GetExecution": call(
                executions_types.GetExecutionRequest,
                Execution,
                lambda request: service.get(request.name, _view(request.view)),
            ),
            "ListExecutions": call(
                executions_types.ListExecutionsRequest,
                executions_types.ListExecutionsResponse,
                lambda request: service.list(
                    request.parent,
                    page_size=request.page_size,
                    page_token=request.page_token,
                    view=_view(request.view),
                    filter_expression=request.filter,
                    order_by=request.order_by,
                ),
            ),
            "CancelExecution": call(
                executions_types.CancelExecutionRequest,
                Execution,
                lambda request: service.cancel(request.name),
            ),
        },
    )


# --- the server -------------------------------------------------------------------------


class ExecutionsServer:
    """The Executions API on ``host``: REST on ``port`` and gRPC on ``grpc_port``.

    Port 0 picks a free port; ``url`` and ``grpc_target`` tell where it listens once
    ``start()`` has returned.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        workflows: Mapping[str, Path],
        env: Mapping[str, str],
        project: str,
        location: str,
        grpc_port: int = 0,
        pubsub_emulator_host: str | None = None,
    ) -> None:
        service = ExecutionService(
            workflows=load_workflows(workflows),
            env=env,
            project=project,
            location=location,
            pubsub_emulator_host=pubsub_emulator_host,
        )
        self._attach(service, host, port, grpc_port)

    @classmethod
    def for_service(
        cls,
        service: ExecutionService,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        grpc_port: int = 0,
    ) -> ExecutionsServer:
        """Serve an already built service (its workflows loaded by the caller)."""
        server = cls.__new__(cls)
        server._attach(service, host, port, grpc_port)
        return server

    def _attach(self, service: ExecutionService, host: str, port: int, grpc_port: int) -> None:
        self.service = service
        self._host = host
        self._port = port
        self._grpc_port = grpc_port
        self._rest: _RestServer | None = None
        self._rest_thread: threading.Thread | None = None
        self._grpc: grpc.Server | None = None
        self._bound_grpc_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._rest_server().server_address[1]}"

    @property
    def grpc_target(self) -> str:
        if self._bound_grpc_port is None:
            raise RuntimeError("the Executions API is not started")
        return f"{self._host}:{self._bound_grpc_port}"

    def start(self) -> None:
        if self._rest is not None:
            raise RuntimeError("the Executions API is already started")
        grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        grpc_server.add_generic_rpc_handlers((_grpc_handler(self.service),))
        bound = grpc_server.add_insecure_port(f"{self._host}:{self._grpc_port}")
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {self._host}:{self._grpc_port}")
        self._rest = _RestServer((self._host, self._port), self.service)
        grpc_server.start()
        self._grpc = grpc_server
        self._bound_grpc_port = bound
        self._rest_thread = threading.Thread(
            target=self._rest.serve_forever,
            # A short poll lets stop() return promptly.
            kwargs={"poll_interval": 0.05},
            name="executions-rest",
            daemon=True,
        )
        self._rest_thread.start()

    def stop(self) -> None:
        self.service.shutdown()
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
        if self._rest_thread is not None:
            self._rest_thread.join()
        if self._grpc is not None:
            self._grpc.stop(grace=1.0).wait()
        self._rest = None
        self._rest_thread = None
        self._grpc = None

    def __enter__(self) -> ExecutionsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _rest_server(self) -> _RestServer:
        if self._rest is None:
            raise RuntimeError("the Executions API is not started")
        return self._rest
