"""Uploading data to the local stack and following pipeline runs to their summary.

A run is identified by the uploaded object and its generation: a training run for an
object under raw/, a scoring run for one under the scoring prefix. Its outcome is the summary
message on the model-events topic (docs/ARCHITECTURE.md, "Run summary"); the stages in
between are observed in the bucket and, in workflow mode, through the Executions API.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from devstack.errors import DevstackError, RunFailedError, RunTimeoutError
from devstack.pubsub import PubSubEmulator
from devstack.stack import StackState
from pipeline_core import contract

_POLL_SECONDS = 0.5
# After a failed execution the workflow still publishes its summary; wait this long for it.
_SUMMARY_GRACE_SECONDS = 15.0
_HTTP_TIMEOUT_SECONDS = 30


# Both entry points skip empty objects (StorageNotification.skip_reason): consoles and
# tools create them as folder placeholders.
def _empty_object_note(prefix: str) -> str:
    return f"the pipeline ignores empty objects under {prefix}"


Progress = Callable[[str], None]
# The statuses of a run summary that mean the run did its work (training, scoring).
SUCCEEDED = frozenset({"succeeded", "scored"})


@dataclass(frozen=True)
class RunKey:
    bucket: str
    object: str
    generation: str

    # The contract's object names take an upload by its name and generation.
    @property
    def name(self) -> str:
        return self.object

    def matches(self, attributes: dict[str, str]) -> bool:
        return (
            attributes.get("object") == self.object
            and attributes.get("generation") == self.generation
        )


def upload(
    state: StackState, file: Path, *, name: str | None = None, prefix: str = contract.RAW_PREFIX
) -> RunKey:
    """Put ``file`` under ``prefix`` (raw/: training; the scoring prefix: scoring) in
    the local bucket; return the run it starts."""
    object_name = _checked_upload(file, name, prefix)
    return _upload(state.storage_client(), state.bucket, file, object_name)


def upload_to_cloud(bucket: str, file: Path, *, name: str | None = None) -> RunKey:
    """Put ``file`` under raw/ in a real bucket, with the caller's default credentials."""
    object_name = _checked_upload(file, name, contract.RAW_PREFIX)
    from google.cloud import storage

    return _upload(storage.Client(), bucket, file, object_name)


def _checked_upload(file: Path, name: str | None, prefix: str) -> str:
    """The object name under ``prefix``, once the file and the name are known to be
    usable (checked before any client exists, so these errors come first)."""
    if not file.is_file():
        raise DevstackError(f"{file} is not a file; pass the path of a CSV file to upload")
    if file.stat().st_size == 0:
        raise DevstackError(
            f"{file} is empty; {_empty_object_note(prefix)}, so uploading it starts no run"
        )
    object_name = name or file.name
    if any(segment in ("", ".", "..") for segment in object_name.split("/")):
        raise DevstackError(
            f"--name {object_name!r} is not a plain object name under {prefix}: use names "
            "like 'iris.csv' or 'team/iris.csv', without empty, '.' or '..' parts"
        )
    return prefix + object_name


def _upload(client: Any, bucket: str, file: Path, object_name: str) -> RunKey:
    blob = client.bucket(bucket).blob(object_name)
    blob.upload_from_filename(str(file))
    return RunKey(bucket=bucket, object=blob.name, generation=str(blob.generation))


@dataclass(frozen=True)
class RunWatch:
    """Private pull subscriptions, created before the upload so nothing can be missed:
    the run's summary on model-events, and its notification should it be dead-lettered."""

    summaries: str
    dead_letters: str


@contextmanager
def summary_watch(state: StackState) -> Iterator[RunWatch]:
    pubsub = state.pubsub()
    suffix = uuid.uuid4().hex[:8]
    watch = RunWatch(
        summaries=f"{state.name_prefix}-watch-{suffix}",
        dead_letters=f"{state.name_prefix}-watch-dead-{suffix}",
    )
    pubsub.create_subscription(watch.summaries, state.topics["model_events"])
    try:
        pubsub.create_subscription(watch.dead_letters, state.topics["dead_letter"])
        try:
            yield watch
        finally:
            pubsub.delete_subscription(watch.dead_letters)
    finally:
        pubsub.delete_subscription(watch.summaries)


def upload_and_follow(
    state: StackState,
    file: Path,
    *,
    name: str | None,
    timeout: float,
    progress: Progress,
    prefix: str = contract.RAW_PREFIX,
) -> dict[str, Any]:
    with summary_watch(state) as watch:
        started = time.monotonic()
        key = upload(state, file, name=name, prefix=prefix)
        progress(
            f"uploaded gs://{key.bucket}/{key.object} (generation {key.generation}) "
            f"in {time.monotonic() - started:.1f} s"
        )
        return follow(state, key, watch=watch, timeout=timeout, progress=progress, started=started)


def upload_all_and_follow(
    state: StackState, files: Mapping[str, Path], *, timeout: float, progress: Progress
) -> list[dict[str, Any]]:
    """Upload every file (object name under raw/ -> file) at once, one thread each, and
    follow every run; the summaries in ``files``' order. A run that did not succeed
    gives its failure summary, or status ``timed_out`` when none came in time."""

    def upload_and_follow_one(name: str, file: Path) -> dict[str, Any]:
        try:
            return upload_and_follow(state, file, name=name, timeout=timeout, progress=progress)
        except RunFailedError as failed:
            return failed.summary
        except RunTimeoutError as late:
            return {
                "status": "timed_out",
                "object": contract.RAW_PREFIX + name,
                "reason": str(late),
            }

    with ThreadPoolExecutor(max_workers=max(1, len(files))) as pool:
        return list(pool.map(upload_and_follow_one, files.keys(), files.values()))


def follow(
    state: StackState,
    run: RunKey,
    *,
    watch: RunWatch,
    timeout: float,
    progress: Progress,
    started: float | None = None,
) -> dict[str, Any]:
    """Report each stage as it appears, with the seconds since the previous line and
    since ``started`` (a ``time.monotonic()`` reading, by default now); return the run
    summary when it is published.

    Raises RunFailedError for a rejected or failed run, or when the upload's
    notification was dead-lettered; RunTimeoutError when no summary arrives in time.
    """
    observer = _StageObserver(
        state, run, progress, time.monotonic() if started is None else started
    )
    pubsub = state.pubsub()
    deadline = time.monotonic() + timeout
    failed_at: float | None = None
    while time.monotonic() < deadline:
        summary = _take_summary(pubsub, watch.summaries, run)
        if summary is not None:
            observer.poll()  # report the stages the summary overtook
            if summary.get("status") not in SUCCEEDED:
                raise RunFailedError(summary)
            return summary
        dead_letter = _take_dead_letter(pubsub, watch.dead_letters, run)
        if dead_letter is not None:
            raise RunFailedError(dead_letter)
        execution_error = observer.poll()
        if execution_error is not None:
            failed_at = failed_at or time.monotonic()
            if time.monotonic() - failed_at > _SUMMARY_GRACE_SECONDS:
                raise RunFailedError(execution_error)
        time.sleep(_POLL_SECONDS)
    raise RunTimeoutError(
        f"no summary for {run.object} (generation {run.generation}) within {timeout:.0f} s; "
        f"last stage seen: {observer.last_stage}. Check 'python -m devstack logs' and "
        "'python -m devstack runs'"
    )


def _take_summary(pubsub: PubSubEmulator, subscription: str, run: RunKey) -> dict[str, Any] | None:
    messages = pubsub.pull(subscription)
    # A private subscription: messages of other runs are of no use to anyone here.
    pubsub.acknowledge(subscription, [message.ack_id for message in messages])
    for message in messages:
        if run.matches(message.attributes):
            summary: dict[str, Any] = json.loads(message.data)
            return summary
    return None


def _take_dead_letter(
    pubsub: PubSubEmulator, subscription: str, run: RunKey
) -> dict[str, Any] | None:
    """A failure summary if this run's upload notification was dead-lettered.

    Only notifications identify their upload (GCS attributes objectId and
    objectGeneration); other dead letters, such as a failed reload push, are not about
    whether this run produced a summary.
    """
    messages = pubsub.pull(subscription)
    pubsub.acknowledge(subscription, [message.ack_id for message in messages])
    for message in messages:
        attributes = message.attributes
        if (attributes.get("objectId"), attributes.get("objectGeneration")) != (
            run.object,
            run.generation,
        ):
            continue
        source = attributes.get("CloudPubSubDeadLetterSourceSubscription", "?")
        attempts = attributes.get("CloudPubSubDeadLetterSourceDeliveryCount", "?")
        return {
            "status": "failed",
            "bucket": run.bucket,
            "object": run.object,
            "generation": run.generation,
            "stage": "delivery",
            "reason": (
                f"the upload notification was dead-lettered by {source} after {attempts} "
                "delivery attempts; the function it pushes to kept failing (see "
                "'python -m devstack logs')"
            ),
        }
    return None


class _StageObserver:
    """Turns what is visible of a run into one progress line per new fact."""

    def __init__(self, state: StackState, run: RunKey, progress: Progress, started: float) -> None:
        self._state = state
        self._run = run
        self._progress = progress
        self._started = started
        self._previous = time.monotonic()  # the upload line was the last one
        self._bucket = state.storage_client().bucket(state.bucket)
        self._seen: set[str] = set()
        self._champion = self._champion_version()
        self.last_stage = "uploaded"

    def _report(self, stage: str, line: str) -> None:
        if line not in self._seen:
            self._seen.add(line)
            self.last_stage = stage
            # Seen at a poll, so a stage's time is exact to _POLL_SECONDS.
            now = time.monotonic()
            self._progress(
                f"{line} (+{now - self._previous:.1f} s; {now - self._started:.1f} s in all)"
            )
            self._previous = now

    def poll(self) -> dict[str, Any] | None:
        """Report new facts; return a failure summary if the execution failed."""
        if self._run.object.startswith(self._state.score_prefix):
            scoring = self._read_json(contract.scoring_summary_object(self._run))
            if scoring is not None:
                self._report(str(scoring.get("status")), describe_scoring(scoring))
            return None  # score_data itself publishes every outcome
        failure = None
        if self._state.workflows_url is not None:
            failure = self._poll_execution()
        stats = self._read_json(contract.stats_object(self._run))
        if stats is not None:
            rows = f"{stats.get('rows_in', '?')} rows in, {stats.get('rows_out', '?')} kept"
            self._report("processed", f"processed: {rows}")
        outcome = self._read_json(contract.lineage_object(self._run))
        if outcome is not None:
            # Written twice: once for the candidate, once with the promotion decision.
            stage = "decided" if outcome.get("decided", True) else "trained"
            self._report(stage, f"{stage}: {_describe_outcome(outcome)}")
        rejection = self._read_json(contract.rejection_object(self._run))
        if rejection is not None:
            self._report("rejected", f"rejected: {_describe_rejection(rejection)}")
        champion = self._champion_version()
        # Promotion moves the pointer before it records the decision: a candidate still
        # undecided at this poll waits for its decision line before the champion line.
        undecided = outcome is not None and not outcome.get("decided", True)
        if champion != self._champion and not undecided:
            self._champion = champion
            self._report("champion", f"champion is now {champion}")
        return failure

    def _poll_execution(self) -> dict[str, Any] | None:
        execution = find_execution(self._state, self._run)
        if execution is None:
            return None
        state = execution.get("state", "?")
        steps = execution.get("status", {}).get("currentSteps", [])
        where = ""
        if steps and state == "ACTIVE":
            where = f" at {steps[-1].get('routine')}.{steps[-1].get('step')}"
        self._report("workflow", f"workflow execution {state}{where}")
        if state in ("FAILED", "CANCELLED"):
            payload = execution.get("error", {}).get("payload", "")
            return {
                "status": "failed",
                "stage": "workflow",
                "reason": f"execution {execution.get('name')} {state}: {payload}",
            }
        return None

    def _read_json(self, name: str) -> dict[str, Any] | None:
        blob = self._bucket.get_blob(name)
        if blob is None:
            return None
        try:
            document: dict[str, Any] = json.loads(blob.download_as_bytes())
        except ValueError:
            return None
        return document

    def _champion_version(self) -> str | None:
        pointer = self._read_json(contract.CHAMPION_OBJECT)
        return None if pointer is None else str(pointer.get("model_version"))


def describe_scoring(summary: dict[str, Any]) -> str:
    """One line of a scoring outcome (pipeline_core.scoring's summary.json)."""
    status = summary.get("status")
    if status != "scored":
        return f"{status}: {summary.get('reason')} - {summary.get('detail')}"
    refusals = summary.get("refusals") or {}
    refused = f" ({', '.join(f'{k}: {v}' for k, v in refusals.items())})" if refusals else ""
    return (
        f"scored: {summary.get('rows_scored')} of {summary.get('rows_in')} rows by model "
        f"{summary.get('model_version')}, {summary.get('rows_refused')} refused{refused}; "
        f"{summary.get('predictions_csv')} and {summary.get('predictions_object')}"
    )


def download(state: StackState, name: str, destination: Path) -> Path:
    """Save an object of the local bucket (the predictions CSV) to ``destination``."""
    blob = state.storage_client().bucket(state.bucket).get_blob(name)
    if blob is None:
        raise DevstackError(f"gs://{state.bucket}/{name} does not exist")
    blob.download_to_filename(str(destination))
    return destination


def _describe_rejection(rejection: dict[str, Any]) -> str:
    # process_data records a reason code and a sentence (pipeline_core.processing).
    return " - ".join(str(rejection[key]) for key in ("reason", "detail") if rejection.get(key))


def _describe_outcome(outcome: dict[str, Any]) -> str:
    version = outcome.get("model_version")
    if not outcome.get("decided", True):
        runtime = outcome.get("serving_runtime", "?")
        return f"model {version} is a candidate (served by {runtime}); smoke test next"
    promoted = "promoted to champion" if outcome.get("promoted") else "not promoted"
    return f"model {version} {promoted} ({outcome.get('reason', '')})"


def _executions_url(state: StackState) -> str:
    return (
        f"{state.workflows_url}/v1/projects/{state.project}/locations/{state.region}"
        f"/workflows/{state.workflow_name}/executions"
    )


def list_executions(state: StackState) -> list[dict[str, Any]]:
    if state.workflows_url is None:
        return []
    try:
        response = requests.get(
            _executions_url(state),
            params={"view": "FULL", "pageSize": "100"},
            timeout=_HTTP_TIMEOUT_SECONDS,
        )
    except requests.ConnectionError:
        return []
    if not response.ok:
        return []
    executions: list[dict[str, Any]] = response.json().get("executions", [])
    return executions


def _argument_of(execution: dict[str, Any]) -> dict[str, Any]:
    try:
        argument = json.loads(execution.get("argument") or "null")
    except ValueError:
        return {}
    return argument if isinstance(argument, dict) else {}


def find_execution(state: StackState, run: RunKey) -> dict[str, Any] | None:
    return _execution_of(list_executions(state), run)


def _execution_of(executions: list[dict[str, Any]], run: RunKey) -> dict[str, Any] | None:
    """The newest execution whose argument names this run (the list is newest first)."""
    for execution in executions:
        argument = _argument_of(execution)
        if argument.get("object") == run.object and str(argument.get("generation")) == (
            run.generation
        ):
            return execution
    return None


@dataclass(frozen=True)
class RunRow:
    object: str
    generation: str
    uploaded_at: str  # ISO 8601, UTC, to the second
    state: str
    detail: str


def list_runs(state: StackState) -> list[RunRow]:
    """One row per raw object, oldest upload first: what the bucket (and the Executions
    API) says of its run."""
    client = state.storage_client()
    bucket = client.bucket(state.bucket)
    names = {blob.name for blob in client.list_blobs(state.bucket)}
    executions = list_executions(state)
    rows = []
    for blob in client.list_blobs(state.bucket, prefix=contract.RAW_PREFIX):
        run = RunKey(state.bucket, blob.name, str(blob.generation))
        row_state, detail = "received", ""
        if blob.size == 0:
            row_state, detail = "ignored", _empty_object_note(contract.RAW_PREFIX)
        if contract.stats_object(run) in names:
            row_state = "processed"
        outcome_object = contract.lineage_object(run)
        rejection_object = contract.rejection_object(run)
        if outcome_object in names:
            outcome = json.loads(bucket.blob(outcome_object).download_as_bytes())
            row_state, detail = "trained", _describe_outcome(outcome)
        if rejection_object in names:
            rejection = json.loads(bucket.blob(rejection_object).download_as_bytes())
            row_state, detail = "rejected", _describe_rejection(rejection)
        execution = _execution_of(executions, run)
        if execution is not None:
            execution_detail = f"execution {execution.get('state')} {execution.get('name', '')}"
            detail = f"{detail}; {execution_detail}" if detail else execution_detail
        uploaded_at = blob.time_created.isoformat(timespec="seconds")
        rows.append(RunRow(run.object, run.generation, uploaded_at, row_state, detail))
    for blob in client.list_blobs(state.bucket, prefix=state.score_prefix):
        run = RunKey(state.bucket, blob.name, str(blob.generation))
        row_state, detail = "received", ""
        if blob.size == 0:
            row_state, detail = "ignored", _empty_object_note(state.score_prefix)
        summary_object = contract.scoring_summary_object(run)
        if summary_object in names:
            summary = json.loads(bucket.blob(summary_object).download_as_bytes())
            row_state, _, detail = describe_scoring(summary).partition(": ")
        uploaded_at = blob.time_created.isoformat(timespec="seconds")
        rows.append(RunRow(run.object, run.generation, uploaded_at, row_state, detail))
    return sorted(rows, key=lambda row: (row.uploaded_at, row.object))


def read_champion(state: StackState) -> dict[str, Any] | None:
    """The champion pointer (models/champion.json), or None before the first promotion."""
    blob = state.storage_client().bucket(state.bucket).get_blob(contract.CHAMPION_OBJECT)
    if blob is None:
        return None
    pointer: dict[str, Any] = json.loads(blob.download_as_bytes())
    return pointer


def serving(state: StackState) -> dict[str, Any] | None:
    """What predict's liveness answer says it serves, or None when it does not answer."""
    try:
        response = requests.get(state.service("predict").url + "/health", timeout=5)
        answer: dict[str, Any] = response.json()
    except (requests.RequestException, ValueError):
        return None
    return answer


def predict(state: StackState, payload: Any) -> dict[str, Any]:
    url = state.service("predict").url
    try:
        response = requests.post(url, json=payload, timeout=_HTTP_TIMEOUT_SECONDS)
    except requests.ConnectionError:
        raise DevstackError(
            f"predict at {url} does not answer; see 'python -m devstack logs predict'"
        ) from None
    try:
        answer: dict[str, Any] = response.json()
    except ValueError:
        answer = {"body": response.text}
    if not response.ok:
        raise DevstackError(f"predict answered {response.status_code}: {json.dumps(answer)}")
    return answer
