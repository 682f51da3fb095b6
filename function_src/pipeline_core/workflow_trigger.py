"""trigger_workflow: one Workflows execution per uploaded object generation.

At-least-once delivery meets at-most-once start through two objects under ``runs/``:

1. the marker ``runs/<object>/<generation>.json`` names the execution once one was
   started: a delivery that finds it skips;
2. otherwise the delivery takes the lease ``runs/<object>/<generation>.lease.json``
   (``pipeline_core.leases``: one live holder; a concurrent delivery is asked to retry;
   a holder that crashed is taken over after the function's timeout), checks the
   marker again (a rival may have finished in between), starts the execution and
   writes the marker with if-generation-match=0. A failed start raises, so the
   platform retries; the lease is released either way.

The one window left: a crash after the execution started and before the marker was
written lets a later delivery start a second execution. The stages are idempotent per
object generation, so that execution finds the recorded outcomes and repeats only the
summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pipeline_core import leases
from pipeline_core import logging as log
from pipeline_core.contract import run_lease_object, run_marker_object
from pipeline_core.errors import PipelineError, TransientError
from pipeline_core.events import StorageNotification
from pipeline_core.settings import TriggerSettings
from pipeline_core.storage import Storage, read_json, write_json


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
    marker = run_marker_object(ref)
    return leases.once(
        storage,
        run_lease_object(ref),
        seconds=settings.timeout_seconds,
        clock=clock,
        recorded=lambda: _already_started(storage, marker),
        work=lambda: _start(notification, storage, starter, settings, clock),
    )


def _start(
    notification: StorageNotification,
    storage: Storage,
    starter: ExecutionStarter,
    settings: TriggerSettings,
    clock: Callable[[], datetime],
) -> TriggerOutcome:
    """Start the execution and record it in the run's marker."""
    ref = notification.ref
    try:
        execution = starter.start(settings.workflow_path, ref.to_json())
    except Exception as error:
        log.error("could not start the workflow", error=str(error), object=ref.name)
        if isinstance(error, PipelineError):
            raise
        raise TransientError(f"starting the workflow failed: {error}") from error
    record = {
        "execution": execution,
        "event_id": notification.event_id,
        "started_at": clock().isoformat(),
    }
    try:
        write_json(storage, run_marker_object(ref), record, if_generation_match=0)
    except PipelineError as error:
        # The execution runs; raising would only invite a duplicate start.
        log.warning("execution started but its marker was not written", error=str(error))
    log.info("started workflow execution", execution=execution, object=ref.name)
    return TriggerOutcome("started", "new upload", execution)


def _already_started(storage: Storage, marker: str) -> TriggerOutcome | None:
    if storage.stat(marker) is None:
        return None
    execution = read_json(storage, marker)["execution"]
    reason = f"already started as {execution}"
    log.info(f"skipping duplicate delivery: {reason}", marker=marker)
    return TriggerOutcome("skipped", reason, execution)
