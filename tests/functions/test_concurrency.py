"""Concurrent duplicate deliveries: each interleaving staged deterministically with
``InterleavedStorage`` (the duplicate runs at an exact point of the first attempt)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from pipeline_core.errors import TrainingFailedError
from pipeline_core.events import ObjectRef
from pipeline_core.leases import LeaseHeldError, acquire
from pipeline_core.processing import (
    DatasetSchema,
    ProcessingResult,
    lease_object,
    process,
    processed_object,
    stats_object,
)
from pipeline_core.registry import lineage_object, training_lease_object
from pipeline_core.settings import TrainingSettings
from pipeline_core.training import TrainingRequest, train, train_smoke_and_promote
from tests.functions.conftest import IRIS, upload
from tests.functions.fakes import InterleavedStorage

SETTINGS = TrainingSettings(
    project="p", data_bucket="test-bucket", hyperparameters={"n_estimators": 10}
)
CRASHED_AT = datetime(2026, 11, 21, 19, 0, tzinfo=UTC)


@pytest.fixture
def storage() -> InterleavedStorage:
    return InterleavedStorage()


@pytest.fixture
def request_for_iris(storage: InterleavedStorage) -> TrainingRequest:
    ref = upload(storage, "raw/iris.csv", IRIS)
    result = process(storage, ref, DatasetSchema())
    return TrainingRequest(ref, result.to_json()["processed_object"])


def manifests(storage: InterleavedStorage) -> list[str]:
    return [name for name in storage.names("models/") if name.endswith("/manifest.json")]


def test_a_duplicate_arriving_while_training_is_told_to_retry(
    storage: InterleavedStorage, request_for_iris: TrainingRequest
) -> None:
    def duplicate() -> None:
        with pytest.raises(LeaseHeldError, match=r"has held .* since .*; retry later"):
            train(storage, request_for_iris, SETTINGS)

    storage.before("read", request_for_iris.processed_object, duplicate)
    first = train(storage, request_for_iris, SETTINGS)

    assert len(manifests(storage)) == 1
    assert storage.stat(training_lease_object(request_for_iris.source)) is None
    assert train(storage, request_for_iris, SETTINGS) == first  # the redelivery


def test_a_duplicate_claiming_just_after_the_first_finished_returns_its_outcome(
    storage: InterleavedStorage, request_for_iris: TrainingRequest
) -> None:
    # The duplicate found no outcome, then stalled until the first attempt was done.
    outcomes = []
    storage.before(
        "write",
        training_lease_object(request_for_iris.source),
        lambda: outcomes.append(train(storage, request_for_iris, SETTINGS)),
    )
    duplicate = train(storage, request_for_iris, SETTINGS)

    assert duplicate == outcomes[0]
    assert len(manifests(storage)) == 1


def test_a_failed_attempt_releases_its_lease(
    storage: InterleavedStorage, request_for_iris: TrainingRequest
) -> None:
    bad = TrainingSettings(project="p", data_bucket="test-bucket", hyperparameters={"trees": 1})
    with pytest.raises(TrainingFailedError):
        train(storage, request_for_iris, bad)
    assert storage.stat(training_lease_object(request_for_iris.source)) is None
    assert train_smoke_and_promote(storage, request_for_iris, SETTINGS)["promoted"] is True


def test_a_crashed_attempts_lease_blocks_until_it_expires(
    storage: InterleavedStorage, request_for_iris: TrainingRequest
) -> None:
    lease = training_lease_object(request_for_iris.source)
    acquire(storage, lease, seconds=SETTINGS.timeout_seconds, clock=lambda: CRASHED_AT)
    before_expiry = CRASHED_AT + timedelta(seconds=SETTINGS.timeout_seconds - 1)
    with pytest.raises(LeaseHeldError):
        train(storage, request_for_iris, SETTINGS, lambda: before_expiry)
    assert manifests(storage) == []

    after_expiry = CRASHED_AT + timedelta(seconds=SETTINGS.timeout_seconds + 1)
    outcome = train(storage, request_for_iris, SETTINGS, lambda: after_expiry)

    assert outcome["decided"] is False
    assert outcome["reason"].startswith("registered as a candidate")
    assert len(manifests(storage)) == 1
    assert storage.stat(lease) is None


def test_two_attempts_taking_over_one_expired_lease_train_once(
    storage: InterleavedStorage, request_for_iris: TrainingRequest
) -> None:
    lease = training_lease_object(request_for_iris.source)
    acquire(storage, lease, seconds=60, clock=lambda: CRASHED_AT)
    later = CRASHED_AT + timedelta(hours=1)
    outcomes = []
    # The rival runs between our reading the expired lease and our takeover write.
    storage.before(
        "write",
        lease,
        lambda: outcomes.append(train(storage, request_for_iris, SETTINGS, lambda: later)),
        skip=1,
    )
    with pytest.raises(LeaseHeldError, match="changed while taking it over"):
        train(storage, request_for_iris, SETTINGS, lambda: later)

    assert len(manifests(storage)) == 1
    recorded = json.loads(storage.read(lineage_object(request_for_iris.source)).data)
    assert recorded == outcomes[0]


def test_a_lease_released_while_being_read_asks_for_a_retry(
    storage: InterleavedStorage,
) -> None:
    name = "processed/raw/a.csv/1/lease.json"
    held = acquire(storage, name, seconds=60, clock=lambda: CRASHED_AT)
    storage.before("read", name, held.release)
    with pytest.raises(LeaseHeldError, match="released while we read it"):
        acquire(storage, name, seconds=60, clock=lambda: CRASHED_AT)


def upload_iris(storage: InterleavedStorage) -> ObjectRef:
    return upload(storage, "raw/iris.csv", IRIS)


def test_processing_a_generation_twice_at_once_processes_it_once(
    storage: InterleavedStorage,
) -> None:
    ref = upload_iris(storage)

    def duplicate() -> None:
        with pytest.raises(LeaseHeldError):
            process(storage, ref, DatasetSchema())

    storage.before("read", ref.name, duplicate)
    first = process(storage, ref, DatasetSchema())

    assert storage.stat(lease_object(ref)) is None
    assert process(storage, ref, DatasetSchema()) == first


def test_a_processing_duplicate_claiming_after_the_first_finished_writes_nothing(
    storage: InterleavedStorage,
) -> None:
    ref = upload_iris(storage)
    outputs = (processed_object(ref), stats_object(ref))
    results: list[ProcessingResult] = []
    generations: list[int | None] = []

    def first_attempt() -> None:
        results.append(process(storage, ref, DatasetSchema()))
        generations.extend(generation_of(storage, name) for name in outputs)

    storage.before("write", lease_object(ref), first_attempt)
    duplicate = process(storage, ref, DatasetSchema())

    assert duplicate == results[0]
    assert [generation_of(storage, name) for name in outputs] == generations


def generation_of(storage: InterleavedStorage, name: str) -> int | None:
    info = storage.stat(name)
    return None if info is None else info.generation
