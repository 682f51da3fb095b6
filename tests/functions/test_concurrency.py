"""Concurrent attempts, each interleaving staged deterministically with
``InterleavedStorage`` (the other attempt runs at an exact point of the first): duplicate
deliveries of one run, and trainers of different uploads contending for the champion."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline_core.contract import (
    CHAMPION_OBJECT,
    PromotionPolicy,
    lineage_object,
    part_object,
    processed_data,
    processing_lease_object,
    stats_object,
    training_lease_object,
)
from pipeline_core.errors import TrainingFailedError, TransientError
from pipeline_core.events import ObjectRef, PromotionRequest
from pipeline_core.leases import LeaseHeldError, acquire, once
from pipeline_core.processing import DatasetSchema, ProcessingResult, process
from pipeline_core.registry import ModelRegistry
from pipeline_core.serving import ModelService
from pipeline_core.settings import TrainingSettings
from pipeline_core.storage import read_json
from pipeline_core.training import (
    TrainingRequest,
    promote_candidate,
    train,
    train_smoke_and_promote,
)
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
    return TrainingRequest.of_processed(ref, result.to_json())


def manifests(storage: InterleavedStorage) -> list[str]:
    return [name for name in storage.names("models/") if name.endswith("/manifest.json")]


def test_a_duplicate_arriving_while_training_is_told_to_retry(
    storage: InterleavedStorage, request_for_iris: TrainingRequest
) -> None:
    def duplicate() -> None:
        with pytest.raises(LeaseHeldError, match=r"has held .* since .*; retry later"):
            train(storage, request_for_iris, SETTINGS)

    storage.before("read", request_for_iris.part_objects[0], duplicate)
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


def test_once_looks_for_a_recorded_outcome_again_once_it_holds_the_lease() -> None:
    storage = InterleavedStorage()
    recorded: list[str] = []
    lease = "runs/a.lease.json"

    def run_once() -> str:
        return once(
            storage,
            lease,
            seconds=60,
            clock=lambda: CRASHED_AT,
            recorded=lambda: recorded[-1] if recorded else None,
            work=lambda: "ours",
        )

    assert run_once() == "ours"
    # Another attempt records its outcome just before ours takes the lease.
    storage.before("write", lease, lambda: recorded.append("theirs"))
    assert run_once() == "theirs"
    assert storage.stat(lease) is None


def test_processing_a_generation_twice_at_once_processes_it_once(
    storage: InterleavedStorage,
) -> None:
    ref = upload_iris(storage)

    def duplicate() -> None:
        with pytest.raises(LeaseHeldError):
            process(storage, ref, DatasetSchema())

    storage.before("read", ref.name, duplicate)
    first = process(storage, ref, DatasetSchema())

    assert storage.stat(processing_lease_object(ref)) is None
    assert process(storage, ref, DatasetSchema()) == first


def test_a_processing_duplicate_claiming_after_the_first_finished_writes_nothing(
    storage: InterleavedStorage,
) -> None:
    ref = upload_iris(storage)
    outputs = (part_object(processed_data(ref), 0), stats_object(ref))
    results: list[ProcessingResult] = []
    generations: list[int | None] = []

    def first_attempt() -> None:
        results.append(process(storage, ref, DatasetSchema()))
        generations.extend(generation_of(storage, name) for name in outputs)

    storage.before("write", processing_lease_object(ref), first_attempt)
    duplicate = process(storage, ref, DatasetSchema())

    assert duplicate == results[0]
    assert [generation_of(storage, name) for name in outputs] == generations


def generation_of(storage: InterleavedStorage, name: str) -> int | None:
    info = storage.stat(name)
    return None if info is None else info.generation


# Contention between uploads. Every candidate clears the minimum, so each decision is a
# comparison with whatever champion the trainer found last; on one data set, the strong
# settings tie with each other and beat the weak ones.
POLICY = PromotionPolicy(minimum=0.0)
STRONG = replace(SETTINGS, promotion=POLICY)
WEAK = replace(SETTINGS, hyperparameters={"n_estimators": 1, "max_depth": 1}, promotion=POLICY)


def processed_upload(storage: InterleavedStorage, name: str) -> TrainingRequest:
    ref = upload(storage, name, IRIS)
    return TrainingRequest.of_processed(ref, process(storage, ref, DatasetSchema()).to_json())


def champion_pointer(storage: InterleavedStorage) -> dict[str, Any]:
    return read_json(storage, CHAMPION_OBJECT)


def recorded(storage: InterleavedStorage, request: TrainingRequest) -> dict[str, Any]:
    return read_json(storage, lineage_object(request.source))


def before_a_pointer_write(
    storage: InterleavedStorage, rival: Callable[[], dict[str, Any]], *, skip: int = 0
) -> list[dict[str, Any]]:
    """Stage ``rival`` just before the write of the champion pointer that follows
    ``skip`` such writes; its outcome lands in the list returned."""
    outcomes: list[dict[str, Any]] = []
    storage.before("write", CHAMPION_OBJECT, lambda: outcomes.append(rival()), skip=skip)
    return outcomes


@pytest.mark.parametrize(
    ("ours", "rivals", "we_win"),
    [(STRONG, WEAK, True), (WEAK, STRONG, False), (STRONG, STRONG, True)],
    ids=["we-are-better", "the-rival-is-better", "a-tie"],
)
def test_a_promotion_that_loses_the_pointer_race_reads_again_and_decides_again(
    storage: InterleavedStorage,
    ours: TrainingSettings,
    rivals: TrainingSettings,
    we_win: bool,
) -> None:
    our_request = processed_upload(storage, "raw/ours.csv")
    rival_request = processed_upload(storage, "raw/rival.csv")
    # The rival's whole run lands between our reading "no champion" and our pointer write.
    rival = before_a_pointer_write(
        storage, lambda: train_smoke_and_promote(storage, rival_request, rivals)
    )

    outcome = train_smoke_and_promote(storage, our_request, ours)

    assert rival[0]["promoted"] is True  # the first model
    assert outcome["promoted"] is we_win
    pointer = champion_pointer(storage)
    winner = outcome if we_win else rival[0]
    assert pointer["model_version"] == winner["model_version"] == outcome["champion_version"]
    assert pointer["previous_version"] == (rival[0]["model_version"] if we_win else None)
    if not we_win:
        assert outcome["reason"].startswith("worse than the champion")
    for request, result in ((our_request, outcome), (rival_request, rival[0])):
        decision = recorded(storage, request)
        assert decision["decided"] is True
        assert decision["promoted"] == result["promoted"]
        assert decision["champion_version"] == result["champion_version"]


def test_a_promotion_decides_again_each_time_another_lands_first(
    storage: InterleavedStorage,
) -> None:
    ours, b_request, c_request = (processed_upload(storage, f"raw/{name}.csv") for name in "abc")
    # Our first write loses to b; b's own write passes; our second write loses to c.
    b_outcomes = before_a_pointer_write(
        storage, lambda: train_smoke_and_promote(storage, b_request, STRONG)
    )
    c_outcomes = before_a_pointer_write(
        storage, lambda: train_smoke_and_promote(storage, c_request, STRONG), skip=1
    )

    outcome = train_smoke_and_promote(storage, ours, STRONG)

    (b,), (c,) = b_outcomes, c_outcomes
    assert outcome["promoted"] and b["promoted"] and c["promoted"]  # ties are not worse
    pointer = champion_pointer(storage)
    assert pointer["model_version"] == outcome["model_version"]
    assert pointer["previous_version"] == c["model_version"]
    assert recorded(storage, c_request)["champion_version"] == c["model_version"]


def test_a_duplicate_promotion_of_the_same_candidate_is_already_the_champion(
    storage: InterleavedStorage,
) -> None:
    request = processed_upload(storage, "raw/ours.csv")
    candidate = train(storage, request, STRONG)
    promotion = PromotionRequest(request.source, candidate["model_version"])
    duplicate = before_a_pointer_write(
        storage, lambda: promote_candidate(storage, promotion, STRONG)
    )

    outcome = promote_candidate(storage, promotion, STRONG)

    assert duplicate[0]["promoted"] is outcome["promoted"] is True
    assert outcome["reason"] == "already the champion"
    pointer = champion_pointer(storage)
    assert pointer["model_version"] == candidate["model_version"]
    assert pointer["previous_version"] is None  # written once, not replaced by itself


def test_predict_reloading_while_a_rival_promotes_serves_the_pointer_it_read(
    storage: InterleavedStorage,
) -> None:
    a, b, c = (processed_upload(storage, f"raw/{name}.csv") for name in "abc")
    train_smoke_and_promote(storage, a, STRONG)
    service = ModelService(ModelRegistry(storage), refresh_seconds=0)
    service.current()
    train_smoke_and_promote(storage, b, STRONG)  # predict's next check sees a new generation
    latest: list[dict[str, Any]] = []
    # Between that check and predict's read of the pointer, c is promoted too.
    storage.before(
        "read",
        CHAMPION_OBJECT,
        lambda: latest.append(train_smoke_and_promote(storage, c, STRONG)),
    )

    served = service.refresh()

    info = storage.stat(CHAMPION_OBJECT)
    assert served is not None and info is not None
    assert served.version == latest[0]["model_version"]
    assert served.pointer_generation == info.generation
    assert service.refresh() is served  # the same generation: nothing is loaded again


def test_processed_data_rewritten_while_training_reads_it_is_a_transient_failure(
    storage: InterleavedStorage, request_for_iris: TrainingRequest
) -> None:
    name = request_for_iris.part_objects[0]
    data = storage.read(name).data
    # A late processing attempt (its lease expired while it ran) writes the same file again.
    storage.before("read", name, lambda: storage.write(name, data, content_type="x"))

    with pytest.raises(TransientError, match="was replaced while training read generation"):
        train(storage, request_for_iris, SETTINGS)

    assert storage.stat(training_lease_object(request_for_iris.source)) is None
    assert train(storage, request_for_iris, SETTINGS)["model_version"]  # the redelivery
