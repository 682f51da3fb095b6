"""Typed settings read from the environment the Pulumi components (and devstack) set.

The variable names, defaults and bounds are the contract (``pipeline_core.contract``),
which the Pulumi components and devstack read too. A missing or invalid variable raises
``ConfigurationError`` naming it and the expected value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from pipeline_core import contract
from pipeline_core.contract import Env, PromotionPolicy
from pipeline_core.errors import ConfigurationError


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

    def within(self, name: str, default: int, bounds: contract.Bounds) -> int:
        return self.integer(name, default, low=bounds.low, high=bounds.high)

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
        return self.integer(
            Env.FUNCTION_TIMEOUT_SECONDS,
            contract.DEFAULT_TIMEOUT_SECONDS,
            low=1,
            high=contract.MAX_TIMEOUT_SECONDS,
        )

    def project(self) -> str:
        return self.required(Env.PROJECT)

    def data_bucket(self) -> str:
        return self.required(Env.DATA_BUCKET)

    def target_column(self) -> str:
        return self.optional(Env.TARGET_COLUMN, contract.DEFAULT_TARGET_COLUMN)

    def predict_runtime(self) -> str:
        return self.choice(
            Env.PREDICT_RUNTIME, contract.PREDICT_RUNTIMES, contract.DEFAULT_PREDICT_RUNTIME
        )

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
class FunctionSettings:
    """What every function reads: its project and the data bucket. Each function's
    settings add their own fields and read them in ``_fields``."""

    project: str
    data_bucket: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        env = _Environment(environ)
        return cls(project=env.project(), data_bucket=env.data_bucket(), **cls._fields(env))

    @classmethod
    def _fields(cls, env: _Environment) -> dict[str, Any]:
        """This function's own settings, by field name."""
        return {}


@dataclass(frozen=True)
class ProcessingSettings(FunctionSettings):
    target_column: str = contract.DEFAULT_TARGET_COLUMN
    feature_columns: tuple[str, ...] = ()  # empty: every column but the target
    min_rows: int = contract.DEFAULT_MIN_ROWS
    chunk_rows: int = contract.DEFAULT_CHUNK_ROWS
    timeout_seconds: int = contract.DEFAULT_TIMEOUT_SECONDS
    model_training_topic: str = ""  # events mode only
    model_events_topic: str = ""  # events mode only

    @classmethod
    def _fields(cls, env: _Environment) -> dict[str, Any]:
        features = env.json_value(Env.FEATURE_COLUMNS, "[]")
        if not isinstance(features, list) or not all(
            isinstance(name, str) and name for name in features
        ):
            raise ConfigurationError(
                f"environment variable {Env.FEATURE_COLUMNS} must be a JSON list of column names"
            )
        target = env.target_column()
        if target in features:
            raise ConfigurationError(
                f"environment variable {Env.FEATURE_COLUMNS} lists the target column {target!r}"
            )
        return dict(
            target_column=target,
            feature_columns=tuple(features),
            min_rows=env.within(Env.MIN_ROWS, contract.DEFAULT_MIN_ROWS, contract.MIN_ROWS_BOUNDS),
            timeout_seconds=env.timeout_seconds(),
            model_training_topic=env.optional(Env.MODEL_TRAINING_TOPIC, ""),
            model_events_topic=env.optional(Env.MODEL_EVENTS_TOPIC, ""),
        )


@dataclass(frozen=True)
class TrainingSettings(FunctionSettings):
    target_column: str = contract.DEFAULT_TARGET_COLUMN
    model_type: str = contract.DEFAULT_MODEL_TYPE
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    promotion: PromotionPolicy = field(default_factory=PromotionPolicy)
    timeout_seconds: int = contract.DEFAULT_TIMEOUT_SECONDS
    max_training_rows: int = contract.DEFAULT_MAX_TRAINING_ROWS
    model_serving_topic: str = ""  # events mode only
    model_events_topic: str = ""  # events mode only
    # Events mode smokes the candidate in process, with the runtime predict serves it with.
    serving_runtime: str = contract.DEFAULT_PREDICT_RUNTIME

    @classmethod
    def _fields(cls, env: _Environment) -> dict[str, Any]:
        hyperparameters = env.json_value(Env.MODEL_HYPERPARAMETERS, "{}")
        if not isinstance(hyperparameters, dict):
            raise ConfigurationError(
                f"environment variable {Env.MODEL_HYPERPARAMETERS} must be a JSON object"
            )
        return dict(
            target_column=env.target_column(),
            model_type=env.choice(
                Env.MODEL_TYPE, contract.MODEL_TYPES, contract.DEFAULT_MODEL_TYPE
            ),
            hyperparameters=hyperparameters,
            promotion=PromotionPolicy(
                metric=env.choice(
                    Env.PROMOTION_METRIC,
                    contract.PROMOTION_METRICS,
                    contract.DEFAULT_PROMOTION_METRIC,
                ),
                minimum=env.fraction(Env.PROMOTION_MINIMUM, contract.DEFAULT_PROMOTION_MINIMUM),
                tolerance=env.fraction(
                    Env.PROMOTION_TOLERANCE, contract.DEFAULT_PROMOTION_TOLERANCE
                ),
            ),
            timeout_seconds=env.timeout_seconds(),
            max_training_rows=env.within(
                Env.MAX_TRAINING_ROWS,
                contract.DEFAULT_MAX_TRAINING_ROWS,
                contract.MAX_TRAINING_ROWS_BOUNDS,
            ),
            model_serving_topic=env.optional(Env.MODEL_SERVING_TOPIC, ""),
            model_events_topic=env.optional(Env.MODEL_EVENTS_TOPIC, ""),
            serving_runtime=env.predict_runtime(),
        )


@dataclass(frozen=True)
class ServingSettings(FunctionSettings):
    max_batch: int = contract.DEFAULT_PREDICT_MAX_BATCH
    refresh_seconds: int = contract.DEFAULT_MODEL_REFRESH_SECONDS
    runtime: str = contract.DEFAULT_PREDICT_RUNTIME

    @classmethod
    def _fields(cls, env: _Environment) -> dict[str, Any]:
        return dict(
            max_batch=env.integer(
                Env.PREDICT_MAX_BATCH,
                contract.DEFAULT_PREDICT_MAX_BATCH,
                low=1,
                high=contract.PREDICT_MAX_BATCH_LIMIT,
            ),
            refresh_seconds=env.within(
                Env.MODEL_REFRESH_SECONDS,
                contract.DEFAULT_MODEL_REFRESH_SECONDS,
                contract.MODEL_REFRESH_SECONDS_BOUNDS,
            ),
            runtime=env.predict_runtime(),
        )


@dataclass(frozen=True)
class ScoringSettings(FunctionSettings):
    score_prefix: str = contract.DEFAULT_SCORE_PREFIX
    id_column: str = ""  # empty: no column is passed through
    target_column: str = contract.DEFAULT_TARGET_COLUMN  # a scoring file may carry it; ignored
    runtime: str = contract.DEFAULT_PREDICT_RUNTIME
    timeout_seconds: int = contract.DEFAULT_TIMEOUT_SECONDS
    model_events_topic: str = ""

    @classmethod
    def _fields(cls, env: _Environment) -> dict[str, Any]:
        prefix = env.optional(Env.SCORE_PREFIX, contract.DEFAULT_SCORE_PREFIX)
        if not prefix.endswith("/"):
            raise ConfigurationError(
                f"environment variable {Env.SCORE_PREFIX}={prefix!r} must end with '/'"
            )
        return dict(
            score_prefix=prefix,
            id_column=env.optional(Env.ID_COLUMN, ""),
            target_column=env.target_column(),
            runtime=env.predict_runtime(),
            timeout_seconds=env.timeout_seconds(),
            model_events_topic=env.required(Env.MODEL_EVENTS_TOPIC),
        )


@dataclass(frozen=True)
class TriggerSettings(FunctionSettings):
    workflow_name: str
    workflow_location: str
    workflows_api_endpoint: str = ""  # local stack only
    timeout_seconds: int = contract.DEFAULT_TIMEOUT_SECONDS

    @classmethod
    def _fields(cls, env: _Environment) -> dict[str, Any]:
        return dict(
            workflow_name=env.required(Env.WORKFLOW_NAME),
            workflow_location=env.required(Env.WORKFLOW_LOCATION),
            workflows_api_endpoint=_grpc_target(env.optional(Env.WORKFLOWS_API_ENDPOINT, "")),
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
            f"environment variable {Env.WORKFLOWS_API_ENDPOINT}={endpoint!r} has a scheme; "
            "pass the gRPC target of the Executions API as host:port, e.g. 127.0.0.1:8081"
        )
    host, _, port = endpoint.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigurationError(
            f"environment variable {Env.WORKFLOWS_API_ENDPOINT}={endpoint!r} is not host:port "
            "(the gRPC target of the Executions API, e.g. 127.0.0.1:8081)"
        )
    return endpoint


def topic_path(project: str, topic: str) -> str:
    """Accepts a short topic name or a full ``projects/<p>/topics/<t>`` path."""
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"
