"""predict: payload validation and the verified, cached models it serves.

The champion is re-checked at most every ``refresh_seconds``; a version a request pins
is loaded, verified and kept in a small cache. A compiled (ONNX) artifact is served
with ONNX Runtime when the manifest says it passed its parity check; otherwise the
joblib artifact is unpickled, and only then is scikit-learn imported. Every artifact is
checked against its SHA-256 before it is loaded.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import numpy as np

from pipeline_core import logging as log
from pipeline_core.errors import (
    BadRequestError,
    InvalidInputError,
    ModelRefusedError,
    ModelVersionNotFoundError,
    NoChampionError,
    ObjectNotFoundError,
    PayloadTooLargeError,
    PipelineError,
    SmokeTestFailedError,
)
from pipeline_core.registry import VERSION_PATTERN, Champion, ModelRegistry, sha256_hex

SHAPES_HELP = (
    'send {"instances": [{feature: number, ...}]}, a single record object, a list of '
    'records, {"features": [number, ...]} or {"instances": [[number, ...]]}'
)
ONNX = "onnx"
JOBLIB = "joblib"
# Both runtimes compute in float32 (scikit-learn's trees cast their input too), so a
# larger magnitude cannot be represented and is refused like a non-finite number.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Pinned versions kept loaded besides the champion; the least recently used goes first.
PINNED_CACHE_SIZE = 4
PARAMETERS = frozenset({"model_version"})
VERSIONS_HELP = "GET /versions lists the registered versions"
# What an operator does about a refused version (docs/FUNCTIONS.md, "Refused models").
REMEDY = "upload the training data again under raw/ to train and promote a new version"
# A 422 lists this many problems (and counts them all): enough to fix a batch by,
# bounded so that a batch of garbage does not give a megabyte of errors.
MAX_REPORTED_PROBLEMS = 20
SHOWN_VALUE_CHARS = 40


class Predictor(Protocol):
    runtime: str

    def probabilities(self, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]: ...


class JoblibModel:
    """The pickled scikit-learn estimator: the fallback for models without ONNX."""

    runtime = JOBLIB

    def __init__(self, artifact: bytes) -> None:
        import joblib  # unpickling imports scikit-learn: only on this path

        self._estimator = joblib.load(io.BytesIO(artifact))
        # A forest keeps the n_jobs it was trained with; per request, joblib's worker
        # threads cost more than the trees they share out (measured 39 ms against
        # 11.5 ms for one row), and the server already runs requests side by side.
        threads = [name for name in self._estimator.get_params() if name.endswith("n_jobs")]
        self._estimator.set_params(**dict.fromkeys(threads, 1))

    def probabilities(self, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.asarray(self._estimator.predict_proba(rows))


@dataclass(frozen=True)
class LoadedModel:
    version: str
    predictor: Predictor
    manifest: dict[str, Any]
    pointer_generation: int  # 0 for a version loaded because a request pinned it
    _classes: np.ndarray[Any, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_classes", np.asarray(self.manifest["classes"], dtype=object))

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest["feature_names"])

    @property
    def runtime(self) -> str:
        return self.predictor.runtime

    def describe(self) -> dict[str, Any]:
        onnx = self.manifest.get("onnx", {})
        return {
            "model_version": self.version,
            "feature_names": self.feature_names,
            "classes": self.manifest["classes"],
            "metrics": self.manifest["metrics"],
            "model_type": self.manifest.get("model_type"),
            "trained_at": self.manifest["created_at"],
            "lineage": self.manifest["lineage"],
            "runtime": self.runtime,
            "onnx": {key: onnx[key] for key in ("status", "reason") if key in onnx},
        }

    def class_probabilities(
        self, rows: np.ndarray[Any, Any]
    ) -> tuple[np.ndarray[Any, np.dtype[np.float64]], np.ndarray[Any, np.dtype[np.intp]]]:
        """(rows, classes) probabilities in the manifest's class order, and the index of
        each row's most probable class; a row without finite probabilities is a 422."""
        probabilities, best, computable = self.computed_probabilities(rows)
        if not computable.all():
            _refuse_not_computable(computable)
        return probabilities, best

    def computed_probabilities(
        self, rows: np.ndarray[Any, Any]
    ) -> tuple[
        np.ndarray[Any, np.dtype[np.float64]],
        np.ndarray[Any, np.dtype[np.intp]],
        np.ndarray[Any, np.dtype[np.bool_]],
    ]:
        """``class_probabilities`` and which rows have finite ones (the others' are
        meaningless): predict refuses the request, batch scoring those rows alone; the
        two answer alike."""
        probabilities = self.predictor.probabilities(rows).astype(np.float64)
        # Array methods, not np.all & co.: on one row numpy's Python-level wrappers cost
        # more than the model (docs/FUNCTIONS.md, "Runtime").
        computable = np.isfinite(probabilities).all(axis=1)
        best = probabilities.argmax(axis=1)
        # A float32 sum over 100 trees misses 1 by a few 1e-7; rescaled rows and six
        # decimals make both runtimes print a certain class as 1.0, and keep JSON short.
        # Rows of infinities are left as they are (refused by the caller), without the
        # warning of dividing them.
        totals = probabilities.sum(axis=1, keepdims=True)
        np.divide(probabilities, totals, out=probabilities, where=computable[:, np.newaxis])
        return probabilities.round(6, out=probabilities), best, computable

    @property
    def classes(self) -> np.ndarray[Any, np.dtype[np.object_]]:
        return self._classes

    def predict(self, rows: np.ndarray[Any, Any]) -> dict[str, Any]:
        """``rows``: (n, features) float64 from ``parse_instances``."""
        probabilities, best = self.class_probabilities(rows)
        confidences = probabilities.max(axis=1).tolist()  # the probability of label ``best``
        labels = self._classes[best].tolist()
        names = self.manifest["classes"]
        predictions = [
            {
                "label": label,
                "confidence": confidence,
                "probabilities": dict(zip(names, row, strict=True)),
            }
            for label, confidence, row in zip(
                labels, confidences, probabilities.tolist(), strict=True
            )
        ]
        return {"model_version": self.version, "predictions": predictions}


def _refuse_not_computable(computable: np.ndarray[Any, np.dtype[np.bool_]]) -> NoReturn:
    """Values within float32 can still overflow inside a model (a scaled linear model
    meets infinity): such rows get a 422, never a NaN answer."""
    raise invalid_input(
        [
            InputProblem(
                int(row),
                None,
                f"instance {row}: the model computes no finite probabilities for these "
                "values (they overflow inside it); send values of the training data's scale",
            )
            for row in np.flatnonzero(~computable)
        ]
    )


def requested_version(payload: Any) -> str | None:
    """The model version ``{"parameters": {"model_version": ...}}`` pins, if any."""
    if not isinstance(payload, Mapping) or "parameters" not in payload:
        return None
    parameters = payload["parameters"]
    if not isinstance(parameters, Mapping):
        raise BadRequestError('\'parameters\' must be an object such as {"model_version": "..."}')
    unknown = sorted(set(parameters) - PARAMETERS)
    if unknown:
        raise BadRequestError(
            f"unknown parameter {unknown[0]!r}; the parameters are {sorted(PARAMETERS)}"
        )
    version = parameters.get("model_version")
    if version is None:
        return None
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise BadRequestError(
            f"'model_version' must be a version id such as 20261121T193000123456Z-ab12cd, "
            f"got {version!r}; {VERSIONS_HELP}"
        )
    return version


def parse_instances(
    payload: Any, feature_names: Sequence[str], max_batch: int
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Every accepted request shape -> one (instances, features) float64 array in the
    model's feature order. Valid input takes a fast path without per-value Python
    checks; anything else is validated value by value, and every problem is reported."""
    records = _records(payload)
    if not records:
        raise BadRequestError(f"no instances to predict; {SHAPES_HELP}")
    if len(records) > max_batch:
        raise PayloadTooLargeError(
            f"{len(records)} instances exceed the batch limit of {max_batch}; split the request"
        )
    matrix = _fast_matrix(records, feature_names)
    if matrix is None:
        problems: list[InputProblem] = []
        rows = [
            _row(record, index, feature_names, problems) for index, record in enumerate(records)
        ]
        if problems:
            raise invalid_input(problems)
        matrix = np.array(rows, dtype=np.float64).reshape(len(rows), len(feature_names))
    return matrix


@dataclass(frozen=True)
class InputProblem:
    """One value (or one instance, ``feature`` None) a model cannot take."""

    row: int
    feature: str | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "feature": self.feature, "message": self.message}


def invalid_input(problems: Sequence[InputProblem]) -> InvalidInputError:
    """One 422 naming every problem (the first ``MAX_REPORTED_PROBLEMS``) and their count;
    ``row``/``feature`` repeat the first one's."""
    first = problems[0]
    message = first.message
    if len(problems) > 1:
        shown = min(len(problems), MAX_REPORTED_PROBLEMS)
        message = f"{len(problems)} problems (the first {shown} listed in 'problems'); {message}"
    return InvalidInputError(
        message,
        row=first.row,
        feature=first.feature,
        problems=[problem.to_json() for problem in problems[:MAX_REPORTED_PROBLEMS]],
        problem_count=len(problems),
    )


def _fast_matrix(
    records: list[Any], feature_names: Sequence[str]
) -> np.ndarray[Any, np.dtype[np.float64]] | None:
    """The matrix when every record is well-formed and every value a representable
    number; None sends the request through the value-by-value validation."""
    names = set(feature_names)
    rows: list[Any] = []
    for record in records:
        if type(record) is dict and record.keys() == names:
            rows.append([record[name] for name in feature_names])
        elif type(record) is list and len(record) == len(names):
            rows.append(record)
        else:
            return None
    flat_types = {type(value) for row in rows for value in row}
    if not flat_types <= {int, float}:
        return None  # bool, None, strings, nested values
    try:
        matrix = np.array(rows, dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        return None
    if matrix.shape != (len(records), len(feature_names)):
        return None
    # One reduction over the magnitudes; a NaN maximum fails the comparison too.
    if not np.abs(matrix).max(initial=0.0) <= FLOAT32_MAX:
        return None
    return matrix


def _records(payload: Any) -> list[Any]:
    if isinstance(payload, list):
        return payload
    if not isinstance(payload, Mapping):
        raise BadRequestError(f"the body must be a JSON object or list; {SHAPES_HELP}")
    if "instances" in payload:
        if set(payload) - {"instances", "parameters"}:
            extra = sorted(set(payload) - {"instances", "parameters"})
            raise BadRequestError(f"unexpected keys {extra} next to 'instances'; {SHAPES_HELP}")
        instances = payload["instances"]
        if not isinstance(instances, list):
            raise BadRequestError(f"'instances' must be a list; {SHAPES_HELP}")
        return instances
    if set(payload) == {"features"}:
        if not isinstance(payload["features"], list):
            raise BadRequestError(f"'features' must be a list of numbers; {SHAPES_HELP}")
        return [payload["features"]]
    return [payload]


def _row(
    record: Any, index: int, feature_names: Sequence[str], problems: list[InputProblem]
) -> list[float]:
    """The record's values in feature order; what is wrong with it goes to ``problems``."""
    where = f"instance {index}"
    if isinstance(record, Mapping):
        problems.extend(
            InputProblem(index, name, f"{where} is missing feature {name!r}")
            for name in feature_names
            if name not in record
        )
        problems.extend(
            InputProblem(
                index,
                str(name),
                f"{where} has unknown feature {_shown(name)}; "
                f"the model expects {list(feature_names)}",
            )
            for name in sorted(set(record) - set(feature_names), key=str)
        )
        return [
            _number(record[name], where, name, index, problems) if name in record else math.nan
            for name in feature_names
        ]
    if isinstance(record, list):
        if len(record) != len(feature_names):
            problems.append(
                InputProblem(
                    index,
                    None,
                    f"{where} has {len(record)} values, the model expects {len(feature_names)} "
                    f"in this order: {list(feature_names)}",
                )
            )
            return [math.nan] * len(feature_names)
        return [
            _number(value, where, name, index, problems)
            for value, name in zip(record, feature_names, strict=True)
        ]
    raise BadRequestError(f"{where} must be an object or a list of numbers; {SHAPES_HELP}")


def _number(
    value: Any, where: str, feature: str, index: int, problems: list[InputProblem]
) -> float:
    """``value`` as a float; NaN (with a problem recorded) when the model cannot take it."""
    problem = _number_problem(value, feature)
    if problem is None:
        return float(value)
    problems.append(InputProblem(index, feature, f"{where}: {problem}"))
    return math.nan


def _number_problem(value: Any, feature: str) -> str | None:
    if value is None:
        return f"feature {feature!r} is null"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"feature {feature!r} must be a number, got {_shown(value)}"
    try:
        number = float(value)
    except OverflowError:  # JSON integers have no size limit; floats do
        number = math.inf
    if not math.isfinite(number):
        return f"feature {feature!r} must be finite, got {_shown(value)}"
    if abs(number) > FLOAT32_MAX:
        return (
            f"feature {feature!r} is {_shown(value)}, beyond the float32 range "
            f"(+-{FLOAT32_MAX:.4g}) the model computes in"
        )
    return None


def _shown(value: Any) -> str:
    """A value as an error message quotes it: its repr cut short, or its JSON kind."""
    if isinstance(value, list | dict):
        return "an array" if isinstance(value, list) else "an object"
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else f"{text[:SHOWN_VALUE_CHARS]}..."


class ModelService:
    """Serves the champion; checks the pointer's generation at most every
    ``refresh_seconds`` and swaps in a new champion only after its SHA-256 matched.
    Versions that requests pin are loaded and verified the same way, and cached."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        refresh_seconds: int,
        runtime: str = ONNX,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._refresh_seconds = refresh_seconds
        self._runtime = runtime
        self._monotonic = monotonic
        self._model: LoadedModel | None = None
        self._checked_at: float | None = None
        self._lock = threading.Lock()
        self._pinned: OrderedDict[str, LoadedModel] = OrderedDict()
        self._pinned_lock = threading.Lock()
        self._refused: dict[str, str] | None = None

    @property
    def loaded(self) -> LoadedModel | None:
        """The champion in memory, without checking for a newer one (liveness)."""
        return self._model

    @property
    def refused(self) -> dict[str, str] | None:
        """The newest champion that failed verification, while it is the pointer's."""
        return self._refused

    def current(self) -> LoadedModel:
        """The model to serve now; raises NoChampionError when there is none to serve."""
        now = self._monotonic()
        stale = self._checked_at is None or now - self._checked_at >= self._refresh_seconds
        # Requests that reach a fresh instance together wait for the first one's load
        # (the lock) instead of answering 503 while it runs.
        loading = self._model is None and self._lock.locked()
        if stale or loading:
            try:
                self.refresh()
            except PipelineError:
                if self._model is None:
                    raise
        if self._model is None:
            raise NoChampionError(
                "no model is serving yet: no champion has been promoted (upload training data "
                "under raw/ and wait for the pipeline) or the champion failed verification"
            )
        return self._model

    def refresh(self) -> LoadedModel | None:
        """Check the pointer now; load a new champion if there is one. Errors loading it
        are logged and raised, and the previous model keeps serving."""
        with self._lock:
            self._checked_at = self._monotonic()
            generation = self._registry.champion_generation()
            if generation == 0 or (self._model and self._model.pointer_generation == generation):
                return self._model
            champion = self._registry.champion()
            if champion is None:
                raise NoChampionError("the champion pointer disappeared while loading it")
            start = log.started()
            try:
                self._model = self._load(champion.version, champion)
                self._refused = None
            except _UnusableModelError as unusable:
                raise self._refuse(champion.version, str(unusable)) from None
            log.info(
                "serving a new champion",
                model_version=self._model.version,
                runtime=self._model.runtime,
                duration_ms=log.elapsed_ms(start),
            )
            return self._model

    def pinned(self, version: str) -> LoadedModel:
        """A registered version a request names: verified when first loaded, then cached."""
        champion = self._model
        if champion is not None and champion.version == version:
            return champion
        with self._pinned_lock:
            cached = self._pinned.get(version)
            if cached is not None:
                self._pinned.move_to_end(version)
                return cached
            try:
                model = self._load(version, None)
            except _VersionMissingError:
                raise ModelVersionNotFoundError(
                    f"model version {version} is not registered; {VERSIONS_HELP}",
                    model_version=version,
                ) from None
            except _UnusableModelError as unusable:
                log.error(f"refusing pinned version {version}: {unusable}", refused_version=version)
                raise ModelRefusedError(
                    f"model version {version} was refused: {unusable}", model_version=version
                ) from None
            self._pinned[version] = model
            while len(self._pinned) > PINNED_CACHE_SIZE:
                self._pinned.popitem(last=False)
            log.info("loaded a pinned version", model_version=version, runtime=model.runtime)
            return model

    def versions(self) -> dict[str, Any]:
        champion = self._registry.champion()
        return {
            "champion": champion.version if champion else None,
            "versions": self._registry.versions(),
        }

    def _load(self, version: str, champion: Champion | None) -> LoadedModel:
        """Fetch, verify and load one version; the champion's pointer must agree too."""
        try:
            manifest = self._registry.manifest(version)
        except ObjectNotFoundError:
            if champion is None:
                raise _VersionMissingError(version) from None
            raise _UnusableModelError(f"its manifest is missing; {REMEDY}") from None
        except ValueError as error:
            raise _UnusableModelError(f"its manifest is unusable ({error}); {REMEDY}") from None
        pointer = champion.pointer if champion else {}
        onnx = manifest.get("onnx", {})
        try:
            if self._runtime == ONNX and onnx.get("status") == "compiled":
                name, expected, pointer_key = onnx["artifact"], onnx["sha256"], "onnx_sha256"
            else:
                name, expected, pointer_key = manifest["artifact"], manifest["sha256"], "sha256"
            artifact = self._registry.storage.read(name).data
        except (ObjectNotFoundError, KeyError, TypeError) as error:
            raise _UnusableModelError(
                f"its manifest or artifact is unusable ({type(error).__name__}: {error}); {REMEDY}"
            ) from None
        actual = sha256_hex(artifact)
        # Pointers written before compiled models existed carry no onnx_sha256.
        if actual != expected or actual != pointer.get(pointer_key, actual):
            raise _UnusableModelError(
                f"artifact {name} SHA-256 {actual} does not match the manifest {expected}: "
                f"it was changed after training; restore the original or {REMEDY}"
            )
        predictor: Predictor
        try:
            predictor = _onnx_model(artifact) if name.endswith(".onnx") else JoblibModel(artifact)
        except Exception as error:  # unpickling or a broken graph fails in many ways
            kind = "an ONNX graph" if name.endswith(".onnx") else "a joblib pickle"
            raise _UnusableModelError(
                f"the artifact {name} matches its SHA-256 but is not {kind} that loads "
                f"({type(error).__name__}: {error}); it was stored corrupt, so no retry helps: "
                f"{REMEDY}"
            ) from None
        return LoadedModel(version, predictor, manifest, champion.generation if champion else 0)

    def _refuse(self, version: str, problem: str) -> PipelineError:
        serving = self._model.version if self._model else None
        self._refused = {"model_version": version, "problem": problem}
        log.error(
            f"refusing champion {version}: {problem}",
            refused_version=version,
            serving_version=serving,
        )
        return NoChampionError(
            f"champion {version} was refused: {problem}", serving_version=serving
        )


def smoke_test(
    service: ModelService, version: str, instances: list[dict[str, float]]
) -> dict[str, Any]:
    """Predict ``instances`` with ``version`` exactly as a request pinning it would."""
    try:
        model = service.pinned(version)
        return model.predict(parse_instances(instances, model.feature_names, len(instances)))
    except PipelineError as error:
        raise SmokeTestFailedError(
            f"candidate {version} failed its smoke prediction: {error.message}"
        ) from None


def _onnx_model(artifact: bytes) -> Predictor:
    from pipeline_core.onnx_model import OnnxModel  # ONNX Runtime only when serving one

    return OnnxModel(artifact)


class _UnusableModelError(Exception):
    """Why a version cannot be served (mapped to the caller's error)."""


class _VersionMissingError(Exception):
    """The version has no manifest."""
