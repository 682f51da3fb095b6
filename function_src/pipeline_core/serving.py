"""predict: payload validation and the cached champion with bounded staleness."""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np

from pipeline_core import logging as log
from pipeline_core.errors import (
    BadRequestError,
    InvalidInputError,
    NoChampionError,
    ObjectNotFoundError,
    PayloadTooLargeError,
    PipelineError,
)
from pipeline_core.registry import ModelRegistry, sha256_hex

SHAPES_HELP = (
    'send {"instances": [{feature: number, ...}]}, a single record object, a list of '
    'records, {"features": [number, ...]} or {"instances": [[number, ...]]}'
)


@dataclass(frozen=True)
class LoadedModel:
    version: str
    estimator: Any
    manifest: dict[str, Any]
    pointer_generation: int

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest["feature_names"])

    def describe(self) -> dict[str, Any]:
        return {
            "model_version": self.version,
            "feature_names": self.feature_names,
            "classes": self.manifest["classes"],
            "metrics": self.manifest["metrics"],
            "model_type": self.manifest.get("model_type"),
            "trained_at": self.manifest["created_at"],
            "lineage": self.manifest["lineage"],
        }

    def predict(self, rows: list[list[float]]) -> dict[str, Any]:
        probabilities = self.estimator.predict_proba(np.array(rows, dtype=np.float64))
        classes = [str(label) for label in self.estimator.classes_]
        predictions = []
        for row in probabilities:
            best = int(np.argmax(row))
            predictions.append(
                {
                    "label": classes[best],
                    "confidence": float(row[best]),
                    "probabilities": {
                        label: float(p) for label, p in zip(classes, row, strict=True)
                    },
                }
            )
        return {"model_version": self.version, "predictions": predictions}


def parse_instances(
    payload: Any, feature_names: Sequence[str], max_batch: int
) -> list[list[float]]:
    """Every accepted request shape -> rows of floats in the model's feature order."""
    records = _records(payload)
    if not records:
        raise BadRequestError(f"no instances to predict; {SHAPES_HELP}")
    if len(records) > max_batch:
        raise PayloadTooLargeError(
            f"{len(records)} instances exceed the batch limit of {max_batch}; split the request"
        )
    return [_row(record, index, feature_names) for index, record in enumerate(records)]


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


def _row(record: Any, index: int, feature_names: Sequence[str]) -> list[float]:
    where = f"instance {index}"
    if isinstance(record, Mapping):
        missing = [name for name in feature_names if name not in record]
        if missing:
            raise InvalidInputError(f"{where} is missing feature {missing[0]!r}", row=index)
        unknown = sorted(set(record) - set(feature_names))
        if unknown:
            raise InvalidInputError(
                f"{where} has unknown feature {unknown[0]!r}; "
                f"the model expects {list(feature_names)}",
                row=index,
            )
        return [_number(record[name], where, name, index) for name in feature_names]
    if isinstance(record, list):
        if len(record) != len(feature_names):
            raise InvalidInputError(
                f"{where} has {len(record)} values, the model expects {len(feature_names)} "
                f"in this order: {list(feature_names)}",
                row=index,
            )
        return [
            _number(value, where, name, index)
            for value, name in zip(record, feature_names, strict=True)
        ]
    raise BadRequestError(f"{where} must be an object or a list of numbers; {SHAPES_HELP}")


def _number(value: Any, where: str, feature: str, index: int) -> float:
    if value is None:
        raise InvalidInputError(f"{where}: feature {feature!r} is null", row=index, feature=feature)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(
            f"{where}: feature {feature!r} must be a number, got {value!r}",
            row=index,
            feature=feature,
        )
    try:
        number = float(value)
    except OverflowError:  # JSON integers have no size limit; floats do
        number = math.inf
    if not math.isfinite(number):
        raise InvalidInputError(
            f"{where}: feature {feature!r} must be finite, got {value!r}",
            row=index,
            feature=feature,
        )
    return number


class ModelService:
    """Serves the champion; checks the pointer's generation at most every
    ``refresh_seconds`` and swaps in a new champion only after its SHA-256 matched."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        refresh_seconds: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._refresh_seconds = refresh_seconds
        self._monotonic = monotonic
        self._model: LoadedModel | None = None
        self._checked_at: float | None = None
        self._lock = threading.Lock()

    def current(self) -> LoadedModel:
        """The model to serve now; raises NoChampionError when there is none to serve."""
        now = self._monotonic()
        if self._checked_at is None or now - self._checked_at >= self._refresh_seconds:
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
            self._model = self._load()
            log.info("serving a new champion", model_version=self._model.version)
            return self._model

    def _load(self) -> LoadedModel:
        champion = self._registry.champion()
        if champion is None:
            raise NoChampionError("the champion pointer disappeared while loading it")
        try:
            manifest = self._registry.manifest(champion.version)
            artifact = self._registry.storage.read(manifest["artifact"]).data
        except (ObjectNotFoundError, KeyError, ValueError) as error:
            raise self._refuse(
                champion.version, f"its manifest or artifact is unusable: {error}"
            ) from None
        actual = sha256_hex(artifact)
        if actual != manifest["sha256"] or actual != champion.pointer.get("sha256", actual):
            raise self._refuse(
                champion.version,
                f"artifact SHA-256 {actual} does not match the manifest {manifest['sha256']}",
            )
        try:
            estimator = joblib.load(io.BytesIO(artifact))
        except Exception as error:  # unpickling can fail in many ways; all mean "corrupt"
            raise self._refuse(
                champion.version, f"the artifact cannot be loaded: {error}"
            ) from None
        return LoadedModel(champion.version, estimator, manifest, champion.generation)

    def _refuse(self, version: str, problem: str) -> PipelineError:
        serving = self._model.version if self._model else None
        log.error(
            f"refusing champion {version}: {problem}",
            refused_version=version,
            serving_version=serving,
        )
        return NoChampionError(
            f"champion {version} was refused: {problem}", serving_version=serving
        )
