"""The event-driven stages' choreography, without a framework: fake work, a fake
publisher, typed notifications in; the messages that follow out."""

from __future__ import annotations

import io
from typing import Any

import pytest

from pipeline_core import choreography
from pipeline_core.errors import DataRejectedError, PermanentError, TransientError
from pipeline_core.events import FINALIZE, ObjectRef, StorageNotification, TrainingRequest
from pipeline_core.processing import ProcessingResult
from pipeline_core.settings import ProcessingSettings, ScoringSettings, TrainingSettings
from tests.functions.conftest import log_lines
from tests.functions.fakes import InMemoryPublisher

PROJECT = "p"
EVENTS = f"projects/{PROJECT}/topics/events"
TRAINING = f"projects/{PROJECT}/topics/training"
SERVING = f"projects/{PROJECT}/topics/serving"
PROCESSING_SETTINGS = ProcessingSettings(
    project=PROJECT, data_bucket="b", model_training_topic="training", model_events_topic="events"
)
TRAINING_SETTINGS = TrainingSettings(
    project=PROJECT, data_bucket="b", model_serving_topic="serving", model_events_topic=EVENTS
)
SCORING_SETTINGS = ScoringSettings(project=PROJECT, data_bucket="b", model_events_topic="events")
RAW = ObjectRef("b", "raw/iris.csv", 7)
SCORING_UPLOAD = ObjectRef("b", "score/new.csv", 8)
REJECTION = DataRejectedError(
    "too_few_rows", detail="3 valid rows; at least 20 needed", rejection_object="rejected/x.json"
)


def finalized(ref: ObjectRef, size: int = 10, event_type: str = FINALIZE) -> StorageNotification:
    return StorageNotification(ref, event_type, size, "event-1")


class Work:
    """A stage's work that returns ``result`` or raises ``error``, and counts its calls."""

    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self.result, self.error, self.calls = result, error, 0

    def __call__(self, _: Any) -> Any:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.result


PROCESSED = ProcessingResult(
    {"processed_data": "processed/raw/iris.csv/7/data/", "processed_parts": 2}
    | {
        key: None
        for key in (
            "stats_object",
            "rows_in",
            "rows_out",
            "rejections",
            "features",
            "target_column",
        )
    }
)
TRAINED = {
    "model_version": "v2",
    "promoted": True,
    "champion_version": "v2",
    "metrics": {"accuracy": 0.96, "f1_macro": 0.95, "precision_macro": 0.9},
    "reason": "better than v1",
    "smoke_prediction": {"predictions": []},
}
SCORED = {
    "model_version": "v2",
    "rows_in": 4,
    "rows_scored": 3,
    "rows_refused": 1,
    "refusals": {"non_numeric": 1},
    "predictions_object": "predictions/score/new.csv/8/predictions.parquet",
    "predictions_csv": "predictions/score/new.csv/8/predictions.csv",
    "summary_object": "predictions/score/new.csv/8/summary.json",
    "duration_seconds": 0.1,
    "other": "left out of the message",
}


def test_a_processed_upload_is_handed_on_to_training() -> None:
    publisher = InMemoryPublisher()
    choreography.process_upload(finalized(RAW), PROCESSING_SETTINGS, Work(PROCESSED), publisher)
    assert publisher.messages == [
        (
            TRAINING,
            {
                "bucket": "b",
                "object": "raw/iris.csv",
                "generation": "7",
                "processed_data": "processed/raw/iris.csv/7/data/",
                "processed_parts": 2,
            },
            {"object": "raw/iris.csv", "generation": "7"},
        )
    ]


@pytest.mark.parametrize(
    "notification",
    [
        finalized(RAW, event_type="OBJECT_DELETE"),
        finalized(ObjectRef("b", "processed/x.parquet", 7)),
        finalized(RAW, size=0),
    ],
    ids=["a delete", "outside raw/", "empty"],
)
def test_notifications_that_start_no_processing_publish_nothing(
    notification: StorageNotification, captured_logs: io.StringIO
) -> None:
    publisher, work = InMemoryPublisher(), Work(PROCESSED)
    choreography.process_upload(notification, PROCESSING_SETTINGS, work, publisher)
    assert (work.calls, publisher.messages) == (0, [])
    (line,) = log_lines(captured_logs)
    assert line["message"].startswith("skipping notification: ")


def test_a_rejected_upload_is_summarised_instead_of_handed_on() -> None:
    publisher = InMemoryPublisher()
    choreography.process_upload(
        finalized(RAW), PROCESSING_SETTINGS, Work(error=REJECTION), publisher
    )
    assert publisher.messages == [
        (
            EVENTS,
            {
                "status": "rejected",
                "bucket": "b",
                "object": "raw/iris.csv",
                "generation": "7",
                "stage": "process_data",
                "reason": "3 valid rows; at least 20 needed",
                "rejection_object": "rejected/x.json",
            },
            {"status": "rejected", "object": "raw/iris.csv", "generation": "7"},
        )
    ]


def test_a_permanent_failure_is_logged_summarised_and_acknowledged(
    captured_logs: io.StringIO,
) -> None:
    publisher = InMemoryPublisher()
    failure = PermanentError("the bucket is not this pipeline's")
    choreography.process_upload(finalized(RAW), PROCESSING_SETTINGS, Work(error=failure), publisher)
    (summary,) = publisher.to(EVENTS)
    assert summary == {
        "status": "failed",
        "bucket": "b",
        "object": "raw/iris.csv",
        "generation": "7",
        "stage": "process_data",
        "reason": "the bucket is not this pipeline's",
    }
    (line,) = log_lines(captured_logs)
    assert line["severity"] == "ERROR"
    assert line["message"] == "processing failed permanently: the bucket is not this pipeline's"


@pytest.mark.parametrize("stage", ["process", "train", "score"])
def test_a_transient_error_propagates_for_a_retry_and_publishes_nothing(stage: str) -> None:
    publisher, work = InMemoryPublisher(), Work(error=TransientError("storage unavailable"))
    with pytest.raises(TransientError):
        if stage == "process":
            choreography.process_upload(finalized(RAW), PROCESSING_SETTINGS, work, publisher)
        elif stage == "train":
            request = TrainingRequest(RAW, "processed/raw/iris.csv/7/data/", 2)
            choreography.train_and_announce(request, TRAINING_SETTINGS, work, publisher)
        else:
            choreography.score_upload(finalized(SCORING_UPLOAD), SCORING_SETTINGS, work, publisher)
    assert (work.calls, publisher.messages) == (1, [])


def test_a_promotion_is_announced_then_summarised() -> None:
    publisher = InMemoryPublisher()
    request = TrainingRequest(RAW, "processed/raw/iris.csv/7/data/", 2)
    choreography.train_and_announce(request, TRAINING_SETTINGS, Work(TRAINED), publisher)
    announcement, summary = publisher.messages
    assert announcement == (SERVING, {"model_version": "v2"}, {"model_version": "v2"})
    assert summary == (
        EVENTS,
        {
            "status": "succeeded",
            "bucket": "b",
            "object": "raw/iris.csv",
            "generation": "7",
            "model_version": "v2",
            "promoted": True,
            "champion_version": "v2",
            "metrics": {"accuracy": 0.96, "f1_macro": 0.95},
            "reason": "better than v1",
            "smoke_prediction": {"predictions": []},
        },
        {"status": "succeeded", "object": "raw/iris.csv", "generation": "7"},
    )


def test_a_candidate_that_is_not_promoted_is_only_summarised() -> None:
    publisher = InMemoryPublisher()
    request = TrainingRequest(RAW, "processed/raw/iris.csv/7/data/", 2)
    kept = TRAINED | {"promoted": False, "champion_version": "v1", "reason": "v1 is better"}
    choreography.train_and_announce(request, TRAINING_SETTINGS, Work(kept), publisher)
    (summary,) = publisher.messages
    assert summary[0] == EVENTS
    assert (summary[1]["promoted"], summary[1]["champion_version"]) == (False, "v1")


def test_a_training_failure_is_summarised_as_failed(captured_logs: io.StringIO) -> None:
    publisher = InMemoryPublisher()
    request = TrainingRequest(RAW, "processed/raw/iris.csv/7/data/", 2)
    failure = PermanentError("the data holds 1 class")
    choreography.train_and_announce(request, TRAINING_SETTINGS, Work(error=failure), publisher)
    (summary,) = publisher.messages
    assert summary[0] == EVENTS
    assert summary[1]["status"] == "failed"
    assert (summary[1]["stage"], summary[1]["reason"]) == ("train_model", "the data holds 1 class")
    (line,) = log_lines(captured_logs)
    assert line["message"] == "training failed permanently: the data holds 1 class"


@pytest.mark.parametrize(
    ("work", "status", "reason"),
    [
        (Work(SCORED), "scored", None),
        (Work(error=REJECTION), "rejected", "3 valid rows; at least 20 needed"),
        (
            Work(error=PermanentError("no champion; train one first")),
            "failed",
            "no champion; train one first",
        ),
    ],
    ids=["scored", "rejected", "failed"],
)
def test_every_scoring_outcome_is_one_summary(work: Work, status: str, reason: str | None) -> None:
    publisher = InMemoryPublisher()
    choreography.score_upload(finalized(SCORING_UPLOAD), SCORING_SETTINGS, work, publisher)
    ((topic, summary, attributes),) = publisher.messages
    assert (topic, summary["status"], summary["stage"]) == (EVENTS, status, "score_data")
    assert summary.get("reason") == reason
    assert attributes == {"status": status, "object": "score/new.csv", "generation": "8"}
    if status == "scored":
        assert "other" not in summary
        assert summary["rows_scored"] == 3


def test_uploads_outside_the_scoring_prefix_are_not_scored() -> None:
    publisher, work = InMemoryPublisher(), Work(SCORED)
    choreography.score_upload(finalized(RAW), SCORING_SETTINGS, work, publisher)
    assert (work.calls, publisher.messages) == (0, [])
