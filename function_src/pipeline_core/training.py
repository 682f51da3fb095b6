"""train_model: processed Parquet -> versioned model + manifest -> champion if it wins."""

from __future__ import annotations

import io
import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sklearn
from sklearn.base import ClassifierMixin
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipeline_core import logging as log
from pipeline_core.errors import BadRequestError, TrainingFailedError
from pipeline_core.events import ObjectRef
from pipeline_core.leases import Clock, acquire, utc_now
from pipeline_core.registry import (
    ModelRegistry,
    lineage_object,
    new_version,
    training_lease_object,
)
from pipeline_core.settings import TrainingSettings
from pipeline_core.storage import Storage, read_json, write_json

SEED = 42
# Set by the pipeline itself, so a configured value would silently change what the
# manifest's recorded seed means.
FIXED_HYPERPARAMETERS = frozenset({"random_state"})
TEST_FRACTION = 0.2
SMOKE_ROWS = 5


@dataclass(frozen=True)
class TrainingRequest:
    source: ObjectRef  # the raw upload the data came from
    processed_object: str

    @classmethod
    def from_json(cls, payload: Any) -> TrainingRequest:
        source = ObjectRef.from_request(payload)
        processed = payload.get("processed_object")
        if not isinstance(processed, str) or not processed.startswith("processed/"):
            raise BadRequestError(
                f"'processed_object' must name an object under processed/, got {processed!r}"
            )
        return cls(source, processed)

    def to_json(self) -> dict[str, str]:
        return {**self.source.to_json(), "processed_object": self.processed_object}


def build_estimator(model_type: str, hyperparameters: Mapping[str, Any]) -> Any:
    """The configured estimator with a fixed seed; unknown hyperparameters are refused."""
    classifier: Any
    if model_type == "random_forest":
        classifier = RandomForestClassifier(random_state=SEED, n_jobs=1)
    elif model_type == "gradient_boosting":
        classifier = GradientBoostingClassifier(random_state=SEED)
    elif model_type == "logistic_regression":
        classifier = LogisticRegression(max_iter=1000, random_state=SEED)
    else:
        raise TrainingFailedError(f"unknown model type {model_type!r}")
    fixed = sorted(FIXED_HYPERPARAMETERS & set(hyperparameters))
    if fixed:
        raise TrainingFailedError(
            f"hyperparameter {fixed[0]!r} cannot be set: the pipeline fixes the seed "
            f"({SEED}) so that training is reproducible"
        )
    valid = classifier.get_params()
    unknown = sorted(set(hyperparameters) - set(valid))
    if unknown:
        raise TrainingFailedError(
            f"unknown hyperparameter {unknown[0]!r} for {model_type}; "
            f"valid names: {', '.join(sorted(valid))}"
        )
    classifier.set_params(**hyperparameters)
    if model_type == "logistic_regression":
        return Pipeline([("scale", StandardScaler()), ("classifier", classifier)])
    return classifier


def evaluate(
    estimator: ClassifierMixin, features: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]
) -> dict[str, Any]:
    predicted = estimator.predict(features)
    classes = [str(label) for label in estimator.classes_]
    precision, recall, _, support = precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1_macro": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "per_class": {
            label: {
                "precision": float(precision[index]),
                "recall": float(recall[index]),
                "support": int(support[index]),
            }
            for index, label in enumerate(classes)
        },
        "confusion_matrix": {
            "labels": classes,
            "matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
        },
    }


def train(
    storage: Storage,
    request: TrainingRequest,
    settings: TrainingSettings,
    clock: Clock = utc_now,
) -> dict[str, Any]:
    """Train, register and maybe promote; a retry for the same upload returns the outcome.

    Concurrent deliveries for one upload train once: the first takes the lease, the
    others get ``LeaseHeldError`` (transient) and, redelivered, the recorded outcome.
    """
    if request.source.bucket != storage.bucket:
        raise BadRequestError(
            f"bucket {request.source.bucket!r} is not this pipeline's data bucket"
        )
    registry = ModelRegistry(storage)
    recorded = _recorded_outcome(registry, request.source)
    if recorded is not None:
        return recorded
    lease = acquire(
        storage,
        training_lease_object(request.source),
        seconds=settings.timeout_seconds,
        clock=clock,
    )
    try:
        # The attempt that held the lease before us may have finished since our check.
        recorded = _recorded_outcome(registry, request.source)
        if recorded is not None:
            return recorded
        return _train_and_record(storage, registry, request, settings, clock)
    finally:
        lease.release()


def _train_and_record(
    storage: Storage,
    registry: ModelRegistry,
    request: TrainingRequest,
    settings: TrainingSettings,
    clock: Clock,
) -> dict[str, Any]:
    features, labels, feature_names = _load(storage, request.processed_object, settings)
    train_x, test_x, train_y, test_y = _split(features, labels)
    estimator = build_estimator(settings.model_type, settings.hyperparameters)
    try:
        estimator.fit(train_x, train_y)
    except (ValueError, TypeError) as error:
        raise TrainingFailedError(
            f"{settings.model_type} with hyperparameters {dict(settings.hyperparameters)} "
            f"could not be trained: {error}"
        ) from None
    metrics = evaluate(estimator, test_x, test_y)
    created_at = clock()
    version = new_version(created_at)
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    manifest = registry.save_candidate(
        buffer.getvalue(),
        {
            "model_version": version,
            "created_at": created_at.isoformat(),
            "model_type": settings.model_type,
            "hyperparameters": {**settings.hyperparameters, "random_state": SEED},
            "libraries": _library_versions(),
            "feature_names": feature_names,
            "target_column": settings.target_column,
            "classes": [str(label) for label in estimator.classes_],
            "metrics": metrics,
            "split": {"test_fraction": TEST_FRACTION, "stratified": True, "seed": SEED},
            "lineage": {
                "source": request.source.to_json(),
                "processed_object": request.processed_object,
                "rows": {"total": len(labels), "train": len(train_y), "test": len(test_y)},
            },
            "smoke_instances": [
                dict(zip(feature_names, (float(value) for value in row), strict=True))
                for row in test_x[:SMOKE_ROWS]
            ],
        },
    )
    decision = registry.promote(manifest, settings.promotion, clock())
    outcome = {
        "model_version": version,
        "metrics": metrics,
        "promoted": decision.promoted,
        "champion_version": decision.champion_version,
        "reason": decision.reason,
        "smoke_instances": manifest["smoke_instances"],
    }
    write_json(storage, lineage_object(request.source), outcome)
    log.info(
        "trained model", **{key: outcome[key] for key in ("model_version", "promoted", "reason")}
    )
    return outcome


def _recorded_outcome(registry: ModelRegistry, source: ObjectRef) -> dict[str, Any] | None:
    """The outcome of an earlier attempt for this upload, including one that crashed
    after promoting but before recording (the champion then comes from this upload)."""
    storage = registry.storage
    if storage.stat(lineage_object(source)) is not None:
        recorded = read_json(storage, lineage_object(source))
        log.info("already trained from this upload", model_version=recorded["model_version"])
        return recorded
    champion = registry.champion()
    if champion is None or champion.pointer.get("source") != source.to_json():
        return None
    log.info("already the champion from this upload", model_version=champion.version)
    manifest = registry.manifest(champion.version)
    return {
        "model_version": champion.version,
        "metrics": manifest["metrics"],
        "promoted": True,
        "champion_version": champion.version,
        "reason": "already the champion, trained from this upload by an earlier attempt",
        "smoke_instances": manifest["smoke_instances"],
    }


def _load(
    storage: Storage, processed: str, settings: TrainingSettings
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], list[str]]:
    try:
        table = pq.read_table(pa.BufferReader(storage.read(processed).data))
    except pa.ArrowInvalid as error:
        raise TrainingFailedError(f"{processed} is not readable Parquet: {error}") from None
    target = settings.target_column
    if target not in table.column_names:
        raise TrainingFailedError(f"{processed} has no target column {target!r}")
    feature_names = [name for name in table.column_names if name != target]
    if not feature_names:
        raise TrainingFailedError(f"{processed} has no feature columns")
    features = np.column_stack(
        [table.column(name).to_numpy().astype(np.float64) for name in feature_names]
    )
    labels = np.array([str(label) for label in table.column(target).to_pylist()], dtype=object)
    return features, labels, feature_names


def _split(
    features: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        found = f"a single class {classes[0]!r}" if len(classes) else "no rows"
        raise TrainingFailedError(f"the data holds {found}; a classifier needs at least 2 classes")
    rare = [str(label) for label, count in zip(classes, counts, strict=True) if count < 2]
    if rare:
        raise TrainingFailedError(
            f"classes {rare} have a single row; a stratified split needs at least 2 per class"
        )
    rows = len(labels)
    test_rows = max(math.ceil(rows * TEST_FRACTION), len(classes))
    if rows - test_rows < len(classes):
        raise TrainingFailedError(
            f"{rows} rows are too few to split {len(classes)} classes into train and test sets"
        )
    parts = train_test_split(
        features, labels, test_size=test_rows, random_state=SEED, stratify=labels
    )
    return parts[0], parts[1], parts[2], parts[3]


def _library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "joblib": joblib.__version__,
        "pyarrow": pa.__version__,
    }
