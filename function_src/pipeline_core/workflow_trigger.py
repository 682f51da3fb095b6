"""trigger_workflow: one Workflows execution per uploaded object generation.

At-least-once delivery meets at-most-once start through a marker object
``runs/<object>/<generation>.json``:

1. create the marker with if-generation-match=0 (state ``starting``); if it already
   exists, another delivery owns the run: skip when it holds an execution name, ask for
   a retry while it is fresh, and take it over (generation precondition) once it is
   older than ``MARKER_STALE_SECONDS`` (its owner crashed before starting);
2. start the execution; on failure delete our marker (generation precondition) and
   raise, so the platform retries from a clean state;
3. record the execution name in the marker.

The one window left: a crash after the execution started and before step 3 lets a
takeover start a second execution. The stages are idempotent per object generation,
so that execution finds the recorded outcomes and repeats only the summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pipeline_core import logging as log
from pipeline_core.errors import PipelineError, PreconditionFailedError, TransientError
from pipeline_core.events import ObjectRef, StorageNotification
from pipeline_core.settings import TriggerSettings
from pipeline_core.storage import Storage

MARKER_STALE_SECONDS = 300
JSON_CONTENT_TYPE = "application/json"


class ExecutionStarter(Protocol):
    def start(self, workflow: str, argument: Mapping[str, Any]) -> str:
        """Start an execution of ``workflow`` (full path); returns the execution name."""
        ...


class WorkflowsExecutionStarter:
    """Starts executions through google-cloud-workflows' ``ExecutionsClient``.

    ``api_endpoint`` (set only by the local stack) is a gRPC target ``host:port``: the
    client's own gRPC transport then talks to it over an insecure loopback channel.
    Empty means Google's endpoint with the default credentials.
    """

    def __init__(self, api_endpoint: str = "", client: Any = None) -> None:
        self._api_endpoint = api_endpoint
        self._client = client

    def _executions(self) -> Any:
        if self._client is None:
            from google.cloud.workflows import executions_v1

            if self._api_endpoint:
                import grpc  # type: ignore[import-untyped]
                from google.cloud.workflows.executions_v1.services.executions.transports import (
                    ExecutionsGrpcTransport,
                )

                # gRPC backs off reconnecting for up to two minutes by default, so a
                # cached channel would keep failing (and let Pub/Sub dead-letter the
                # upload) long after a restarted local API is back.
                channel = grpc.insecure_channel(
                    self._api_endpoint,
                    options=[
                        ("grpc.initial_reconnect_backoff_ms", 200),
                        ("grpc.min_reconnect_backoff_ms", 200),
                        ("grpc.max_reconnect_backoff_ms", 1000),
                    ],
                )
                self._client = executions_v1.ExecutionsClient(
                    transport=ExecutionsGrpcTransport(channel=channel)
                )
            else:
                self._client = executions_v1.ExecutionsClient()
        return self._client

    def start(self, workflow: str, argument: Mapping[str, Any]) -> str:
        from google.api_core import exceptions
        from google.cloud.workflows import executions_v1

        client = self._executions()
        try:
            execution = client.create_execution(
                parent=workflow,
                execution=executions_v1.Execution(argument=json.dumps(dict(argument))),
            )
        except exceptions.GoogleAPIError as error:
            raise TransientError(f"starting an execution of {workflow} failed: {error}") from error
        return str(execution.name)


def marker_object(ref: ObjectRef) -> str:
    return f"runs/{ref.name}/{ref.generation}.json"


@dataclass(frozen=True)
class TriggerOutcome:
    status: str  # "started" or "skipped"
    reason: str
    execution: str | None = None


def trigger(
    notification: StorageNotification,
    storage: Storage,
    starter: ExecutionStarter,
    settings: TriggerSettings,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> TriggerOutcome:
    ref = notification.ref
    skip = notification.skip_reason()
    if skip is None and ref.bucket != settings.data_bucket:
        skip = f"bucket {ref.bucket} is not the data bucket {settings.data_bucket}"
    if skip is not None:
        log.info(f"skipping notification: {skip}", object=ref.name, generation=ref.generation)
        return TriggerOutcome("skipped", skip)
    marker = marker_object(ref)
    claim = {"state": "starting", "event_id": notification.event_id, "at": clock().isoformat()}
    owned = _claim(storage, marker, claim, clock)
    if isinstance(owned, TriggerOutcome):
        return owned
    try:
        execution = starter.start(settings.workflow_path, ref.to_json())
    except Exception as error:
        storage.delete(marker, if_generation_match=owned)
        log.error("could not start the workflow; released the marker", error=str(error))
        if isinstance(error, PipelineError):
            raise
        raise TransientError(f"starting the workflow failed: {error}") from error
    try:
        storage.write(
            marker,
            json.dumps({**claim, "state": "started", "execution": execution}).encode(),
            content_type=JSON_CONTENT_TYPE,
            if_generation_match=owned,
        )
    except PipelineError as error:
        # The execution runs; raising would only invite a duplicate start.
        log.warning("execution started but its marker was not updated", error=str(error))
    log.info("started workflow execution", execution=execution, object=ref.name)
    return TriggerOutcome("started", "new upload", execution)


def _claim(
    storage: Storage, marker: str, claim: dict[str, Any], clock: Callable[[], datetime]
) -> int | TriggerOutcome:
    """The marker generation we own, or the outcome when another delivery owns the run."""
    body = json.dumps(claim).encode()
    try:
        return storage.write(marker, body, content_type=JSON_CONTENT_TYPE, if_generation_match=0)
    except PreconditionFailedError:
        existing = storage.read(marker)
    record = json.loads(existing.data)
    if record.get("execution"):
        reason = f"already started as {record['execution']}"
        log.info(f"skipping duplicate delivery: {reason}", marker=marker)
        return TriggerOutcome("skipped", reason, record["execution"])
    age = (clock() - datetime.fromisoformat(record["at"])).total_seconds()
    if age < MARKER_STALE_SECONDS:
        raise TransientError(
            f"another delivery claimed {marker} {age:.0f}s ago and is starting the run; retry later"
        )
    log.warning("taking over a stale run marker", marker=marker, age_seconds=age)
    return storage.write(
        marker, body, content_type=JSON_CONTENT_TYPE, if_generation_match=existing.generation
    )
