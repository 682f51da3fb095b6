"""train_model: processed Parquet -> a versioned candidate (joblib and, when it passes
the parity check, ONNX) + manifest; ``promote_candidate``: the candidate -> champion if
the policy allows, called only after the candidate answered its smoke prediction."""

from __future__ import annotations

import io
import math
import platform
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import skl2onnx
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
from pipeline_core.compiling import COMPILED, compile_candidate
from pipeline_core.contract import (
    FIXED_HYPERPARAMETERS,
    SMOKE_ROWS,
    lineage_object,
    training_lease_object,
)
from pipeline_core.errors import (
    BadRequestError,
    ObjectNotFoundError,
    TrainingFailedError,
    TransientError,
)
from pipeline_core.events import ObjectRef, PromotionRequest, TrainingRequest
from pipeline_core.leases import Clock, once, utc_now
from pipeline_core.machine import available_cpus
from pipeline_core.onnx_model import RUNTIME_VERSION
from pipeline_core.parquet_dataset import StoredPart, open_part
from pipeline_core.registry import ModelRegistry, new_version
from pipeline_core.settings import TrainingSettings
from pipeline_core.storage import Storage, read_json, write_json

SEED = 42
TEST_FRACTION = 0.2


__all__ = [
    "TrainingRequest",
    "build_estimator",
    "promote_candidate",
    "train",
    "train_smoke_and_promote",
]


def build_estimator(model_type: str, hyperparameters: Mapping[str, Any]) -> Any:
    """The configured estimator with a fixed seed; unknown hyperparameters are refused."""
    classifier: Any
    if model_type == "random_forest":
        # Trees fit independently, so a forest uses every CPU the function has.
        classifier = RandomForestClassifier(random_state=SEED, n_jobs=available_cpus())
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
    """Train and register a candidate (not promoted: ``promote_candidate`` decides after
    the smoke prediction); a retry for the same upload returns the recorded outcome.

    Concurrent deliveries for one upload train once: the first takes the lease, the
    others get ``LeaseHeldError`` (transient) and, redelivered, the recorded outcome.
    """
    request.source.check_bucket(storage.bucket)
    registry = ModelRegistry(storage)
    return once(
        storage,
        training_lease_object(request.source),
        seconds=settings.timeout_seconds,
        clock=clock,
        recorded=lambda: _recorded_outcome(registry, request.source),
        work=lambda: _train_and_record(storage, registry, request, settings, clock),
    )


CANDIDATE_REASON = "registered as a candidate; it is promoted only after its smoke prediction"


def _train_and_record(
    storage: Storage,
    registry: ModelRegistry,
    request: TrainingRequest,
    settings: TrainingSettings,
    clock: Clock,
) -> dict[str, Any]:
    start = log.started()
    data = _load(storage, request, settings)
    train_x, test_x, train_y, test_y = _split(data.features, data.labels)
    estimator = build_estimator(settings.model_type, settings.hyperparameters)
    try:
        estimator.fit(train_x, train_y)
    except (ValueError, TypeError) as error:
        raise TrainingFailedError(
            f"{settings.model_type} with hyperparameters {dict(settings.hyperparameters)} "
            f"could not be trained: {error}"
        ) from None
    metrics = evaluate(estimator, test_x, test_y)
    classes = [str(label) for label in estimator.classes_]
    compilation = compile_candidate(estimator, test_x, classes)
    if compilation.status != COMPILED:
        log.warning(
            "the candidate is served through joblib: it was not compiled to ONNX",
            onnx_status=compilation.status,
            reason=compilation.detail.get("reason"),
        )
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
            "feature_names": data.feature_names,
            "target_column": settings.target_column,
            "classes": classes,
            "metrics": metrics,
            "onnx": compilation.manifest_entry(),
            "serving_runtime": "onnx" if compilation.status == COMPILED else "joblib",
            "split": {"test_fraction": TEST_FRACTION, "stratified": True, "seed": SEED},
            "sampling": data.sampling,
            "lineage": {
                "source": request.source.to_json(),
                "processed_data": request.processed_data,
                "processed_parts": request.processed_parts,
                "rows": {
                    "available": data.rows_available,
                    "total": len(data.labels),
                    "train": len(train_y),
                    "test": len(test_y),
                },
            },
            "smoke_instances": [
                dict(zip(data.feature_names, (float(value) for value in row), strict=True))
                for row in test_x[:SMOKE_ROWS]
            ],
        },
        compilation.model,
    )
    champion = registry.champion()
    outcome = {
        "model_version": version,
        "metrics": metrics,
        "serving_runtime": manifest["serving_runtime"],
        "decided": False,
        "promoted": False,
        "champion_version": champion.version if champion else None,
        "reason": CANDIDATE_REASON,
        "smoke_instances": manifest["smoke_instances"],
    }
    return _record_outcome(
        storage,
        request.source,
        outcome,
        "trained a candidate",
        start,
        model_version=version,
        serving_runtime=manifest["serving_runtime"],
        rows_used=len(data.labels),
        rows_available=data.rows_available,
        model_type=settings.model_type,
        metrics={key: metrics[key] for key in ("accuracy", "f1_macro")},
    )


def promote_candidate(
    storage: Storage,
    request: PromotionRequest,
    settings: TrainingSettings,
    clock: Clock = utc_now,
) -> dict[str, Any]:
    """Decide the candidate trained from the upload; the decision is recorded, so a
    retry returns it instead of deciding again."""
    request.source.check_bucket(storage.bucket)
    registry = ModelRegistry(storage)
    recorded = _recorded_outcome(registry, request.source)
    if recorded is None or recorded["model_version"] != request.model_version:
        raise BadRequestError(
            f"no candidate {request.model_version} was trained from "
            f"{request.source.name} generation {request.source.generation}"
        )
    if recorded.get("decided", True):
        return recorded
    start = log.started()
    manifest = registry.manifest(request.model_version)
    decision = registry.promote(manifest, settings.promotion, clock())
    outcome = {
        **recorded,
        "decided": True,
        "promoted": decision.promoted,
        "champion_version": decision.champion_version,
        "reason": decision.reason,
    }
    return _record_outcome(
        storage,
        request.source,
        outcome,
        "promotion decided",
        start,
        model_version=request.model_version,
        promoted=decision.promoted,
        reason=decision.reason,
    )


def train_smoke_and_promote(
    storage: Storage,
    request: TrainingRequest,
    settings: TrainingSettings,
    clock: Clock = utc_now,
) -> dict[str, Any]:
    """What both orchestrations do after processing: train a candidate, smoke it through
    predict's own loading, verification and prediction (pinned by version), then decide
    its promotion. The workflow runs the same steps as three HTTP calls."""
    from pipeline_core.serving import ModelService, smoke_test

    candidate = train(storage, request, settings, clock)
    version = candidate["model_version"]
    service = ModelService(
        ModelRegistry(storage), refresh_seconds=0, runtime=settings.serving_runtime
    )
    smoke = smoke_test(service, version, candidate["smoke_instances"])
    outcome = promote_candidate(storage, PromotionRequest(request.source, version), settings, clock)
    return {**outcome, "smoke_prediction": smoke}


def _record_outcome(
    storage: Storage,
    source: ObjectRef,
    outcome: dict[str, Any],
    event: str,
    start: float,
    **fields: Any,
) -> dict[str, Any]:
    """Record a step's ``outcome`` for the upload (a retry returns it), log ``event``
    with how long the step took, and return it."""
    write_json(storage, lineage_object(source), outcome)
    log.info(event, **fields, duration_ms=log.elapsed_ms(start))
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
        "serving_runtime": manifest.get("serving_runtime", "joblib"),
        "decided": True,
        "promoted": True,
        "champion_version": champion.version,
        "reason": "already the champion, trained from this upload by an earlier attempt",
        "smoke_instances": manifest["smoke_instances"],
    }


@dataclass(frozen=True)
class TrainingData:
    features: np.ndarray[Any, Any]
    labels: np.ndarray[Any, Any]
    feature_names: list[str]
    rows_available: int
    sampling: dict[str, Any]


def _load(storage: Storage, request: TrainingRequest, settings: TrainingSettings) -> TrainingData:
    """Column by column: the labels of every row first, then the features of only the
    rows sampled, one row group at a time, part after part, so memory follows
    ``max_training_rows``. Every part is read at the generation first seen."""
    parts = []
    for name in request.part_objects:
        info = storage.stat(name)
        if info is None:
            raise TrainingFailedError(f"{name} does not exist; process the upload first")
        parts.append(StoredPart(name, info.generation))
    target = settings.target_column
    column_names: list[str] = []
    labels: list[pa.ChunkedArray] = []
    row_group_sizes: list[list[int]] = []  # per part
    for part in parts:
        with _reading(storage, part) as parquet:
            names = parquet.schema_arrow.names
            if not column_names:
                _check_columns(part.name, names, target)
                column_names = names
            elif names != column_names:
                raise TrainingFailedError(
                    f"{part.name} has the columns {names}, {parts[0].name} {column_names}"
                )
            labels.append(parquet.read(columns=[target]).column(target).cast(pa.string()))
            metadata = parquet.metadata
            row_group_sizes.append(
                [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
            )
    feature_names = [name for name in column_names if name != target]
    classes, codes = _label_codes(labels)
    chosen = stratified_sample(codes, settings.max_training_rows)
    sampling: dict[str, Any] = {
        "method": "all" if chosen is None else "stratified",
        "max_training_rows": settings.max_training_rows,
        "rows_available": len(codes),
        "rows_used": len(codes) if chosen is None else len(chosen),
        "seed": SEED,
    }
    blocks = []
    start = 0
    for part, sizes in zip(parts, row_group_sizes, strict=True):
        end = start + sum(sizes)
        if chosen is not None and not np.any((chosen >= start) & (chosen < end)):
            start = end  # no row of this part was sampled
            continue
        with _reading(storage, part) as parquet:
            for group, size in enumerate(sizes):
                local = (
                    None if chosen is None else chosen[(chosen >= start) & (chosen < start + size)]
                )
                if local is None or len(local):
                    table = parquet.read_row_group(group, columns=feature_names)
                    block = np.column_stack(
                        [table.column(name).to_numpy().astype(np.float64) for name in feature_names]
                    )
                    blocks.append(block if local is None else block[local - start])
                start += size
    features = (
        np.concatenate(blocks) if blocks else np.empty((0, len(feature_names)), dtype=np.float64)
    )
    selected = codes if chosen is None else codes[chosen]
    labels_used = classes[selected] if len(classes) else np.empty(0, dtype=object)
    return TrainingData(features, labels_used, feature_names, len(codes), sampling)


def _check_columns(name: str, column_names: list[str], target: str) -> None:
    if target not in column_names:
        raise TrainingFailedError(f"{name} has no target column {target!r}")
    if len(column_names) < 2:
        raise TrainingFailedError(f"{name} has no feature columns")


@contextmanager
def _reading(storage: Storage, part: StoredPart) -> Iterator[pq.ParquetFile]:
    try:
        with open_part(storage, part) as parquet:
            yield parquet
    except pa.ArrowInvalid as error:
        raise TrainingFailedError(f"{part.name} is not readable Parquet: {error}") from None
    except ObjectNotFoundError:
        # A late processing attempt (its lease expired while it ran) rewrote the part
        # between our stat and our read: the data is there, at a newer generation.
        raise TransientError(
            f"{part.name} was replaced while training read generation {part.generation}; "
            "retry to read the current one"
        ) from None


def _label_codes(
    labels: list[pa.ChunkedArray],
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The distinct labels (as text) and, per row, the index of its label."""
    column = pa.chunked_array([chunk for part in labels for chunk in part.chunks], pa.string())
    encoded = column.combine_chunks().dictionary_encode()
    classes = np.asarray([str(label) for label in encoded.dictionary.to_pylist()], dtype=object)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
    return classes, codes


def stratified_sample(codes: np.ndarray[Any, Any], limit: int) -> np.ndarray[Any, Any] | None:
    """Row positions (sorted) of ``limit`` rows keeping each class's share, drawn with
    the fixed seed; None when every row fits. Each class keeps at least two rows (or all
    it has), so the stratified split still sees it: a class far rarer than
    1/``limit`` can add those two rows beyond the limit."""
    if len(codes) <= limit:
        return None
    counts = np.bincount(codes)
    quota = counts * limit / len(codes)
    allotted = np.floor(quota).astype(np.int64)
    # Largest remainders get the rows flooring left over.
    leftover = limit - int(allotted.sum())
    allotted[np.argsort(allotted - quota, kind="stable")[:leftover]] += 1
    allotted = np.minimum(np.maximum(allotted, np.minimum(counts, 2)), counts)
    generator = np.random.default_rng(SEED)
    chosen = [
        generator.choice(np.flatnonzero(codes == code), size=int(size), replace=False)
        for code, size in enumerate(allotted)
        if size
    ]
    return np.sort(np.concatenate(chosen))


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
        "skl2onnx": skl2onnx.__version__,
        "onnxruntime": RUNTIME_VERSION,
    }
