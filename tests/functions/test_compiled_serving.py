"""Compiled champions: ONNX parity per model type, the joblib fallback, tampered compiled
artifacts, pinned versions, readiness and the lean predict import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline_core import compiling
from pipeline_core.contract import CHAMPION_OBJECT
from pipeline_core.errors import ModelRefusedError, ModelVersionNotFoundError, NoChampionError
from pipeline_core.processing import DatasetSchema, process
from pipeline_core.registry import ModelRegistry, sha256_hex
from pipeline_core.serving import PINNED_CACHE_SIZE, JoblibModel, ModelService, parse_instances
from pipeline_core.settings import TrainingSettings
from pipeline_core.storage import StoredObject
from pipeline_core.training import TrainingRequest, train, train_smoke_and_promote
from tests.functions.conftest import IRIS, ROOT, WINE, Function, upload
from tests.functions.fakes import InMemoryStorage

SETTINGS = TrainingSettings(project="p", data_bucket="test-bucket")


def request_for(storage: InMemoryStorage, name: str, data: bytes) -> TrainingRequest:
    ref = upload(storage, name, data)
    return TrainingRequest.of_processed(ref, process(storage, ref, DatasetSchema()).to_json())


def settings_for(model_type: str) -> TrainingSettings:
    trees = {} if model_type == "logistic_regression" else {"n_estimators": 20}
    return replace(SETTINGS, model_type=model_type, hyperparameters=trees)


@pytest.mark.parametrize("data", [IRIS, WINE], ids=["iris", "wine"])
@pytest.mark.parametrize(
    "model_type", ["random_forest", "logistic_regression", "gradient_boosting"]
)
def test_every_model_type_compiles_and_answers_as_scikit_learn_does(
    storage: InMemoryStorage, data: bytes, model_type: str
) -> None:
    outcome = train_smoke_and_promote(
        storage, request_for(storage, "raw/d.csv", data), settings_for(model_type)
    )
    manifest = ModelRegistry(storage).manifest(outcome["model_version"])
    onnx = manifest["onnx"]
    assert onnx["status"] == "compiled"
    assert manifest["serving_runtime"] == "onnx"
    assert onnx["opset"] == compiling.TARGET_OPSET
    assert onnx["runtime"].startswith("onnxruntime ")
    parity = onnx["parity"]
    assert parity["passed"] and parity["labels_identical"]
    assert parity["rows"] == manifest["lineage"]["rows"]["test"]
    assert parity["max_abs_probability_difference"] <= compiling.PARITY_TOLERANCE == 1e-5
    assert onnx["artifact"] == f"models/{outcome['model_version']}/model.onnx"
    assert onnx["sha256"] == sha256_hex(storage.read(onnx["artifact"]).data)

    registry = ModelRegistry(storage)
    compiled = ModelService(registry, refresh_seconds=0, runtime="onnx").current()
    pickled = ModelService(registry, refresh_seconds=0, runtime="joblib").current()
    assert (compiled.runtime, pickled.runtime) == ("onnx", "joblib")
    header = data.decode().splitlines()[0].split(",")
    rows = np.loadtxt(data.decode().splitlines()[1:], delimiter=",", usecols=range(len(header) - 1))
    fast, reference = compiled.predict(rows), pickled.predict(rows)
    assert [p["label"] for p in fast["predictions"]] == [
        p["label"] for p in reference["predictions"]
    ]
    for ours, theirs in zip(fast["predictions"], reference["predictions"], strict=True):
        for label, probability in ours["probabilities"].items():
            assert probability == pytest.approx(theirs["probabilities"][label], abs=2e-6)


def test_a_model_that_cannot_be_converted_is_served_through_joblib_and_says_so(
    storage: InMemoryStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(estimator: Any, feature_count: int) -> bytes:
        raise NotImplementedError("no converter for this estimator")

    monkeypatch.setattr(compiling, "_convert", unsupported)
    outcome = train_smoke_and_promote(storage, request_for(storage, "raw/a.csv", IRIS), SETTINGS)
    manifest = ModelRegistry(storage).manifest(outcome["model_version"])
    assert manifest["onnx"] == {
        "status": "not_convertible",
        "converter": manifest["onnx"]["converter"],
        "opset": compiling.TARGET_OPSET,
        "reason": "NotImplementedError: no converter for this estimator",
    }
    assert manifest["serving_runtime"] == outcome["serving_runtime"] == "joblib"
    assert not [name for name in storage.names("models/") if name.endswith(".onnx")]
    model = ModelService(ModelRegistry(storage), refresh_seconds=0).current()
    assert model.runtime == "joblib"
    assert model.describe()["onnx"]["status"] == "not_convertible"
    assert model.predict(np.array([[5.1, 3.5, 1.4, 0.2]]))["predictions"][0]["label"] == "setosa"


def test_a_compiled_model_that_fails_parity_is_not_served(
    storage: InMemoryStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiling, "PARITY_TOLERANCE", -1.0)  # nothing can be that close
    outcome = train(storage, request_for(storage, "raw/a.csv", IRIS), SETTINGS)
    manifest = ModelRegistry(storage).manifest(outcome["model_version"])
    assert manifest["onnx"]["status"] == "failed_parity"
    assert "probabilities differ by up to" in manifest["onnx"]["reason"]
    assert manifest["onnx"]["parity"]["passed"] is False
    assert manifest["serving_runtime"] == "joblib"
    assert "artifact" not in manifest["onnx"]
    assert not [name for name in storage.names("models/") if name.endswith(".onnx")]
    served = ModelService(ModelRegistry(storage), refresh_seconds=0).pinned(
        outcome["model_version"]
    )
    assert served.runtime == "joblib"
    assert served.describe()["onnx"]["status"] == "failed_parity"


def test_a_swapped_compiled_model_is_refused_and_the_previous_champion_keeps_serving(
    storage: InMemoryStorage,
) -> None:
    first = train_smoke_and_promote(storage, request_for(storage, "raw/a.csv", IRIS), SETTINGS)
    service = ModelService(ModelRegistry(storage), refresh_seconds=0)
    assert service.current().version == first["model_version"]
    wine = train_smoke_and_promote(storage, request_for(storage, "raw/w.csv", WINE), SETTINGS)
    assert service.current().version == wine["model_version"]
    iris_again = train(storage, request_for(storage, "raw/b.csv", IRIS), SETTINGS)
    registry = ModelRegistry(storage)
    # A valid graph of another version in place of this one's: only the hash tells.
    other = storage.read(registry.manifest(wine["model_version"])["onnx"]["artifact"]).data
    storage.write(
        registry.manifest(iris_again["model_version"])["onnx"]["artifact"], other, content_type="x"
    )
    pointer = json.loads(storage.read(CHAMPION_OBJECT).data)
    pointer.update(
        model_version=iris_again["model_version"],
        manifest=f"models/{iris_again['model_version']}/manifest.json",
        onnx_sha256=registry.manifest(iris_again["model_version"])["onnx"]["sha256"],
    )
    storage.write(CHAMPION_OBJECT, json.dumps(pointer).encode(), content_type="application/json")
    assert service.current().version == wine["model_version"]  # still the verified one
    with pytest.raises(NoChampionError, match="does not match the manifest"):
        service.refresh()


def test_a_pinned_version_is_served_verified_and_cached(storage: InMemoryStorage) -> None:
    old = train_smoke_and_promote(storage, request_for(storage, "raw/a.csv", IRIS), SETTINGS)
    new = train_smoke_and_promote(storage, request_for(storage, "raw/w.csv", WINE), SETTINGS)
    registry = ModelRegistry(storage)
    service = ModelService(registry, refresh_seconds=0)
    assert service.current().version == new["model_version"]
    pinned = service.pinned(old["model_version"])
    assert pinned.version == old["model_version"] and pinned.pointer_generation == 0
    assert pinned.feature_names != service.current().feature_names
    assert service.pinned(old["model_version"]) is pinned  # cached
    assert service.pinned(new["model_version"]) is service.current()
    assert service.versions() == {
        "champion": new["model_version"],
        "versions": [new["model_version"], old["model_version"]],
    }


def test_the_pinned_cache_is_bounded(storage: InMemoryStorage) -> None:
    request = request_for(storage, "raw/a.csv", IRIS)
    versions = [
        train(storage, replace(request, source=replace(request.source, generation=n)), SETTINGS)[
            "model_version"
        ]
        for n in range(PINNED_CACHE_SIZE + 1)
    ]
    service = ModelService(ModelRegistry(storage), refresh_seconds=0)
    first = service.pinned(versions[0])
    for version in versions[1:]:
        service.pinned(version)
    assert service.pinned(versions[0]) is not first  # the least recently used was dropped
    assert service.pinned(versions[-1]) is service.pinned(versions[-1])


def test_unknown_and_tampered_pinned_versions_are_refused(storage: InMemoryStorage) -> None:
    champion = train_smoke_and_promote(storage, request_for(storage, "raw/a.csv", IRIS), SETTINGS)
    candidate = train(storage, request_for(storage, "raw/b.csv", IRIS), SETTINGS)
    service = ModelService(ModelRegistry(storage), refresh_seconds=0)
    with pytest.raises(ModelVersionNotFoundError, match="GET /versions") as unknown:
        service.pinned("20200101T000000000000Z-000000")
    assert unknown.value.http_status == 404
    manifest = ModelRegistry(storage).manifest(candidate["model_version"])
    storage.write(manifest["onnx"]["artifact"], b"evil", content_type="x")
    with pytest.raises(ModelRefusedError, match="does not match the manifest") as refused:
        service.pinned(candidate["model_version"])
    assert refused.value.http_status == 409
    assert service.current().version == champion["model_version"]


def test_predict_http_pins_versions_lists_them_and_reports_readiness(
    function: type[Function], storage: InMemoryStorage
) -> None:
    client = function("predict", "http").use(storage=storage).client
    not_ready = client.get("/ready")
    assert not_ready.status_code == 503
    assert not_ready.get_json()["status"] == "not_ready"
    assert client.get("/health").get_json()["model_loaded"] is False

    old = train_smoke_and_promote(storage, request_for(storage, "raw/a.csv", IRIS), SETTINGS)
    new = train_smoke_and_promote(storage, request_for(storage, "raw/b.csv", IRIS), SETTINGS)
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.get_json() == {
        "status": "ready",
        "model_version": new["model_version"],
        "runtime": "onnx",
    }
    assert client.get("/versions").get_json()["versions"] == [
        new["model_version"],
        old["model_version"],
    ]
    row = [5.1, 3.5, 1.4, 0.2]
    pinned = client.post(
        "/", json={"instances": [row], "parameters": {"model_version": old["model_version"]}}
    )
    assert pinned.status_code == 200
    assert pinned.get_json()["model_version"] == old["model_version"]
    assert (
        client.post("/", json={"instances": [row]}).get_json()["model_version"]
        == new["model_version"]
    )
    for parameters, status, words in [
        ({"model_version": "20200101T000000000000Z-000000"}, 404, "GET /versions lists"),
        ({"model_version": "../champion"}, 400, "must be a version id"),
        ({"version": "x"}, 400, "unknown parameter 'version'"),
        ("latest", 400, "'parameters' must be an object"),
    ]:
        answer = client.post("/", json={"instances": [row], "parameters": parameters})
        assert answer.status_code == status, answer.get_json()
        assert words in answer.get_json()["error"]["message"]


def test_beyond_float32_is_refused_before_the_model(storage: InMemoryStorage) -> None:
    with pytest.raises(Exception, match="beyond the float32 range") as caught:
        parse_instances([[1.0, 2.0, 1e300]], ["a", "b", "c"], 10)
    assert getattr(caught.value, "http_status", None) == 422


def test_predict_starts_without_the_training_stack(
    storage: InMemoryStorage, tmp_path: Path
) -> None:
    """A fresh interpreter imports the entry point, loads a compiled champion and
    predicts: neither scikit-learn nor pandas nor the processing/training modules."""
    train_smoke_and_promote(storage, request_for(storage, "raw/a.csv", IRIS), SETTINGS)
    for name in storage.names("models/"):
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read(name).data)
    probe = f"""
import json
import sys
from pathlib import Path
import main
from pipeline_core.registry import ModelRegistry
from pipeline_core.serving import ModelService, parse_instances
from tests.functions.fakes import InMemoryStorage
at_import = sorted(sys.modules)
storage = InMemoryStorage("test-bucket")
root = Path({str(tmp_path)!r})
for path in sorted(root.rglob("*")):
    if path.is_file():
        storage.write(str(path.relative_to(root)), path.read_bytes(), content_type="x")
model = ModelService(ModelRegistry(storage), refresh_seconds=0).current()
answer = model.predict(parse_instances([[5.1, 3.5, 1.4, 0.2]], model.feature_names, 1))
label = answer["predictions"][0]["label"]
print(json.dumps([at_import, sorted(sys.modules), model.runtime, label]))
"""
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT / "function_src",
        # The repository root too, for the bucket fake that lives with the tests.
        env={**os.environ, "FUNCTION_TARGET": "predict", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    at_import, after_serving, runtime, label = json.loads(completed.stdout.strip().splitlines()[-1])
    assert (runtime, label) == ("onnx", "setosa")
    forbidden = (
        "sklearn",
        "pandas",
        "pyarrow",
        "scipy",
        "pipeline_core.processing",
        "pipeline_core.training",
    )
    for modules in (at_import, after_serving):
        assert not [
            name for name in modules if name.split(".")[0] in forbidden or name in forbidden
        ]
    assert "onnxruntime" not in at_import and "onnxruntime" in after_serving
    assert "pyarrow" not in after_serving


class SlowArtifacts(InMemoryStorage):
    """Artifacts take a while to download, as from a real bucket on a cold instance."""

    def read(self, name: str, generation: int | None = None) -> StoredObject:
        if name.endswith((".onnx", ".joblib")):
            time.sleep(0.2)
        return super().read(name, generation)


class ArtifactReads(InMemoryStorage):
    """Records which model artifacts are read, to tell which runtime loaded a model."""

    def __init__(self, bucket: str) -> None:
        super().__init__(bucket)
        self.artifacts_read: list[str] = []

    def read(self, name: str, generation: int | None = None) -> StoredObject:
        if name.endswith((".onnx", ".joblib")):
            self.artifacts_read.append(name.rsplit("/", 1)[-1])
        return super().read(name, generation)


@pytest.mark.parametrize(
    ("runtime", "artifact"), [("onnx", "model.onnx"), ("joblib", "model.joblib")]
)
def test_events_mode_smokes_the_candidate_with_the_runtime_predict_serves_it_with(
    runtime: str, artifact: str
) -> None:
    """With ONNX (the default) the pickle is never even read, so never unpickled."""
    storage = ArtifactReads("test-bucket")
    request = request_for(storage, "raw/a.csv", IRIS)
    settings = replace(SETTINGS, serving_runtime=runtime)
    outcome = train_smoke_and_promote(storage, request, settings)
    assert outcome["smoke_prediction"]["model_version"] == outcome["model_version"]
    assert storage.artifacts_read == [artifact]
    storage.artifacts_read.clear()
    served = ModelService(ModelRegistry(storage), refresh_seconds=0, runtime=runtime).current()
    assert (served.runtime, storage.artifacts_read) == (runtime, [artifact])


@pytest.mark.parametrize("runtime", ["onnx", "joblib"])
def test_requests_reaching_a_fresh_instance_together_all_get_the_champion(runtime: str) -> None:
    storage = SlowArtifacts("test-bucket")
    champion = train_smoke_and_promote(storage, request_for(storage, "raw/a.csv", IRIS), SETTINGS)
    service = ModelService(ModelRegistry(storage), refresh_seconds=30, runtime=runtime)
    start = threading.Barrier(8)

    def first_request() -> str:
        start.wait()
        return service.current().version

    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = list(pool.map(lambda _: first_request(), range(8)))
    assert versions == [champion["model_version"]] * 8


def test_the_joblib_path_predicts_on_one_thread(storage: InMemoryStorage) -> None:
    train_smoke_and_promote(storage, request_for(storage, "raw/a.csv", IRIS), SETTINGS)
    model = ModelService(ModelRegistry(storage), refresh_seconds=0, runtime="joblib").current()
    assert isinstance(model.predictor, JoblibModel)
    assert model.predictor._estimator.n_jobs == 1


# What only training needs: every other function starts without it.
TRAINING_STACK = ("sklearn", "scipy", "pandas", "skl2onnx", "onnx", "joblib")
STAGE_CORES = ("pipeline_core.processing", "pipeline_core.training", "pipeline_core.scoring")


@pytest.mark.parametrize(
    ("target", "core", "absent"),
    [
        ("train_model", "pipeline_core.training", ()),
        ("train_model_event", "pipeline_core.training", ()),
        ("process_data", "pipeline_core.processing", TRAINING_STACK),
        ("process_data_event", "pipeline_core.processing", TRAINING_STACK),
        ("score_data", "pipeline_core.scoring", (*TRAINING_STACK, "onnxruntime")),
        ("trigger_workflow", None, (*TRAINING_STACK, "pyarrow", "onnxruntime")),
        ("predict", None, (*TRAINING_STACK, "pyarrow", "onnxruntime")),
    ],
)
def test_each_function_starts_with_its_own_core_and_nothing_heavier(
    target: str, core: str | None, absent: tuple[str, ...]
) -> None:
    """docs/FUNCTIONS.md, "Import budget": a fresh interpreter as the instance starts."""
    probe = "import json, sys, main; print(json.dumps(sorted(sys.modules)))"
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT / "function_src",
        env={**os.environ, "FUNCTION_TARGET": target},
        capture_output=True,
        text=True,
        check=True,
    )
    modules = set(json.loads(completed.stdout.strip().splitlines()[-1]))
    assert modules & set(STAGE_CORES) == ({core} if core else set())
    assert not sorted(name for name in modules if name.split(".")[0] in absent)


def test_health_names_a_refused_champion_while_the_previous_one_serves(
    function: type[Function], storage: InMemoryStorage
) -> None:
    client = function("predict", "http").use(storage=storage).client
    first = train_smoke_and_promote(storage, request_for(storage, "raw/a.csv", IRIS), SETTINGS)
    assert client.post("/reload").status_code == 200
    assert "refused_champion" not in client.get("/health").get_json()
    second = train_smoke_and_promote(storage, request_for(storage, "raw/b.csv", IRIS), SETTINGS)
    onnx = ModelRegistry(storage).manifest(second["model_version"])["onnx"]["artifact"]
    storage.write(onnx, b"evil", content_type="x")
    assert client.post("/reload").status_code == 503
    health = client.get("/health").get_json()
    assert health["model_version"] == first["model_version"]
    assert health["refused_champion"]["model_version"] == second["model_version"]
    assert "does not match the manifest" in health["refused_champion"]["problem"]
    ready = client.get("/ready")
    assert ready.status_code == 200  # the previous champion still serves
    assert ready.get_json()["model_version"] == first["model_version"]
    assert ready.get_json()["refused_champion"] == health["refused_champion"]
    third = train_smoke_and_promote(storage, request_for(storage, "raw/c.csv", IRIS), SETTINGS)
    assert client.post("/reload").get_json()["model_version"] == third["model_version"]
    assert "refused_champion" not in client.get("/health").get_json()
    assert "refused_champion" not in client.get("/ready").get_json()
