"""predict core: payload shapes, validation errors, cached champion, swaps, tampering."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_core.contract import CHAMPION_OBJECT
from pipeline_core.errors import (
    BadRequestError,
    InvalidInputError,
    NoChampionError,
    PayloadTooLargeError,
    PipelineError,
)
from pipeline_core.http_body import parse_json
from pipeline_core.processing import DatasetSchema, process
from pipeline_core.registry import ModelRegistry, sha256_hex
from pipeline_core.serving import LoadedModel, ModelService, parse_instances
from pipeline_core.settings import TrainingSettings
from pipeline_core.training import TrainingRequest, train_smoke_and_promote
from tests.functions.conftest import IRIS, WINE, log_lines, upload
from tests.functions.fakes import InMemoryStorage

FEATURES = ["a", "b c", "d/e"]
SETTINGS = TrainingSettings(
    project="p", data_bucket="test-bucket", hyperparameters={"n_estimators": 5}
)


def trained(storage: InMemoryStorage, name: str, data: bytes = IRIS) -> dict[str, Any]:
    ref = upload(storage, name, data)
    result = process(storage, ref, DatasetSchema())
    return train_smoke_and_promote(
        storage, TrainingRequest.of_processed(ref, result.to_json()), SETTINGS
    )


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "payload",
    [
        {"instances": [{"a": 1, "b c": 2.5, "d/e": -3}]},
        {"a": 1, "b c": 2.5, "d/e": -3},
        [{"d/e": -3, "a": 1, "b c": 2.5}],
        {"features": [1, 2.5, -3]},
        {"instances": [[1, 2.5, -3]]},
    ],
)
def test_every_accepted_shape_gives_rows_in_feature_order(payload: Any) -> None:
    rows = parse_instances(payload, FEATURES, 10)
    assert rows.dtype == np.float64 and rows.flags.c_contiguous
    assert rows.tolist() == [[1.0, 2.5, -3.0]]


@pytest.mark.parametrize(
    ("payload", "error", "words"),
    [
        ("text", BadRequestError, "JSON object or list"),
        ({"instances": {"a": 1}}, BadRequestError, "must be a list"),
        ({"instances": []}, BadRequestError, "no instances"),
        ([], BadRequestError, "no instances"),
        ({"instances": [1, 2]}, BadRequestError, "instance 0 must be an object"),
        ({"instances": [], "extra": 1}, BadRequestError, "unexpected keys ['extra']"),
        ({"features": "1,2,3"}, BadRequestError, "'features' must be a list"),
        (
            {"instances": [{"a": 1, "b c": 2}]},
            InvalidInputError,
            "instance 0 is missing feature 'd/e'",
        ),
        ([{"a": 1, "b c": 2, "d/e": 3, "zz": 4}], InvalidInputError, "unknown feature 'zz'"),
        ({"instances": [[1, 2]]}, InvalidInputError, "has 2 values, the model expects 3"),
        (
            [[1, 2, 3], [1, "x", 3]],
            InvalidInputError,
            "instance 1: feature 'b c' must be a number, got 'x'",
        ),
        ([[1, 2, True]], InvalidInputError, "feature 'd/e' must be a number, got True"),
        ([[None, 2, 3]], InvalidInputError, "instance 0: feature 'a' is null"),
        ([[1, math.inf, 3]], InvalidInputError, "feature 'b c' must be finite"),
        ([[1, 2, math.nan]], InvalidInputError, "feature 'd/e' must be finite"),
        ([[1, 2, 3]] * 11, PayloadTooLargeError, "11 instances exceed the batch limit of 10"),
    ],
)
def test_bad_payloads_get_specific_errors(payload: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as caught:
        parse_instances(payload, FEATURES, 10)
    assert words in str(caught.value)


def test_no_champion_is_a_clear_503(storage: InMemoryStorage) -> None:
    service = ModelService(ModelRegistry(storage), refresh_seconds=30)
    with pytest.raises(NoChampionError, match="no champion has been promoted") as caught:
        service.current()
    assert caught.value.http_status == 503


def test_serves_the_champion_and_caches_it_until_the_refresh_interval(
    storage: InMemoryStorage,
) -> None:
    first = trained(storage, "raw/a.csv")
    clock = ManualClock()
    service = ModelService(ModelRegistry(storage), refresh_seconds=30, monotonic=clock)
    model = service.current()
    assert model.version == first["model_version"]
    answer = model.predict(np.array([[5.1, 3.5, 1.4, 0.2]]))
    prediction = answer["predictions"][0]
    assert answer["model_version"] == first["model_version"]
    assert prediction["label"] == "setosa"  # the training data's class value
    assert prediction["confidence"] == max(prediction["probabilities"].values())
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)

    second = trained(storage, "raw/b.csv")
    assert second["promoted"] is True
    clock.now = 29.0
    assert service.current().version == first["model_version"]  # bounded staleness
    clock.now = 30.0
    assert service.current().version == second["model_version"]


def test_refresh_swaps_immediately(storage: InMemoryStorage) -> None:
    trained(storage, "raw/a.csv")
    service = ModelService(ModelRegistry(storage), refresh_seconds=3600)
    service.current()
    newer = trained(storage, "raw/b.csv")
    loaded = service.refresh()
    assert loaded is not None and loaded.version == newer["model_version"]


def served_artifact(manifest: dict[str, Any], runtime: str) -> str:
    return str(manifest["onnx"]["artifact"] if runtime == "onnx" else manifest["artifact"])


@pytest.mark.parametrize("runtime", ["onnx", "joblib"])
def test_a_tampered_champion_is_refused_and_the_previous_model_keeps_serving(
    storage: InMemoryStorage, captured_logs: Any, runtime: str
) -> None:
    first = trained(storage, "raw/a.csv")
    clock = ManualClock()
    service = ModelService(
        ModelRegistry(storage), refresh_seconds=10, runtime=runtime, monotonic=clock
    )
    assert service.current().version == first["model_version"]
    assert service.current().runtime == runtime
    second = trained(storage, "raw/b.csv")
    manifest = ModelRegistry(storage).manifest(second["model_version"])
    storage.write(
        served_artifact(manifest, runtime), b"evil bytes", content_type="application/octet-stream"
    )
    clock.now = 10.0
    assert service.current().version == first["model_version"]
    errors = [line for line in log_lines(captured_logs) if line["severity"] == "ERROR"]
    assert "does not match the manifest" in errors[-1]["message"]
    assert errors[-1]["refused_version"] == second["model_version"]
    with pytest.raises(NoChampionError, match="SHA-256"):
        service.refresh()


@pytest.mark.parametrize(
    ("runtime", "digest_key", "pointer_key"),
    [("onnx", ("onnx", "sha256"), "onnx_sha256"), ("joblib", ("sha256",), "sha256")],
)
def test_a_corrupt_artifact_with_a_matching_hash_is_refused(
    storage: InMemoryStorage, runtime: str, digest_key: tuple[str, ...], pointer_key: str
) -> None:
    outcome = trained(storage, "raw/a.csv")
    registry = ModelRegistry(storage)
    manifest = registry.manifest(outcome["model_version"])
    garbage = b"definitely not a model"
    storage.write(served_artifact(manifest, runtime), garbage, content_type="x")
    manifest_name = f"models/{outcome['model_version']}/manifest.json"
    document = json.loads(storage.read(manifest_name).data)
    holder = document
    for key in digest_key[:-1]:
        holder = holder[key]
    holder[digest_key[-1]] = sha256_hex(garbage)
    storage.write(manifest_name, json.dumps(document).encode(), content_type="application/json")
    pointer = json.loads(storage.read(CHAMPION_OBJECT).data)
    pointer[pointer_key] = sha256_hex(garbage)
    storage.write(CHAMPION_OBJECT, json.dumps(pointer).encode(), content_type="application/json")
    service = ModelService(registry, refresh_seconds=0, runtime=runtime)
    # What is wrong and what to do, not a bare unpickling error.
    kind = "an ONNX graph" if runtime == "onnx" else "a joblib pickle"
    with pytest.raises(NoChampionError) as refused:
        service.current()
    message = refused.value.message
    assert f"matches its SHA-256 but is not {kind} that loads" in message
    assert "stored corrupt" in message and "upload the training data again under raw/" in message


def test_describe_reports_what_the_model_needs(storage: InMemoryStorage) -> None:
    outcome = trained(storage, "raw/wine.csv", WINE)
    description = ModelService(ModelRegistry(storage), refresh_seconds=0).current().describe()
    assert description["model_version"] == outcome["model_version"]
    assert len(description["feature_names"]) == 13
    assert description["classes"] == ["0", "1", "2"]
    assert description["metrics"] == outcome["metrics"]
    assert description["lineage"]["source"]["object"] == "raw/wine.csv"
    assert description["trained_at"]


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    # Beyond float range: JSON integers have no size limit.
    | st.integers(min_value=2**1024, max_value=2**1100)
    | st.floats()
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from([*FEATURES, "instances", "features", "x"]), children, max_size=4
        )
    ),
    max_leaves=12,
)


@settings(deadline=None)
@given(JSON_VALUES)
def test_client_input_never_causes_a_server_error(payload: Any) -> None:
    try:
        rows = parse_instances(payload, FEATURES, 3)
    except PipelineError as error:
        assert 400 <= error.http_status < 500
    else:
        assert rows.shape == (len(rows), len(FEATURES)) and np.isfinite(rows).all()


class OverflowingPredictor:
    """A model whose arithmetic overflows on its second row, as a scaled linear model
    does on values near the float32 limit."""

    runtime = "onnx"

    def probabilities(self, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        result = np.full((len(rows), 2), 0.5)
        result[1] = np.nan
        return result


def test_values_that_overflow_inside_the_model_are_a_422_never_a_nan_answer() -> None:
    manifest = {"classes": ["no", "yes"], "feature_names": ["a"]}
    model = LoadedModel("v", OverflowingPredictor(), manifest, pointer_generation=0)
    with pytest.raises(InvalidInputError) as refused:
        model.predict(np.array([[1.0], [3e38], [2.0]]))
    assert refused.value.details["problems"] == [
        {"row": 1, "feature": None, "message": refused.value.message}
    ]
    assert "no finite probabilities" in refused.value.message


@pytest.mark.parametrize("body", [b"null", b"1", b'"x"', b"false", b"[]", b"{}", b"[[1]]"])
def test_any_json_document_parses_and_scalars_are_shallow(body: bytes) -> None:
    assert parse_json(body) == json.loads(body)
