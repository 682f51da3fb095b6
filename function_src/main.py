"""Cloud Functions entry points: decode the request or event, call the core, map the result.

Workflow mode: ``process_data``, ``train_model``, ``predict`` (HTTP) and
``trigger_workflow`` (Pub/Sub CloudEvent). Events mode: ``process_data_event`` and
``train_model_event`` (CloudEvents) plus ``predict``. Both modes: ``score_data``
(CloudEvent) scores uploads under the scoring prefix. See docs/FUNCTIONS.md.

Every function loads this one file, so the heavy cores (processing with pyarrow,
training with scikit-learn and skl2onnx) are imported inside the handlers that use
them: predict starts with neither (docs/FUNCTIONS.md, "Import budget").
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import flask
import functions_framework
import orjson
from cloudevents.http import CloudEvent
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from pipeline_core import choreography
from pipeline_core import logging as log
from pipeline_core.contract import Env
from pipeline_core.errors import (
    BadRequestError,
    NoChampionError,
    PayloadTooLargeError,
    PipelineError,
)
from pipeline_core.events import (
    ObjectRef,
    PromotionRequest,
    StorageNotification,
    TrainingRequest,
    pubsub_message,
)
from pipeline_core.http_body import MAX_BODY_BYTES, check_declared_size, parse_json, too_large
from pipeline_core.leases import utc_now
from pipeline_core.openapi import ServedModel, predict_api
from pipeline_core.publishing import Publisher, PubSubPublisher
from pipeline_core.registry import ModelRegistry
from pipeline_core.serving import ModelService, parse_instances, requested_version
from pipeline_core.settings import (
    ProcessingSettings,
    ScoringSettings,
    ServingSettings,
    TrainingSettings,
    TriggerSettings,
)
from pipeline_core.storage import GcsStorage, Storage
from pipeline_core.workflow_trigger import ExecutionStarter, WorkflowsExecutionStarter, trigger

if TYPE_CHECKING:
    from pipeline_core.processing import ProcessingResult

EXECUTION_ID_HEADER = "X-Workflow-Execution-Id"
# The heavy core a stage function needs, imported while the instance starts (before it
# listens) rather than by its first request; every other function never imports it.
# Cloud Run functions names the entry point an instance serves in FUNCTION_TARGET.
STAGE_CORES = {
    "process_data": "pipeline_core.processing",
    "process_data_event": "pipeline_core.processing",
    "train_model": "pipeline_core.training",
    "train_model_event": "pipeline_core.training",
    "score_data": "pipeline_core.scoring",
}


def _cloud_storage(project: str, bucket: str) -> Storage:
    return GcsStorage(bucket, project)


@dataclass
class Runtime:
    """Clients shared by the requests of one instance, created on first use.

    Tests replace ``open_bucket`` (project, bucket -> its storage), ``publisher``,
    ``starter`` and ``clock`` with fakes.
    """

    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    open_bucket: Callable[[str, str], Storage] = _cloud_storage
    publisher: Publisher | None = None
    starter: ExecutionStarter | None = None
    model_service: ModelService | None = None
    serving: ServingSettings | None = None
    clock: Callable[[], datetime] = utc_now
    _buckets: dict[tuple[str, str], Storage] = field(default_factory=dict, repr=False)
    _creating: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bucket(self, project: str, bucket: str) -> Storage:
        """One storage client per (project, bucket), opened on first use."""
        key = (project, bucket)
        storage = self._buckets.get(key)
        if storage is None:
            # setdefault: of two first calls racing, both get the one that is kept.
            storage = self._buckets.setdefault(key, self.open_bucket(project, bucket))
        return storage

    def pubsub(self) -> Publisher:
        if self.publisher is None:
            self.publisher = PubSubPublisher()
        return self.publisher

    def executions(self, settings: TriggerSettings) -> ExecutionStarter:
        if self.starter is None:
            self.starter = WorkflowsExecutionStarter(settings.workflows_api_endpoint)
        return self.starter

    def serving_settings(self) -> ServingSettings:
        if self.serving is None:
            self.serving = ServingSettings.from_env(self.environ)
        return self.serving

    def models(self) -> ModelService:
        # Concurrent first requests must share one service, or each loads the champion.
        with self._creating:
            if self.model_service is None:
                settings = self.serving_settings()
                registry = ModelRegistry(self.bucket(settings.project, settings.data_bucket))
                self.model_service = ModelService(
                    registry, refresh_seconds=settings.refresh_seconds, runtime=settings.runtime
                )
            return self.model_service


runtime = Runtime()
log.install(function=os.environ.get(Env.FUNCTION_TARGET), project=os.environ.get(Env.PROJECT))
if os.environ.get(Env.FUNCTION_TARGET) in STAGE_CORES:
    importlib.import_module(STAGE_CORES[os.environ[Env.FUNCTION_TARGET]])


def _respond(body: Mapping[str, Any], status: int = 200) -> flask.Response:
    # orjson: a 1,000-row prediction encodes in a fraction of the stdlib's time.
    return flask.Response(
        orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        mimetype="application/json",
    )


def _error_response(error: PipelineError) -> flask.Response:
    if error.http_status >= 500:
        log.error(error.message, code=error.code)
    else:
        log.warning(error.message, code=error.code)
    return _respond(error.to_json(), error.http_status)


def _json_body(request: flask.Request) -> Any:
    return parse_json(_body(request))


def _body(request: flask.Request) -> bytes:
    """The raw body (read once, then cached), refused past ``MAX_BODY_BYTES`` (by its
    Content-Length, or while a chunked body is read)."""
    request.max_content_length = MAX_BODY_BYTES
    try:
        check_declared_size(request.content_length)
        return request.get_data()
    except (PayloadTooLargeError, RequestEntityTooLarge):
        _leave_unread(request)
        raise too_large(request.content_length or MAX_BODY_BYTES + 1) from None
    except HTTPException as error:  # the body ended before its Content-Length
        _leave_unread(request)
        raise BadRequestError(f"the request body could not be read: {error.description}") from None


def _leave_unread(request: flask.Request) -> None:
    """functions-framework reads the whole body after every answer; a refused one is
    left unread instead (werkzeug's own way of injecting a parsed stream)."""
    request.__dict__["stream"] = io.BytesIO()


def _http_handler(
    handle: Callable[[flask.Request], flask.Response],
) -> Callable[[flask.Request], flask.Response]:
    """Ids in every log line; core errors -> their status; anything else -> logged 500."""

    def wrapper(request: flask.Request) -> flask.Response:
        headers = request.headers
        with log.log_context(
            traceparent=headers.get(log.TRACEPARENT_HEADER),
            cloud_trace_context=headers.get(log.CLOUD_TRACE_HEADER),
            execution_id=headers.get(EXECUTION_ID_HEADER),
        ):
            try:
                # Read (bounded) on every route: functions-framework reads the body after
                # each answer, where a short or oversized one would be its own HTML 500.
                _body(request)
                return handle(request)
            except PipelineError as error:
                return _error_response(error)
            except HTTPException as error:  # werkzeug's, e.g. a client that went away
                return _framework_error(error)
            except Exception as error:
                log.exception(f"unexpected error: {error}", error)
                # The base error's answer: 500 "internal", with no detail of the cause.
                internal = PipelineError("internal error; see the logs")
                return _respond(internal.to_json(), internal.http_status)

    wrapper.__name__ = handle.__name__
    wrapper.__doc__ = handle.__doc__
    return wrapper


Handler = Callable[[flask.Request], flask.Response]


def _framework_error(error: HTTPException) -> flask.Response:
    """The answers functions-framework and Flask give themselves (``/robots.txt``,
    ``/favicon.ico``, a malformed request line), as JSON like every other answer."""
    # Never reached our handler, so its body was not read: functions-framework's own
    # read after the answer must not meet a lying Content-Length.
    _leave_unread(flask.request)
    status = error.code or 500
    code = FRAMEWORK_CODES.get(status, "bad_request" if status < 500 else "internal")
    message = f"{error.name}: {error.description}" if error.description else error.name
    return _respond({"error": {"code": code, "message": message}}, status)


FRAMEWORK_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


# functions-framework runs this module inside its app's context.
if flask.has_app_context():
    flask.current_app.register_error_handler(HTTPException, _framework_error)
    # Werkzeug answers "//" or an empty path with an HTML redirect to "/" (a routing
    # exception, which no error handler sees); without them, _dispatch answers.
    flask.current_app.url_map.merge_slashes = False
    flask.current_app.url_map.strict_slashes = False


def _dispatch(request: flask.Request, routes: Mapping[str, tuple[str, Handler]]) -> flask.Response:
    """One JSON answer for every path and method a function does not serve."""
    path = request.path.rstrip("/") or "/"
    if path not in routes:
        raise _RouteNotFoundError(path, sorted(routes))
    method, handle = routes[path]
    if request.method != method:
        answer = _error_response(_MethodNotAllowedError(request.method, (method,)))
        answer.headers["Allow"] = method  # RFC 9110: a 405 names the allowed methods
        return answer
    return handle(request)


class _RouteNotFoundError(BadRequestError):
    http_status = 404
    code = "not_found"

    def __init__(self, path: str, known: list[str]) -> None:
        super().__init__(f"no route {path}; use {', '.join(known)}")


class _MethodNotAllowedError(BadRequestError):
    http_status = 405
    code = "method_not_allowed"

    def __init__(self, method: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"method {method} is not allowed here; use {', '.join(allowed)}")


@functions_framework.http
@_http_handler
def process_data(request: flask.Request) -> flask.Response:
    """POST {bucket, object, generation} -> processed data + stats, or 422 rejected."""
    return _dispatch(request, {"/": ("POST", _process_request)})


def _process_request(request: flask.Request) -> flask.Response:
    ref = ObjectRef.from_request(_json_body(request))
    return _respond(_process(ProcessingSettings.from_env(runtime.environ), ref).to_json())


@functions_framework.http
@_http_handler
def train_model(request: flask.Request) -> flask.Response:
    """POST / {bucket, object, generation, processed_data, processed_parts} -> a candidate;
    POST /promote {bucket, object, generation, model_version} -> the promotion decision."""
    return _dispatch(
        request, {"/": ("POST", _train_request), "/promote": ("POST", _promote_request)}
    )


def _train_request(request: flask.Request) -> flask.Response:
    from pipeline_core.training import train

    training_request = TrainingRequest.from_json(_json_body(request))
    settings = TrainingSettings.from_env(runtime.environ)
    storage = runtime.bucket(settings.project, settings.data_bucket)
    return _respond(train(storage, training_request, settings, runtime.clock))


def _promote_request(request: flask.Request) -> flask.Response:
    from pipeline_core.training import promote_candidate

    promotion = PromotionRequest.from_json(_json_body(request))
    settings = TrainingSettings.from_env(runtime.environ)
    storage = runtime.bucket(settings.project, settings.data_bucket)
    return _respond(promote_candidate(storage, promotion, settings, runtime.clock))


@functions_framework.http
@_http_handler
def predict(request: flask.Request) -> flask.Response:
    """POST / predictions; GET /health, /ready, /model, /versions, /openapi.json;
    POST /reload."""
    return _dispatch(
        request,
        {
            "/": ("POST", _predict),
            "/health": ("GET", _health),
            "/ready": ("GET", _ready),
            "/model": ("GET", _describe_model),
            "/versions": ("GET", _versions),
            "/reload": ("POST", _reload),
            "/openapi.json": ("GET", _openapi),
        },
    )


def _predict(request: flask.Request) -> flask.Response:
    payload = _json_body(request)
    service = runtime.models()
    version = requested_version(payload)
    model = service.pinned(version) if version else service.current()
    rows = parse_instances(payload, model.feature_names, runtime.serving_settings().max_batch)
    return _respond(model.predict(rows))


def _health(_: flask.Request) -> flask.Response:
    # Liveness only: never fetches or loads a model (that is /ready's question).
    service = runtime.models()
    model = service.loaded
    answer: dict[str, Any] = {
        "status": "ok",
        "model_loaded": model is not None,
        "model_version": model.version if model else None,
    }
    return _respond(_with_refusal(answer, service))


def _ready(_: flask.Request) -> flask.Response:
    service = runtime.models()
    try:
        model = service.current()
    except PipelineError as error:
        answer = {"status": "not_ready", "detail": error.message}
        return _respond(_with_refusal(answer, service), 503)
    ready = {"status": "ready", "model_version": model.version, "runtime": model.runtime}
    return _respond(_with_refusal(ready, service))


def _with_refusal(answer: dict[str, Any], service: ModelService) -> dict[str, Any]:
    """While the pointer names a champion that was refused, say so (another serves)."""
    if service.refused is not None:
        answer["refused_champion"] = service.refused
    return answer


def _openapi(_: flask.Request) -> flask.Response:
    try:
        model = runtime.models().current()
    except PipelineError:
        served = None  # described with any feature names until a champion serves
    else:
        served = ServedModel(model.version, model.feature_names, model.manifest["classes"])
    return _respond(predict_api(served, runtime.serving_settings().max_batch))


def _versions(_: flask.Request) -> flask.Response:
    return _respond(runtime.models().versions())


def _describe_model(_: flask.Request) -> flask.Response:
    return _respond(runtime.models().current().describe())


def _reload(request: flask.Request) -> flask.Response:
    # The body is only a nudge: empty, {} (the workflow) or a Pub/Sub push envelope.
    data = _body(request)
    if data.strip():
        body = parse_json(data)
        if isinstance(body, dict) and "message" in body:
            log.info("reload pushed", message_id=pubsub_message(body).message_id)
    model = runtime.models().refresh()
    if model is None:
        raise NoChampionError("no champion has been promoted yet")
    return _respond({"status": "serving", "model_version": model.version})


def _on_notification(
    handle: Callable[[StorageNotification], None],
) -> Callable[[CloudEvent], None]:
    """A CloudEvent function around a handler of storage notifications: the event's ids
    in every log line; a malformed notification is acknowledged with an ERROR log."""

    def handler(event: CloudEvent) -> None:
        with _event_log_context(event):
            notification = _notification(event)
            if notification is not None:
                handle(notification)

    handler.__name__ = handle.__name__
    handler.__doc__ = handle.__doc__
    return handler


@functions_framework.cloud_event
@_on_notification
def trigger_workflow(notification: StorageNotification) -> None:
    """Upload notification -> one Workflows execution per object generation."""
    settings = TriggerSettings.from_env(runtime.environ)
    storage = runtime.bucket(settings.project, settings.data_bucket)
    trigger(notification, storage, runtime.executions(settings), settings, runtime.clock)


@functions_framework.cloud_event
@_on_notification
def process_data_event(notification: StorageNotification) -> None:
    """Events mode: notification -> process -> message on model-training-trigger."""
    settings = ProcessingSettings.from_env(runtime.environ)
    choreography.process_upload(
        notification, settings, lambda ref: _process(settings, ref), runtime.pubsub()
    )


@functions_framework.cloud_event
def train_model_event(event: CloudEvent) -> None:
    """Events mode: processed data message -> train -> model-serving-trigger + summary."""
    with _event_log_context(event):
        try:
            request = TrainingRequest.from_json(pubsub_message(event.data).json())
        except BadRequestError as error:
            log.error(f"acknowledging a malformed training message: {error.message}")
            return
        from pipeline_core.training import train_smoke_and_promote

        settings = TrainingSettings.from_env(runtime.environ)
        storage = runtime.bucket(settings.project, settings.data_bucket)
        choreography.train_and_announce(
            request,
            settings,
            lambda training: train_smoke_and_promote(storage, training, settings, runtime.clock),
            runtime.pubsub(),
        )


@functions_framework.cloud_event
@_on_notification
def score_data(notification: StorageNotification) -> None:
    """Scoring upload notification -> predictions/ of the champion + summary message."""
    from pipeline_core.scoring import ScoringSpec, score

    settings = ScoringSettings.from_env(runtime.environ)
    storage = runtime.bucket(settings.project, settings.data_bucket)
    spec = ScoringSpec(
        settings.score_prefix, settings.id_column, settings.target_column, settings.runtime
    )
    choreography.score_upload(
        notification,
        settings,
        lambda ref: score(
            storage, ref, spec, lease_seconds=settings.timeout_seconds, clock=runtime.clock
        ),
        runtime.pubsub(),
    )


def _event_log_context(event: CloudEvent) -> contextlib.AbstractContextManager[None]:
    """The event id, and the trace Eventarc sends in the ``traceparent`` extension."""
    return log.log_context(traceparent=event.get("traceparent"), event_id=event["id"])


def _notification(event: CloudEvent) -> StorageNotification | None:
    """The typed notification, or None (acknowledged, logged) when it is malformed."""
    try:
        return StorageNotification.from_cloud_event(event["type"], event["id"], event.data)
    except BadRequestError as error:
        log.error(f"acknowledging a malformed notification: {error.message}")
        return None


def _process(settings: ProcessingSettings, ref: ObjectRef) -> ProcessingResult:
    from pipeline_core.processing import DatasetSchema, process

    return process(
        runtime.bucket(settings.project, settings.data_bucket),
        ref,
        DatasetSchema(settings.target_column, settings.feature_columns, settings.min_rows),
        chunk_rows=settings.chunk_rows,
        lease_seconds=settings.timeout_seconds,
        clock=runtime.clock,
    )
