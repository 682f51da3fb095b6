"""score_data through functions-framework: a push of the scoring notification in, the
predictions and one summary message on model-events out."""

from __future__ import annotations

from collections.abc import Callable

from tests.functions.conftest import IRIS, PROJECT, Function, push_for, upload
from tests.functions.fakes import InMemoryPublisher, InMemoryStorage
from tests.functions.test_scoring import csv_of, unlabelled
from tests.functions.test_serving import trained

Loader = Callable[[str, str], Function]
SCORE_PUSH_PATH = f"/projects/{PROJECT}/topics/mlp-test-score-uploaded"
EVENTS_TOPIC = f"projects/{PROJECT}/topics/mlp-test-model-events"


def scoring_function(
    function: Loader, storage: InMemoryStorage, publisher: InMemoryPublisher
) -> Function:
    return function("score_data", "cloudevent").use(storage=storage, publisher=publisher)


def test_a_scoring_upload_is_scored_and_summarised(
    function: Loader, storage: InMemoryStorage, publisher: InMemoryPublisher
) -> None:
    version = trained(storage, "raw/iris.csv")["model_version"]
    data = csv_of(unlabelled())
    ref = upload(storage, "score/new.csv", data)
    client = scoring_function(function, storage, publisher).client

    response = client.post(
        SCORE_PUSH_PATH, json=push_for("fake_gcs_finalize_push.json", ref, len(data))
    )

    assert response.status_code == 200
    (summary,) = publisher.to(EVENTS_TOPIC)
    assert summary["status"] == "scored"
    assert summary["object"] == "score/new.csv"
    assert summary["model_version"] == version
    assert summary["rows_scored"] == 150
    assert (
        summary["predictions_csv"] == f"predictions/score/new.csv/{ref.generation}/predictions.csv"
    )
    assert storage.stat(summary["predictions_object"]) is not None
    (_, _, attributes) = publisher.messages[-1]
    assert attributes == {
        "status": "scored",
        "object": "score/new.csv",
        "generation": str(ref.generation),
    }


def test_scoring_before_any_champion_publishes_a_failure(
    function: Loader, storage: InMemoryStorage, publisher: InMemoryPublisher
) -> None:
    ref = upload(storage, "score/early.csv", csv_of(unlabelled()[:4]))
    client = scoring_function(function, storage, publisher).client

    response = client.post(SCORE_PUSH_PATH, json=push_for("gcs_finalize_push.json", ref, 10))

    assert response.status_code == 200  # acknowledged: retrying cannot help
    (summary,) = publisher.to(EVENTS_TOPIC)
    assert summary["status"] == "failed"
    assert summary["stage"] == "score_data"
    assert "train one first" in summary["reason"]


def test_mismatched_columns_publish_a_rejection_and_other_prefixes_are_skipped(
    function: Loader, storage: InMemoryStorage, publisher: InMemoryPublisher
) -> None:
    trained(storage, "raw/iris.csv")
    ref = upload(storage, "score/odd.csv", b"x,y\n1,2\n")
    raw = upload(storage, "raw/again.csv", IRIS)
    client = scoring_function(function, storage, publisher).client

    for upload_ref in (ref, raw):
        envelope = push_for("gcs_finalize_push.json", upload_ref, 10)
        assert client.post(SCORE_PUSH_PATH, json=envelope).status_code == 200

    (summary,) = publisher.to(EVENTS_TOPIC)
    assert summary["status"] == "rejected"
    assert summary["object"] == "score/odd.csv"
    assert "unknown columns ['x', 'y']" in summary["reason"]
    assert summary["rejection_object"] == f"predictions/score/odd.csv/{ref.generation}/summary.json"
    assert storage.names("predictions/raw/") == []
