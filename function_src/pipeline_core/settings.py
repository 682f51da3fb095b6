"""Typed settings read from the environment the Pulumi components (and devstack) set.

The variable names are the contract in ``components/topology.py`` (class ``Env``); this
package is deployed alone, so it repeats them rather than importing them. A missing or
invalid variable raises ``ConfigurationError`` naming it and the expected value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline_core.errors import ConfigurationError

# The default function timeout in the stack config; a lease lives as long as its holder.
DEFAULT_TIMEOUT_SECONDS = 540
MODEL_TYPES = ("random_forest", "logistic_regression", "gradient_boosting")
PROMOTION_METRICS = ("accuracy", "f1_macro")
PREDICT_RUNTIMES = ("onnx", "joblib")
DEFAULT_MAX_TRAINING_ROWS = 20_000


class _Environment:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def required(self, name: str) -> str:
        value = self._environ.get(name, "").strip()
        if not value:
            raise ConfigurationError(f"environment variable {name} is not set")
        return value

    def optional(self, name: str, default: str) -> str:
        value = self._environ.get(name, "").strip()
        return value or default

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        raw = self.optional(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(
                f"environment variable {name}={raw!r} is not a whole number"
            ) from None
        if not low <= value <= high:
            raise ConfigurationError(
                f"environment variable {name}={value} is outside {low}..{high}"
            )
        return value

    def fraction(self, name: str, default: float) -> float:
        raw = self.optional(name, repr(default))
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(
                f"environment variable {name}={raw!r} is not a number"
            ) from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ConfigurationError(f"environment variable {name}={raw!r} is outside 0..1")
        return value

    def timeout_seconds(self) -> int:
        # 3600 s is the longest timeout Cloud Functions (2nd gen) allows.
        return self.integer("FUNCTION_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS, low=1, high=3600)

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.optional(name, default)
        if value not in options:
            raise ConfigurationError(
                f"environment variable {name}={value!r} is not one of {', '.join(options)}"
            )
        return value

    def json_value(self, name: str, default: str) -> Any:
        raw = self.optional(name, default)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as error:
            raise ConfigurationError(
                f"environment variable {name} is not valid JSON: {error.msg}"
            ) from None


@dataclass(frozen=True)
class ProcessingSettings:
    project: str
    data_bucket: str
    target_column: str = "target"
    feature_columns: tuple[str, ...] = ()  # empty: every column but the target
    min_rows: int = 20
    chunk_rows: int = 50_000
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    model_training_topic: str = ""  # events mode only
    model_events_topic: str = ""  # events mode only

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ProcessingSettings:
        env = _Environment(environ)
        features = env.json_value("FEATURE_COLUMNS", "[]")
        if not isinstance(features, list) or not all(
            isinstance(name, str) and name for name in features
        ):
            raise ConfigurationError(
                "environment variable FEATURE_COLUMNS must be a JSON list of column names"
            )
        target = env.optional("TARGET_COLUMN", "target")
        if target in features:
            raise ConfigurationError(
                f"environment variable FEATURE_COLUMNS lists the target column {target!r}"
            )
        return cls(
            project=env.required("GOOGLE_CLOUD_PROJECT"),
            data_bucket=env.required("DATA_BUCKET"),
            target_column=target,
            feature_columns=tuple(features),
            min_rows=env.integer("MIN_ROWS", 20, low=2, high=10_000_000),
            timeout_seconds=env.timeout_seconds(),
            model_training_topic=env.optional("MODEL_TRAINING_TOPIC", ""),
            model_events_topic=env.optional("MODEL_EVENTS_TOPIC", ""),
        )


@dataclass(frozen=True)
class PromotionPolicy:
    metric: str = "f1_macro"
    minimum: float = 0.7
    tolerance: float = 0.0


@dataclass(frozen=True)
class TrainingSettings:
    project: str
    data_bucket: str
    target_column: str = "target"
    model_type: str = "random_forest"
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    promotion: PromotionPolicy = field(default_factory=PromotionPolicy)
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    max_training_rows: int = DEFAULT_MAX_TRAINING_ROWS
    model_serving_topic: str = ""  # events mode only
    model_events_topic: str = ""  # events mode only
    # Events mode smokes the candidate in process, with the runtime predict serves it with.
    serving_runtime: str = "onnx"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TrainingSettings:
        env = _Environment(environ)
        hyperparameters = env.json_value("MODEL_HYPERPARAMETERS", "{}")
        if not isinstance(hyperparameters, dict):
            raise ConfigurationError(
                "environment variable MODEL_HYPERPARAMETERS must be a JSON object"
            )
        return cls(
            project=env.required("GOOGLE_CLOUD_PROJECT"),
            data_bucket=env.required("DATA_BUCKET"),
            target_column=env.optional("TARGET_COLUMN", "target"),
            model_type=env.choice("MODEL_TYPE", MODEL_TYPES, "random_forest"),
            hyperparameters=hyperparameters,
            promotion=PromotionPolicy(
                metric=env.choice("PROMOTION_METRIC", PROMOTION_METRICS, "f1_macro"),
                minimum=env.fraction("PROMOTION_MINIMUM", 0.7),
                tolerance=env.fraction("PROMOTION_TOLERANCE", 0.0),
            ),
            timeout_seconds=env.timeout_seconds(),
            max_training_rows=env.integer(
                "MAX_TRAINING_ROWS", DEFAULT_MAX_TRAINING_ROWS, low=100, high=100_000_000
            ),
            model_serving_topic=env.optional("MODEL_SERVING_TOPIC", ""),
            model_events_topic=env.optional("MODEL_EVENTS_TOPIC", ""),
            serving_runtime=env.choice("PREDICT_RUNTIME", PREDICT_RUNTIMES, "onnx"),
        )


@dataclass(frozen=True)
class ServingSettings:
    project: str
    data_bucket: str
    max_batch: int = 1000
    refresh_seconds: int = 30
    runtime: str = "onnx"  # the compiled artifact when its manifest verifies it, or joblib

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServingSettings:
        env = _Environment(environ)
        return cls(
            project=env.required("GOOGLE_CLOUD_PROJECT"),
            data_bucket=env.required("DATA_BUCKET"),
            max_batch=env.integer("PREDICT_MAX_BATCH", 1000, low=1, high=100_000),
            refresh_seconds=env.integer("MODEL_REFRESH_SECONDS", 30, low=0, high=3600),
            runtime=env.choice("PREDICT_RUNTIME", PREDICT_RUNTIMES, "onnx"),
        )


@dataclass(frozen=True)
class ScoringSettings:
    project: str
    data_bucket: str
    score_prefix: str = "score/"
    id_column: str = ""  # empty: no column is passed through
    target_column: str = "target"  # a scoring file may carry it; it is ignored
    runtime: str = "onnx"
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    model_events_topic: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ScoringSettings:
        env = _Environment(environ)
        prefix = env.optional("SCORE_PREFIX", "score/")
        if not prefix.endswith("/"):
            raise ConfigurationError(
                f"environment variable SCORE_PREFIX={prefix!r} must end with '/'"
            )
        return cls(
            project=env.required("GOOGLE_CLOUD_PROJECT"),
            data_bucket=env.required("DATA_BUCKET"),
            score_prefix=prefix,
            id_column=env.optional("ID_COLUMN", ""),
            target_column=env.optional("TARGET_COLUMN", "target"),
            runtime=env.choice("PREDICT_RUNTIME", PREDICT_RUNTIMES, "onnx"),
            timeout_seconds=env.timeout_seconds(),
            model_events_topic=env.required("MODEL_EVENTS_TOPIC"),
        )


@dataclass(frozen=True)
class TriggerSettings:
    project: str
    data_bucket: str
    workflow_name: str
    workflow_location: str
    workflows_api_endpoint: str = ""  # local stack only
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TriggerSettings:
        env = _Environment(environ)
        return cls(
            project=env.required("GOOGLE_CLOUD_PROJECT"),
            data_bucket=env.required("DATA_BUCKET"),
            workflow_name=env.required("WORKFLOW_NAME"),
            workflow_location=env.required("WORKFLOW_LOCATION"),
            workflows_api_endpoint=_grpc_target(env.optional("WORKFLOWS_API_ENDPOINT", "")),
            timeout_seconds=env.timeout_seconds(),
        )

    @property
    def workflow_path(self) -> str:
        return (
            f"projects/{self.project}/locations/{self.workflow_location}"
            f"/workflows/{self.workflow_name}"
        )


def _grpc_target(endpoint: str) -> str:
    """Empty (Google's endpoint) or ``host:port``, the form a gRPC channel dials."""
    if not endpoint:
        return endpoint
    if "://" in endpoint:
        raise ConfigurationError(
            f"environment variable WORKFLOWS_API_ENDPOINT={endpoint!r} has a scheme; "
            "pass the gRPC target of the Executions API as host:port, e.g. 127.0.0.1:8081"
        )
    host, _, port = endpoint.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigurationError(
            f"environment variable WORKFLOWS_API_ENDPOINT={endpoint!r} is not host:port "
            "(the gRPC target of the Executions API, e.g. 127.0.0.1:8081)"
        )
    return endpoint


def topic_path(project: str, topic: str) -> str:
    """Accepts a short topic name or a full ``projects/<p>/topics/<t>`` path."""
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"
