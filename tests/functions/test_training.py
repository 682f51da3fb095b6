"""train_model core and the registry: real training, manifest, promotion policy, races."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_core.contract import CHAMPION_OBJECT, PromotionPolicy, part_object
from pipeline_core.errors import (
    BadRequestError,
    PreconditionFailedError,
    TrainingFailedError,
    TransientError,
)
from pipeline_core.events import ObjectRef
from pipeline_core.processing import DatasetSchema, process
from pipeline_core.registry import Champion, ModelRegistry, decide, new_version
from pipeline_core.serving import ModelService
from pipeline_core.settings import TrainingSettings
from pipeline_core.storage import StoredObject
from pipeline_core.training import (
    TrainingRequest,
    stratified_sample,
    train,
    train_smoke_and_promote,
)
from tests.functions.conftest import BREAST_CANCER, IRIS, WINE, upload
from tests.functions.fakes import InMemoryStorage, InterleavedStorage

SETTINGS = TrainingSettings(
    project="p", data_bucket="test-bucket", hyperparameters={"n_estimators": 10}
)


def processed(storage: InMemoryStorage, name: str, data: bytes) -> TrainingRequest:
    ref = upload(storage, name, data)
    result = process(storage, ref, DatasetSchema())
    return TrainingRequest.of_processed(ref, result.to_json())


def written_dataset(
    storage: InMemoryStorage, source: ObjectRef, dataset: str, *tables: pa.Table, row_group: int = 0
) -> TrainingRequest:
    """``tables`` as the parts of a dataset under ``dataset``: the request to train on it."""
    for number, table in enumerate(tables):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=row_group or None)
        storage.write(part_object(dataset, number), sink.getvalue().to_pybytes(), content_type="x")
    return TrainingRequest(source, dataset, len(tables))


@pytest.mark.parametrize(
    ("data", "model_type", "classes"),
    [
        (IRIS, "random_forest", 3),
        (WINE, "logistic_regression", 3),
        (BREAST_CANCER, "gradient_boosting", 2),
    ],
)
def test_trains_registers_and_promotes_the_first_model(
    storage: InMemoryStorage, data: bytes, model_type: str, classes: int
) -> None:
    request = processed(storage, "raw/data.csv", data)
    settings = replace(SETTINGS, model_type=model_type, hyperparameters={})
    if model_type != "logistic_regression":
        settings = replace(settings, hyperparameters={"n_estimators": 10})
    outcome = train_smoke_and_promote(storage, request, settings)
    assert outcome["promoted"] is True
    assert outcome["champion_version"] == outcome["model_version"]
    assert outcome["reason"].startswith("first model")
    metrics = outcome["metrics"]
    assert metrics["accuracy"] > 0.8
    assert 0.8 < metrics["f1_macro"] <= 1.0
    assert len(metrics["confusion_matrix"]["matrix"]) == classes
    assert set(metrics["per_class"]) == set(metrics["confusion_matrix"]["labels"])
    assert 1 <= len(outcome["smoke_instances"]) <= 5

    registry = ModelRegistry(storage)
    version = outcome["model_version"]
    manifest = registry.manifest(version)
    artifact = storage.read(manifest["artifact"]).data
    assert manifest["sha256"] == hashlib.sha256(artifact).hexdigest()
    assert manifest["model_type"] == model_type
    assert manifest["hyperparameters"]["random_state"] == 42
    assert set(manifest["libraries"]) >= {"scikit-learn", "numpy", "joblib", "python"}
    assert manifest["lineage"]["source"] == request.source.to_json()
    assert manifest["lineage"]["processed_data"] == request.processed_data
    assert manifest["lineage"]["processed_parts"] == request.processed_parts == 1
    rows = manifest["lineage"]["rows"]
    assert rows["train"] + rows["test"] == rows["total"]
    assert len(manifest["classes"]) == classes
    header = data.decode().splitlines()[0].split(",")
    assert manifest["feature_names"] == [name for name in header if name != "target"]
    champion = registry.champion()
    assert champion is not None and champion.version == version


def test_labels_are_the_training_data_class_values_end_to_end(storage: InMemoryStorage) -> None:
    """Names stay names and numbers keep processing's one spelling (``1.0`` and ``+1``
    are class ``1``), through the manifest, the ONNX parity check, the smoke test and
    a prediction."""
    generator = np.random.default_rng(3)
    spellings = {
        "setosa": ["setosa", " setosa "],
        "1": ["1.0", "+1", "1"],
        "virginica": ["virginica"],
    }
    lines = ["a,b,target"]
    for centre, (_, written) in enumerate(spellings.items()):
        for row in range(30):
            a, b = generator.normal(10.0 * centre, 0.2, size=2)
            lines.append(f"{a},{b},{written[row % len(written)]}")
    request = processed(storage, "raw/named.csv", "\n".join(lines).encode())
    outcome = train_smoke_and_promote(storage, request, SETTINGS)
    manifest = ModelRegistry(storage).manifest(outcome["model_version"])
    assert manifest["classes"] == ["1", "setosa", "virginica"]
    assert manifest["onnx"]["status"] == "compiled"
    assert manifest["onnx"]["parity"]["labels_identical"] is True
    assert outcome["promoted"] is True  # its smoke prediction answered
    model = ModelService(ModelRegistry(storage), refresh_seconds=0).current()
    answer = model.predict(np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]]))
    assert [p["label"] for p in answer["predictions"]] == ["setosa", "1", "virginica"]
    assert set(answer["predictions"][0]["probabilities"]) == set(manifest["classes"])


def test_same_data_and_seed_give_the_same_metrics(storage: InMemoryStorage) -> None:
    first = train_smoke_and_promote(storage, processed(storage, "raw/a.csv", IRIS), SETTINGS)
    second = train_smoke_and_promote(storage, processed(storage, "raw/b.csv", IRIS), SETTINGS)
    assert first["metrics"] == second["metrics"]
    assert first["model_version"] != second["model_version"]
    # Equal is "not worse by more than the tolerance": the newer model takes over.
    assert second["promoted"] is True
    pointer = json.loads(storage.read(CHAMPION_OBJECT).data)
    assert pointer["previous_version"] == first["model_version"]


def test_a_worse_candidate_is_registered_but_not_promoted(storage: InMemoryStorage) -> None:
    good = train_smoke_and_promote(storage, processed(storage, "raw/good.csv", IRIS), SETTINGS)
    weak = replace(SETTINGS, hyperparameters={"n_estimators": 1, "max_depth": 1})
    outcome = train_smoke_and_promote(storage, processed(storage, "raw/weak.csv", IRIS), weak)
    assert outcome["promoted"] is False
    assert outcome["champion_version"] == good["model_version"]
    assert (
        "worse than the champion" in outcome["reason"] or "below the minimum" in outcome["reason"]
    )
    assert (
        ModelRegistry(storage).manifest(outcome["model_version"])["metrics"] == outcome["metrics"]
    )


def test_below_the_minimum_is_never_promoted(storage: InMemoryStorage) -> None:
    strict = replace(SETTINGS, promotion=PromotionPolicy(metric="accuracy", minimum=1.0))
    outcome = train_smoke_and_promote(
        storage,
        processed(storage, "raw/a.csv", WINE),
        replace(strict, hyperparameters={"n_estimators": 1, "max_depth": 1}),
    )
    assert outcome["promoted"] is False
    assert outcome["champion_version"] is None
    assert "below the minimum 1.0" in outcome["reason"]
    assert storage.stat(CHAMPION_OBJECT) is None


def champion_with(score: float) -> Champion:
    return Champion({"model_version": "v1", "metrics": {"f1_macro": score, "accuracy": score}}, 7)


@pytest.mark.parametrize(
    ("score", "champion", "tolerance", "promoted"),
    [
        (0.69, None, 0.0, False),
        (0.70, None, 0.0, True),
        (0.90, champion_with(0.90), 0.0, True),
        (0.89, champion_with(0.90), 0.0, False),
        (0.89, champion_with(0.90), 0.02, True),
        (0.87, champion_with(0.90), 0.02, False),
        (0.95, champion_with(0.90), 0.0, True),
    ],
)
def test_promotion_policy(
    score: float, champion: Champion | None, tolerance: float, promoted: bool
) -> None:
    policy = PromotionPolicy(metric="f1_macro", minimum=0.7, tolerance=tolerance)
    decision = decide(policy, {"f1_macro": score}, champion)
    assert decision.promoted is promoted
    assert decision.champion_version == (champion.version if champion else None)


def rival_promotes_first(storage: InterleavedStorage, f1_macro: float) -> None:
    """Another training swaps the champion in right before our first pointer write."""
    pointer = {"model_version": "rival", "metrics": {"f1_macro": f1_macro, "accuracy": f1_macro}}
    storage.before(
        "write",
        CHAMPION_OBJECT,
        lambda: storage.write(
            CHAMPION_OBJECT,
            json.dumps(pointer).encode(),
            content_type="application/json",
            if_generation_match=0,
        ),
    )


def test_two_promotions_racing_cannot_both_win() -> None:
    storage = InterleavedStorage()
    request = processed(storage, "raw/a.csv", BREAST_CANCER)
    rival_promotes_first(storage, 1.0)
    weak = replace(
        SETTINGS,
        hyperparameters={"n_estimators": 1, "max_depth": 1},
        promotion=PromotionPolicy(minimum=0.0),
    )
    outcome = train_smoke_and_promote(storage, request, weak)
    assert outcome["metrics"]["f1_macro"] < 1.0
    # Our precondition (no champion yet) failed, so we re-read and re-decided.
    assert outcome["promoted"] is False
    assert outcome["champion_version"] == "rival"
    assert json.loads(storage.read(CHAMPION_OBJECT).data)["model_version"] == "rival"


def test_a_lost_race_against_an_equal_model_retries_with_the_new_generation() -> None:
    storage = InterleavedStorage()
    request = processed(storage, "raw/a.csv", IRIS)
    rival_promotes_first(storage, 0.75)
    outcome = train_smoke_and_promote(storage, request, SETTINGS)
    assert outcome["promoted"] is True
    pointer = json.loads(storage.read(CHAMPION_OBJECT).data)
    assert pointer["model_version"] == outcome["model_version"]
    assert pointer["previous_version"] == "rival"


def test_retry_for_the_same_upload_returns_the_recorded_outcome(storage: InMemoryStorage) -> None:
    request = processed(storage, "raw/a.csv", IRIS)
    first = train(storage, request, SETTINGS)
    models_before = storage.names("models/")
    assert train(storage, request, SETTINGS) == first
    assert storage.names("models/") == models_before


def test_retry_after_a_crash_between_promotion_and_record_does_not_train_again(
    storage: InMemoryStorage,
) -> None:
    request = processed(storage, "raw/a.csv", IRIS)
    first = train_smoke_and_promote(storage, request, SETTINGS)
    storage.delete(f"models/by-source/{request.source.name}/{request.source.generation}.json")
    models_before = storage.names("models/")
    again = train(storage, request, SETTINGS)
    assert again["model_version"] == first["model_version"]
    assert again["promoted"] is True
    assert "earlier attempt" in again["reason"]
    assert storage.names("models/") == models_before


def test_unknown_and_invalid_hyperparameters_are_permanent_errors(storage: InMemoryStorage) -> None:
    request = processed(storage, "raw/a.csv", IRIS)
    with pytest.raises(TrainingFailedError, match="unknown hyperparameter 'n_trees'"):
        train(storage, request, replace(SETTINGS, hyperparameters={"n_trees": 5}))
    with pytest.raises(TrainingFailedError, match="n_estimators"):
        train(storage, request, replace(SETTINGS, hyperparameters={"n_estimators": -3}))
    assert storage.names("models/") == []


def test_refuses_data_it_cannot_split_or_read(storage: InMemoryStorage) -> None:
    lonely = b"a,target\n" + b"".join(f"{i},x\n".encode() for i in range(25)) + b"99,y\n"
    with pytest.raises(TrainingFailedError, match="single row"):
        train(storage, processed(storage, "raw/lonely.csv", lonely), SETTINGS)
    ref = upload(storage, "raw/a.csv", IRIS)
    storage.write("processed/raw/a.csv/1/data/part-00000.parquet", b"not", content_type="x")
    with pytest.raises(TrainingFailedError, match=r"part-00000\.parquet is not readable Parquet"):
        train(storage, TrainingRequest(ref, "processed/raw/a.csv/1/data/", 1), SETTINGS)
    with pytest.raises(TrainingFailedError, match=r"part-00001\.parquet does not exist; process"):
        train(storage, TrainingRequest(ref, "processed/raw/a.csv/1/data/", 2), SETTINGS)
    for name, table in {
        "empty": pa.table({"a": pa.array([], pa.float64()), "target": pa.array([], pa.string())}),
        "one_class": pa.table({"a": [1.0, 2.0, 3.0], "target": ["x", "x", "x"]}),
    }.items():
        source = replace(ref, generation=len(name))
        request = written_dataset(storage, source, f"processed/raw/a.csv/{name}/data/", table)
        found = "no rows" if name == "empty" else "a single class 'x'"
        with pytest.raises(TrainingFailedError, match=f"holds {found}; a classifier needs"):
            train(storage, request, SETTINGS)
    mismatched = written_dataset(
        storage,
        replace(ref, generation=2),
        "processed/raw/a.csv/2/data/",
        pa.table({"a": [1.0, 2.0], "target": ["x", "y"]}),
        pa.table({"b": [1.0, 2.0], "target": ["x", "y"]}),
    )
    with pytest.raises(TrainingFailedError, match=r"part-00001\.parquet has the columns"):
        train(storage, mismatched, SETTINGS)
    with pytest.raises(TrainingFailedError, match="no target column 'label'"):
        train(
            storage, processed(storage, "raw/b.csv", IRIS), replace(SETTINGS, target_column="label")
        )


def test_training_request_validation() -> None:
    source = {"bucket": "b", "object": "raw/a.csv", "generation": "1"}
    with pytest.raises(BadRequestError, match="processed_data"):
        TrainingRequest.from_json(source)
    for dataset in ("raw/a/", "processed/a", 7):
        with pytest.raises(BadRequestError, match="'processed_data' must name a prefix"):
            TrainingRequest.from_json({**source, "processed_data": dataset, "processed_parts": 1})
    for parts in (None, 0, -1, True, "2", 1.5, 100_000):
        with pytest.raises(BadRequestError, match="'processed_parts' must be a whole number"):
            TrainingRequest.from_json(
                {**source, "processed_data": "processed/a/", "processed_parts": parts}
            )
    valid = {**source, "processed_data": "processed/a/", "processed_parts": 3}
    request = TrainingRequest.from_json(valid)
    assert request.part_objects == [f"processed/a/part-0000{n}.parquet" for n in range(3)]
    assert request.to_json() == valid
    with pytest.raises(BadRequestError, match="generation"):
        TrainingRequest.from_json({**valid, "generation": "x"})
    with pytest.raises(BadRequestError, match="data bucket"):
        train(
            InMemoryStorage("test-bucket"),
            TrainingRequest(ObjectRef("other", "raw/a", 1), "processed/a/", 1),
            SETTINGS,
        )


def test_versions_sort_by_time_and_are_unique() -> None:
    early = datetime(2026, 1, 1, tzinfo=UTC)
    versions = [new_version(early + timedelta(microseconds=n)) for n in (0, 1, 1_000_000)]
    assert versions == sorted(versions)
    assert len({new_version(early) for _ in range(50)}) == 50


def test_promotion_gives_up_as_transient_when_the_pointer_never_settles() -> None:
    class FlappingStorage(InMemoryStorage):
        def write(
            self,
            name: str,
            data: bytes,
            *,
            content_type: str,
            if_generation_match: int | None = None,
        ) -> int:
            if name == CHAMPION_OBJECT:
                raise PreconditionFailedError("someone else keeps winning")
            return super().write(
                name, data, content_type=content_type, if_generation_match=if_generation_match
            )

    flapping = FlappingStorage("test-bucket")
    request = processed(flapping, "raw/a.csv", IRIS)
    with pytest.raises(TransientError, match="changed 5 times"):
        train_smoke_and_promote(flapping, request, SETTINGS)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=6),
    st.integers(min_value=100, max_value=1500),
)
def test_stratified_sampling_keeps_each_class_share(counts: list[int], limit: int) -> None:
    codes = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    np.random.default_rng(0).shuffle(codes)
    chosen = stratified_sample(codes, limit)
    if len(codes) <= limit:
        assert chosen is None
        return
    assert chosen is not None
    assert np.array_equal(chosen, np.unique(chosen))  # sorted, no row twice
    sampled = np.bincount(codes[chosen], minlength=len(counts))
    floor = np.minimum(counts, 2)
    assert len(chosen) <= limit + int(floor.sum())
    for count, got, least in zip(counts, sampled, floor, strict=True):
        share = count * limit / len(codes)
        assert least <= got <= count
        assert abs(got - share) <= max(1, least)
    again = stratified_sample(codes, limit)
    assert again is not None and np.array_equal(again, chosen)  # the seed is fixed


def test_a_file_above_max_training_rows_is_sampled_and_the_manifest_says_how(
    storage: InMemoryStorage,
) -> None:
    request = processed(storage, "raw/cancer.csv", BREAST_CANCER)
    limited = replace(SETTINGS, max_training_rows=200)
    outcome = train(storage, request, limited)
    manifest = ModelRegistry(storage).manifest(outcome["model_version"])
    assert manifest["sampling"] == {
        "method": "stratified",
        "max_training_rows": 200,
        "rows_available": 569,
        "rows_used": 200,
        "seed": 42,
    }
    rows = manifest["lineage"]["rows"]
    assert (rows["available"], rows["total"], rows["train"] + rows["test"]) == (569, 200, 200)
    # Same file, same sample: the metrics repeat exactly.
    again = train(storage, processed(storage, "raw/again.csv", BREAST_CANCER), limited)
    assert again["metrics"] == outcome["metrics"]
    everything = train(storage, processed(storage, "raw/all.csv", BREAST_CANCER), SETTINGS)
    assert ModelRegistry(storage).manifest(everything["model_version"])["sampling"]["method"] == (
        "all"
    )


def test_training_reads_the_processed_file_row_group_by_row_group(
    storage: InMemoryStorage,
) -> None:
    """Many parts of small row groups (as processing writes large files) give the same
    rows, sampled alike."""
    request = processed(storage, "raw/a.csv", IRIS)
    table = pq.read_table(pa.BufferReader(storage.read(request.part_objects[0]).data))
    split = written_dataset(
        storage,
        replace(request.source, generation=1),
        "processed/raw/split.csv/1/data/",
        *(table.slice(start, 40) for start in range(0, table.num_rows, 40)),
        row_group=7,
    )
    assert split.processed_parts == 4
    whole = train(storage, request, replace(SETTINGS, max_training_rows=100))
    pieces = train(storage, split, replace(SETTINGS, max_training_rows=100))
    assert pieces["metrics"] == whole["metrics"]
    assert pieces["smoke_instances"] == whole["smoke_instances"]


def test_the_champion_is_read_consistently_while_a_rival_replaces_it() -> None:
    """Pointer and generation come from one read: a promotion landing between a
    metadata call and the read cannot turn into a 404."""
    storage = InterleavedStorage()

    def pointer(version: str, **precondition: int) -> int:
        document = json.dumps({"model_version": version}).encode()
        return storage.write(
            CHAMPION_OBJECT, document, content_type="application/json", **precondition
        )

    first = pointer("a", if_generation_match=0)
    storage.before("read", CHAMPION_OBJECT, lambda: pointer("b", if_generation_match=first))
    champion = ModelRegistry(storage).champion()
    info = storage.stat(CHAMPION_OBJECT)
    assert champion is not None and info is not None
    assert (champion.version, champion.generation) == ("b", info.generation)


class CountingStorage(InMemoryStorage):
    """Counts each object's reads, and refuses to list: the handlers' grants are
    prefix-scoped, and listing a bucket needs a bucket-wide one."""

    def __init__(self, bucket: str) -> None:
        super().__init__(bucket)
        self.reads: Counter[str] = Counter()

    def names(self, prefix: str = "") -> list[str]:
        raise AssertionError(f"listed {prefix!r}")

    def read(self, name: str, generation: int | None = None) -> StoredObject:
        self.reads[name] += 1
        return super().read(name, generation)


def test_training_opens_again_only_the_parts_whose_rows_it_samples() -> None:
    storage = CountingStorage("test-bucket")
    table = pq.read_table(
        pa.BufferReader(storage.read(processed(storage, "raw/a.csv", IRIS).part_objects[0]).data)
    )
    request = written_dataset(
        storage,
        ObjectRef(storage.bucket, "raw/many.csv", 1),
        "processed/raw/many.csv/1/data/",
        *(table.slice(start, 5) for start in range(0, table.num_rows, 5)),
    )
    storage.reads.clear()
    outcome = train(storage, request, replace(SETTINGS, max_training_rows=12))
    assert outcome["model_version"]
    parts = request.part_objects
    assert len(parts) == 30
    # Every part once for its labels; a second time only for the rows sampled.
    assert all(storage.reads[name] in (1, 2) for name in parts)
    assert 0 < sum(storage.reads[name] == 2 for name in parts) <= 14
