"""What the event-driven stages do around their work: which notifications start it, and
which messages follow it (docs/ARCHITECTURE.md, "Events mode").

In events mode no workflow orchestrates: processing hands its result on to training
through ``model-training-trigger``, training announces a promotion on
``model-serving-trigger``, and every outcome (scored, succeeded, rejected, failed) is
one summary on ``model-events``. Scoring runs this way in both modes.

Pure: the stage's work (process, train, score) and the publisher are injected, so the
entry points only decode the event and pick the clients, and the stage cores stay
unimported here. A permanent error is published and acknowledged (retrying cannot help);
anything else propagates, so the platform redelivers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline_core import logging as log
from pipeline_core import summaries
from pipeline_core.contract import RAW_PREFIX
from pipeline_core.errors import DataRejectedError, PermanentError
from pipeline_core.events import ObjectRef, StorageNotification, TrainingRequest
from pipeline_core.publishing import Publisher
from pipeline_core.settings import (
    ProcessingSettings,
    ScoringSettings,
    TrainingSettings,
    topic_path,
)

if TYPE_CHECKING:
    from pipeline_core.processing import ProcessingResult

PROCESS_STAGE = "process_data"
TRAIN_STAGE = "train_model"
SCORE_STAGE = "score_data"
# How the log names each stage's work when it fails for good.
_WORK = {PROCESS_STAGE: "processing", TRAIN_STAGE: "training", SCORE_STAGE: "scoring"}


def process_upload(
    notification: StorageNotification,
    settings: ProcessingSettings,
    process: Callable[[ObjectRef], ProcessingResult],
    publisher: Publisher,
) -> None:
    """A raw upload -> its processed data, handed on to training; a rejected or failed
    upload -> its summary on model-events instead."""
    if is_skipped(notification, RAW_PREFIX):
        return
    ref = notification.ref
    try:
        result = process(ref)
    except PermanentError as error:
        publish_summary(
            publisher, events_topic(settings), failure_summary(ref, PROCESS_STAGE, error)
        )
        return
    request = TrainingRequest.of_processed(ref, result.to_json())
    publisher.publish(
        topic_path(settings.project, settings.model_training_topic),
        request.to_json(),
        {"object": ref.name, "generation": str(ref.generation)},
    )


def train_and_announce(
    request: TrainingRequest,
    settings: TrainingSettings,
    train: Callable[[TrainingRequest], dict[str, Any]],
    publisher: Publisher,
) -> None:
    """Processed data -> a trained (perhaps promoted) candidate: a promotion is announced
    on model-serving-trigger, and the outcome, good or bad, is summarised."""
    try:
        outcome = train(request)
    except PermanentError as error:
        publish_summary(
            publisher, events_topic(settings), failure_summary(request.source, TRAIN_STAGE, error)
        )
        return
    if outcome["promoted"]:
        version = {"model_version": outcome["model_version"]}
        publisher.publish(
            topic_path(settings.project, settings.model_serving_topic), version, version
        )
    publish_summary(publisher, events_topic(settings), summaries.succeeded(request.source, outcome))


def score_upload(
    notification: StorageNotification,
    settings: ScoringSettings,
    score: Callable[[ObjectRef], dict[str, Any]],
    publisher: Publisher,
) -> None:
    """An upload under the scoring prefix -> its predictions, and one summary (scored,
    rejected or failed) on model-events."""
    if is_skipped(notification, settings.score_prefix):
        return
    ref = notification.ref
    try:
        outcome = score(ref)
    except PermanentError as error:
        summary = failure_summary(ref, SCORE_STAGE, error)
    else:
        summary = summaries.scored(ref, outcome)
    publish_summary(publisher, events_topic(settings), summary)


def is_skipped(notification: StorageNotification, prefix: str) -> bool:
    """True (and logged) when the notification must not start the stage reading ``prefix``."""
    skip = notification.skip_reason(prefix)
    if skip is not None:
        log.info(f"skipping notification: {skip}")
    return skip is not None


def failure_summary(ref: ObjectRef, stage: str, error: PermanentError) -> dict[str, Any]:
    """A rejected file's summary (its rejection is recorded already), or a failed
    stage's, logged as an error."""
    if isinstance(error, DataRejectedError):
        return summaries.rejected(ref, stage, error)
    log.error(f"{_WORK[stage]} failed permanently: {error.message}", object=ref.name)
    return summaries.failed(ref, stage, error.message)


def events_topic(settings: ProcessingSettings | TrainingSettings | ScoringSettings) -> str:
    """The full path of the model-events topic every outcome is summarised on."""
    return topic_path(settings.project, settings.model_events_topic)


def publish_summary(publisher: Publisher, topic: str, summary: dict[str, Any]) -> None:
    publisher.publish(topic, summary, summaries.attributes(summary))
