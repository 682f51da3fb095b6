"""trigger_workflow core: at most one execution per object generation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from pipeline_core.errors import TransientError
from pipeline_core.events import ObjectRef, StorageNotification
from pipeline_core.settings import TriggerSettings
from pipeline_core.storage import InMemoryStorage
from pipeline_core.workflow_trigger import MARKER_STALE_SECONDS, marker_object, trigger
from tests.functions.fakes import RecordingStarter

SETTINGS = TriggerSettings("test-project", "test-bucket", "mlp-test-ml-pipeline", "us-central1")
WORKFLOW = "projects/test-project/locations/us-central1/workflows/mlp-test-ml-pipeline"
REF = ObjectRef("test-bucket", "raw/iris.csv", 17)
UPLOAD = StorageNotification(REF, "OBJECT_FINALIZE", 100, "event-1")
START = datetime(2026, 11, 21, 19, 30, tzinfo=UTC)


def test_starts_one_execution_with_the_object_generation(storage: InMemoryStorage) -> None:
    starter = RecordingStarter()
    outcome = trigger(UPLOAD, storage, starter, SETTINGS, lambda: START)
    assert outcome.status == "started"
    assert starter.started == [
        (WORKFLOW, {"bucket": "test-bucket", "object": "raw/iris.csv", "generation": "17"})
    ]
    marker = json.loads(storage.read(marker_object(REF)).data)
    assert marker["state"] == "started"
    assert marker["execution"] == outcome.execution


def test_duplicate_deliveries_start_nothing_more(storage: InMemoryStorage) -> None:
    starter = RecordingStarter()
    trigger(UPLOAD, storage, starter, SETTINGS, lambda: START)
    again = trigger(UPLOAD, storage, starter, SETTINGS, lambda: START + timedelta(hours=1))
    assert again.status == "skipped"
    assert "already started" in again.reason
    assert len(starter.started) == 1
    newer = StorageNotification(
        ObjectRef("test-bucket", "raw/iris.csv", 18), "OBJECT_FINALIZE", 5, "e2"
    )
    assert trigger(newer, storage, starter, SETTINGS, lambda: START).status == "started"
    assert len(starter.started) == 2


@pytest.mark.parametrize(
    "notification",
    [
        StorageNotification(REF, "OBJECT_DELETE", 100, "e"),
        StorageNotification(REF, "OBJECT_METADATA_UPDATE", 100, "e"),
        StorageNotification(
            ObjectRef("test-bucket", "processed/x", 1), "OBJECT_FINALIZE", 100, "e"
        ),
        StorageNotification(REF, "OBJECT_FINALIZE", 0, "e"),
        StorageNotification(ObjectRef("other-bucket", "raw/x.csv", 1), "OBJECT_FINALIZE", 100, "e"),
    ],
)
def test_skips_what_is_not_a_new_upload(
    storage: InMemoryStorage, notification: StorageNotification
) -> None:
    starter = RecordingStarter()
    assert trigger(notification, storage, starter, SETTINGS).status == "skipped"
    assert starter.started == []
    assert storage.names() == []


def test_api_failure_releases_the_marker_and_raises_for_a_retry(storage: InMemoryStorage) -> None:
    starter = RecordingStarter(failures=1)
    with pytest.raises(TransientError, match="unavailable"):
        trigger(UPLOAD, storage, starter, SETTINGS, lambda: START)
    assert storage.stat(marker_object(REF)) is None
    assert trigger(UPLOAD, storage, starter, SETTINGS, lambda: START).status == "started"
    assert len(starter.started) == 1


def test_a_fresh_claim_by_another_delivery_asks_for_a_retry(storage: InMemoryStorage) -> None:
    claim = {"state": "starting", "event_id": "other", "at": START.isoformat()}
    storage.write(marker_object(REF), json.dumps(claim).encode(), content_type="application/json")
    starter = RecordingStarter()
    with pytest.raises(TransientError, match="another delivery claimed"):
        trigger(UPLOAD, storage, starter, SETTINGS, lambda: START + timedelta(seconds=5))
    assert starter.started == []


def test_a_stale_claim_is_taken_over(storage: InMemoryStorage) -> None:
    claim = {"state": "starting", "event_id": "crashed", "at": START.isoformat()}
    storage.write(marker_object(REF), json.dumps(claim).encode(), content_type="application/json")
    starter = RecordingStarter()
    later = START + timedelta(seconds=MARKER_STALE_SECONDS + 1)
    outcome = trigger(UPLOAD, storage, starter, SETTINGS, lambda: later)
    assert outcome.status == "started"
    assert len(starter.started) == 1
    assert json.loads(storage.read(marker_object(REF)).data)["event_id"] == "event-1"
