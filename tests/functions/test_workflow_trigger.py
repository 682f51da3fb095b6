"""trigger_workflow core: at most one execution per object generation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from pipeline_core import leases
from pipeline_core.contract import run_lease_object, run_marker_object
from pipeline_core.errors import TransientError
from pipeline_core.events import ObjectRef, StorageNotification
from pipeline_core.settings import TriggerSettings
from pipeline_core.workflow_trigger import trigger
from tests.functions.fakes import InMemoryStorage, InterleavedStorage, RecordingStarter

TIMEOUT_SECONDS = 60
SETTINGS = TriggerSettings(
    "test-project",
    "test-bucket",
    "mlp-test-ml-pipeline",
    "us-central1",
    timeout_seconds=TIMEOUT_SECONDS,
)
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
    marker = json.loads(storage.read(run_marker_object(REF)).data)
    assert marker["execution"] == outcome.execution
    assert marker["event_id"] == "event-1"
    assert storage.stat(run_lease_object(REF)) is None


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
    assert storage.stat(run_marker_object(REF)) is None
    assert storage.stat(run_lease_object(REF)) is None
    assert trigger(UPLOAD, storage, starter, SETTINGS, lambda: START).status == "started"
    assert len(starter.started) == 1


def test_a_delivery_that_holds_the_run_makes_others_retry(storage: InMemoryStorage) -> None:
    leases.acquire(storage, run_lease_object(REF), seconds=TIMEOUT_SECONDS, clock=lambda: START)
    starter = RecordingStarter()
    with pytest.raises(TransientError, match="retry later"):
        trigger(UPLOAD, storage, starter, SETTINGS, lambda: START + timedelta(seconds=5))
    assert starter.started == []


def test_the_run_of_a_crashed_delivery_is_taken_over_after_its_timeout(
    storage: InMemoryStorage,
) -> None:
    leases.acquire(storage, run_lease_object(REF), seconds=TIMEOUT_SECONDS, clock=lambda: START)
    starter = RecordingStarter()
    later = START + timedelta(seconds=TIMEOUT_SECONDS + 1)
    outcome = trigger(UPLOAD, storage, starter, SETTINGS, lambda: later)
    assert outcome.status == "started"
    assert len(starter.started) == 1
    assert storage.stat(run_lease_object(REF)) is None


def test_a_rival_that_finishes_while_we_take_the_lease_is_not_repeated() -> None:
    storage = InterleavedStorage()
    starter = RecordingStarter()
    rival = StorageNotification(REF, "OBJECT_FINALIZE", 100, "event-rival")
    storage.before(
        "write",
        run_lease_object(REF),
        lambda: trigger(rival, storage, starter, SETTINGS, lambda: START),
    )
    outcome = trigger(UPLOAD, storage, starter, SETTINGS, lambda: START)
    assert outcome.status == "skipped"
    assert len(starter.started) == 1
    assert json.loads(storage.read(run_marker_object(REF)).data)["event_id"] == "event-rival"
