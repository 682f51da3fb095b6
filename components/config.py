"""Typed, validated stack configuration.

This is the only module that reads ``pulumi.Config`` (``load_stack_config``, and
``load_public_predict`` for the policy pack). Every key is declared, with its type and
default, in Pulumi.yaml's ``config:`` block (components/config_schema.py). The same
validation serves the local stack, which reads a stack file (``Pulumi.<stack>.yaml``)
through ``load_stack_file``, so a value that would fail ``pulumi up`` fails locally too.

Every invalid value raises ``ConfigError`` naming the key and how to fix it.
"""

from __future__ import annotations

import difflib
import importlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

from pipeline_core import contract

PROJECT_NAMESPACE = "ml-pipeline"

T = TypeVar("T")

Orchestration = Literal["workflow", "events"]
ORCHESTRATIONS: tuple[Orchestration, ...] = ("workflow", "events")
FUNCTION_KEYS: tuple[str, ...] = (
    "process_data",
    "train_model",
    "predict",
    "trigger_workflow",
    "score_data",
)
# Cloud Functions 2nd gen (Cloud Run) memory values that the service accepts.
ALLOWED_MEMORY: tuple[str, ...] = (
    "128Mi",
    "256Mi",
    "512Mi",
    "1Gi",
    "2Gi",
    "4Gi",
    "8Gi",
    "16Gi",
    "32Gi",
)
# The scikit-learn estimator behind each model type (pipeline_core.training builds the
# same ones; tests/infra checks the two agree), imported only to check hyperparameter
# names, so that a misspelt one fails `pulumi up` instead of every training run.
ESTIMATORS: Mapping[str, tuple[str, str]] = {
    "random_forest": ("sklearn.ensemble", "RandomForestClassifier"),
    "logistic_regression": ("sklearn.linear_model", "LogisticRegression"),
    "gradient_boosting": ("sklearn.ensemble", "GradientBoostingClassifier"),
}
# Workflows call-log levels accepted by the service.
CALL_LOG_LEVELS: tuple[str, ...] = ("LOG_ALL_CALLS", "LOG_ERRORS_ONLY", "LOG_NONE")

_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_NAME_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,18}[a-z0-9]$")
# One or more object-name segments, ending with a slash: "score/", "batch/incoming/".
_PREFIX = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*/)+$")
# Columns every predictions file has; an id column passed through may not take a name.
PREDICTION_COLUMNS = ("row", "label", "confidence", "model_version", "reason")
PROBABILITY_COLUMN_PREFIX = "probability_"
# One Google Cloud region (us-central1, europe-west4, northamerica-northeast1), never a
# multi-region (us, eu) or global: functions, the workflow and the Eventarc Pub/Sub
# triggers all live in it, and Pub/Sub triggers exist in single regions only.
_SINGLE_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_MEMBER = re.compile(
    r"^(user|serviceAccount|group|domain):[^\s]+$|^allUsers$|^allAuthenticatedUsers$"
)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CHANNEL_NAME = re.compile(r"^projects/[^/\s]+/notificationChannels/[0-9]+$")
_CHANNEL_ID = re.compile(r"^[0-9]+$")


class ConfigError(ValueError):
    """A stack configuration value is missing or invalid."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        self.key = key
        super().__init__(f"config '{key}': {problem}. Fix: {fix}")


@dataclass(frozen=True)
class FunctionSettings:
    """Runtime sizing of one Cloud Function."""

    memory: str = "512Mi"
    timeout_seconds: int = 300
    min_instances: int = 0
    max_instances: int = 3


@dataclass(frozen=True)
class MonitoringSettings:
    """What ``components/monitoring.py`` creates; ``enabled=False`` creates nothing."""

    enabled: bool = True
    notification_emails: tuple[str, ...] = ()
    # Full names (projects/<project>/notificationChannels/<id>) of existing channels.
    notification_channels: tuple[str, ...] = ()
    dead_letter_alert: bool = True
    workflow_failure_alert: bool = True  # workflow mode only: events mode has no workflow
    predict_5xx_alert: bool = True
    predict_5xx_ratio: float = 0.05
    predict_latency_alert: bool = True
    predict_latency_p95_ms: int = 2000
    # How long a threshold must stay crossed before an incident opens (ratio, latency).
    alert_duration_seconds: int = 300
    error_log_alerts: bool = True
    # At most one notification per this period for each function's error-log alert.
    error_log_notify_every_seconds: int = 300
    log_metrics: bool = True
    dashboard: bool = True

    @property
    def alerts(self) -> bool:
        """Whether any alert policy is switched on (channels exist only for alerts)."""
        return self.enabled and (
            self.dead_letter_alert
            or self.workflow_failure_alert
            or self.predict_5xx_alert
            or self.predict_latency_alert
            or self.error_log_alerts
        )


_DEFAULT_FUNCTIONS: dict[str, FunctionSettings] = {
    "process_data": FunctionSettings(
        memory="1Gi", timeout_seconds=contract.DEFAULT_TIMEOUT_SECONDS
    ),
    "train_model": FunctionSettings(memory="2Gi", timeout_seconds=contract.DEFAULT_TIMEOUT_SECONDS),
    "predict": FunctionSettings(memory="1Gi", timeout_seconds=60, max_instances=5),
    "trigger_workflow": FunctionSettings(memory="256Mi", timeout_seconds=60),
    # Memory holds a few blocks of rows, whatever the file's size; 4 GiB is the size
    # that comes with 2 vCPUs (1 GiB has 0.583), and the model's work is shared out
    # between the CPUs (docs/FUNCTIONS.md, "score_data"): ~3x the rows per second for
    # about the same vCPU-seconds a file.
    "score_data": FunctionSettings(memory="4Gi", timeout_seconds=contract.DEFAULT_TIMEOUT_SECONDS),
}


@dataclass(frozen=True)
class StackConfig:
    """Everything the program and the local stack need to know about one stack."""

    project: str
    region: str
    stack: str
    bucket_location: str
    name_prefix: str
    orchestration: Orchestration = "workflow"
    target_column: str = contract.DEFAULT_TARGET_COLUMN
    feature_columns: tuple[str, ...] = ()
    model_type: contract.ModelType = contract.DEFAULT_MODEL_TYPE
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    promotion: contract.PromotionPolicy = field(default_factory=contract.PromotionPolicy)
    min_rows: int = contract.DEFAULT_MIN_ROWS
    max_training_rows: int = contract.DEFAULT_MAX_TRAINING_ROWS
    functions: Mapping[str, FunctionSettings] = field(
        default_factory=lambda: dict(_DEFAULT_FUNCTIONS)
    )
    predict_max_batch: int = contract.DEFAULT_PREDICT_MAX_BATCH
    model_refresh_seconds: int = contract.DEFAULT_MODEL_REFRESH_SECONDS
    predict_runtime: contract.PredictRuntime = contract.DEFAULT_PREDICT_RUNTIME
    public_predict: bool = False
    predict_invokers: tuple[str, ...] = ()
    deployer: str | None = None
    dead_letter_max_attempts: int = 5
    workflow_deletion_protection: bool = True
    workflow_call_log_level: str = "LOG_ERRORS_ONLY"
    force_destroy: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    score_prefix: str = contract.DEFAULT_SCORE_PREFIX
    id_column: str | None = None

    @property
    def trigger_region(self) -> str:
        """Every Eventarc trigger of this stack is a Pub/Sub trigger, which exists in
        single regions only and sits with the function it invokes (pitfall 4); only a
        Cloud Storage trigger would follow the bucket's (possibly multi-region) location.
        """
        return self.region

    def function(self, key: str) -> FunctionSettings:
        return self.functions[key]

    @classmethod
    def from_values(
        cls, *, project: str | None, region: str | None, stack: str, values: Mapping[str, Any]
    ) -> StackConfig:
        """Validate raw config values (camelCase keys, without the namespace)."""
        _reject_unknown(values, _KEYS)
        if not project:
            raise ConfigError(
                "gcp:project", "is not set", "pulumi config set gcp:project MY_PROJECT"
            )
        if not region:
            raise ConfigError(
                "gcp:region", "is not set", "pulumi config set gcp:region us-central1"
            )
        if not _SINGLE_REGION.match(region):
            raise ConfigError(
                "gcp:region",
                f"'{region}' is not a single region (functions, the workflow and the "
                "Eventarc Pub/Sub triggers need one)",
                "use a region such as us-central1 or europe-west1; a multi-region "
                "(US, EU, ASIA) belongs in ml-pipeline:bucketLocation",
            )
        reader = _Reader(values)
        # Empty means derived (Pulumi.yaml declares "" as the default of these keys).
        bucket_location = reader.string("bucketLocation", "") or region.upper()
        if bucket_location.lower() != region.lower() and bucket_location.upper() not in (
            "US",
            "EU",
            "ASIA",
        ):
            raise ConfigError(
                f"{PROJECT_NAMESPACE}:bucketLocation",
                f"'{bucket_location}' differs from gcp:region '{region}'",
                "use the region itself or a multi-region (US, EU, ASIA)",
            )
        name_prefix = reader.string("namePrefix", "") or _default_prefix(stack)
        if not _NAME_PREFIX.match(name_prefix):
            raise ConfigError(
                f"{PROJECT_NAMESPACE}:namePrefix",
                f"'{name_prefix}' is not 2-20 lowercase letters, digits or dashes",
                "start with a letter, end with a letter or digit, e.g. 'mlp-dev'",
            )
        model_type: contract.ModelType = reader.choice(
            "modelType", contract.MODEL_TYPES, contract.DEFAULT_MODEL_TYPE
        )
        functions = _functions(reader)
        config = cls(
            project=project,
            region=region,
            stack=stack,
            bucket_location=bucket_location,
            name_prefix=name_prefix,
            orchestration=reader.choice("orchestration", ORCHESTRATIONS, "workflow"),
            target_column=reader.nonempty_string("targetColumn", contract.DEFAULT_TARGET_COLUMN),
            feature_columns=reader.string_list("featureColumns"),
            model_type=model_type,
            hyperparameters=_hyperparameters(reader, model_type),
            promotion=_promotion(reader),
            min_rows=reader.within("minRows", contract.DEFAULT_MIN_ROWS, contract.MIN_ROWS_BOUNDS),
            max_training_rows=reader.within(
                "maxTrainingRows",
                contract.DEFAULT_MAX_TRAINING_ROWS,
                contract.MAX_TRAINING_ROWS_BOUNDS,
            ),
            functions=functions,
            predict_max_batch=reader.integer(
                "predictMaxBatch",
                contract.DEFAULT_PREDICT_MAX_BATCH,
                low=contract.SMOKE_ROWS,
                high=contract.PREDICT_MAX_BATCH_LIMIT,
            ),
            model_refresh_seconds=reader.within(
                "modelRefreshSeconds",
                contract.DEFAULT_MODEL_REFRESH_SECONDS,
                contract.MODEL_REFRESH_SECONDS_BOUNDS,
            ),
            predict_runtime=reader.choice(
                "predictRuntime", contract.PREDICT_RUNTIMES, contract.DEFAULT_PREDICT_RUNTIME
            ),
            public_predict=reader.boolean("publicPredict", False),
            predict_invokers=_members(reader),
            deployer=_deployer(reader),
            dead_letter_max_attempts=reader.integer("deadLetterMaxAttempts", 5, low=5, high=100),
            workflow_deletion_protection=reader.boolean("workflowDeletionProtection", True),
            workflow_call_log_level=reader.choice(
                "workflowCallLogLevel", CALL_LOG_LEVELS, "LOG_ERRORS_ONLY"
            ),
            force_destroy=reader.boolean("forceDestroy", False),
            labels=_labels(reader),
            monitoring=_monitoring(reader, project, functions["predict"]),
            score_prefix=_score_prefix(reader),
            id_column=_id_column(reader),
        )
        if config.target_column in config.feature_columns:
            raise ConfigError(
                f"{PROJECT_NAMESPACE}:featureColumns",
                f"lists the target column '{config.target_column}'",
                "remove the target from the feature list",
            )
        if config.id_column is not None and config.id_column in (
            config.target_column,
            *config.feature_columns,
        ):
            raise ConfigError(
                f"{PROJECT_NAMESPACE}:idColumn",
                f"'{config.id_column}' is the target or a feature column",
                "name the column that identifies a row and is not fed to the model",
            )
        return config


_KEYS = (
    "bucketLocation",
    "namePrefix",
    "orchestration",
    "targetColumn",
    "featureColumns",
    "modelType",
    "hyperparameters",
    "promotion",
    "minRows",
    "maxTrainingRows",
    "functions",
    "predictMaxBatch",
    "modelRefreshSeconds",
    "predictRuntime",
    "publicPredict",
    "predictInvokers",
    "deployer",
    "deadLetterMaxAttempts",
    "workflowDeletionProtection",
    "workflowCallLogLevel",
    "forceDestroy",
    "labels",
    "monitoring",
    "scorePrefix",
    "idColumn",
)

_STRUCTURED_KEYS = frozenset(
    {
        "featureColumns",
        "hyperparameters",
        "promotion",
        "functions",
        "predictInvokers",
        "labels",
        "monitoring",
    }
)


def _default_prefix(stack: str) -> str:
    cleaned = re.sub(r"[^a-z0-9-]+", "-", f"mlp-{stack}".lower()).strip("-")
    return cleaned[:20].rstrip("-")


def _full_key(key: str, parent: str = "") -> str:
    """``key`` as the user wrote it: in the stack's namespace, or inside the map ``parent``
    (itself a full key)."""
    return f"{parent}.{key}" if parent else f"{PROJECT_NAMESPACE}:{key}"


class _Reader:
    """Reads one raw value at a time, raising ConfigError with the full key; ``parent``
    (a full key) reads the values of that nested map."""

    def __init__(self, values: Mapping[str, Any], parent: str = "") -> None:
        self._values = values
        self._parent = parent

    def raw(self, key: str) -> Any:
        return self._values.get(key)

    def full(self, key: str) -> str:
        return _full_key(key, self._parent)

    def parsed(self, key: str, default: Any, parse: Callable[[str, Any], T]) -> T:
        """The value (or ``default``) as ``parse(full key, value)`` checks it."""
        return parse(self.full(key), self._values.get(key, default))

    def string(self, key: str, default: str) -> str:
        value = self._values.get(key, default)
        if not isinstance(value, str):
            raise ConfigError(self.full(key), f"must be a string, got {value!r}", "quote it")
        return value

    def nonempty_string(self, key: str, default: str) -> str:
        value = self.string(key, default)
        if not value.strip():
            raise ConfigError(self.full(key), "is empty", "set a column name")
        return value

    def choice(self, key: str, options: tuple[Any, ...], default: Any) -> Any:
        value = self._values.get(key, default)
        if value not in options:
            raise ConfigError(
                self.full(key), f"'{value}' is not allowed", f"use one of: {', '.join(options)}"
            )
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return as_bool(self.full(key), self._values.get(key, default))

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        return as_int(self.full(key), self._values.get(key, default), low=low, high=high)

    def within(self, key: str, default: int, bounds: contract.Bounds) -> int:
        return self.integer(key, default, low=bounds.low, high=bounds.high)

    def string_list(self, key: str) -> tuple[str, ...]:
        value = self._values.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise ConfigError(
                self.full(key),
                f"must be a list of non-empty strings, got {value!r}",
                "use a YAML list",
            )
        if len(set(value)) != len(value):
            raise ConfigError(self.full(key), "has duplicates", "list each column once")
        return tuple(value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._values.get(key, {})
        if not isinstance(value, Mapping):
            raise ConfigError(self.full(key), f"must be a map, got {value!r}", "use a YAML map")
        return dict(value)


def as_bool(key: str, value: Any) -> bool:
    # pulumi.Config returns strings for plain (non-object) values.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(key, f"must be true or false, got {value!r}", "use true or false")


def as_int(key: str, value: Any, *, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a whole number, got {value!r}", f"use {low}..{high}")
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ConfigError(
                key, f"must be a whole number, got {value!r}", f"use {low}..{high}"
            ) from None
    if not isinstance(value, int):
        raise ConfigError(key, f"must be a whole number, got {value!r}", f"use {low}..{high}")
    if not low <= value <= high:
        raise ConfigError(key, f"{value} is out of range", f"use a value from {low} to {high}")
    return value


def as_fraction(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a number, got {value!r}", "use a number from 0 to 1")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            key, f"must be a number, got {value!r}", "use a number from 0 to 1"
        ) from None
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ConfigError(key, f"{value!r} is out of range", "use a number from 0 to 1")
    return number


def _reject_unknown(
    values: Mapping[str, Any],
    allowed: Iterable[str],
    parent: str | None = None,
    what: str = "a known key",
) -> None:
    """Refuse keys outside ``allowed``; ``parent`` is the full key of a nested map. A
    misspelling gets the key it resembles; anything else the list of allowed keys."""
    choices = sorted(allowed)
    unknown = sorted(set(values) - set(choices), key=str)
    if unknown:
        suggestion = did_you_mean(str(unknown[0]), choices)
        raise ConfigError(
            _full_key(str(unknown[0]), parent or ""),
            f"is not {what}",
            f"did you mean '{suggestion}'? Otherwise remove it"
            if suggestion
            else f"remove it or use one of: {', '.join(choices)}",
        )


def did_you_mean(word: str, options: Iterable[str]) -> str | None:
    """The option closest to a misspelt ``word``, ignoring case, if one is close enough:
    difflib's similarity ratio of 0.75 or more (its default 0.6 offers 'errorLogAlerts'
    for 'alerts', where the list of keys serves better)."""
    by_folded = {option.casefold(): option for option in options}
    matches = difflib.get_close_matches(word.casefold(), list(by_folded), n=1, cutoff=0.75)
    return by_folded[matches[0]] if matches else None


def hyperparameter_names(model_type: str) -> frozenset[str]:
    """The parameters of the model type's scikit-learn estimator a stack may set."""
    module, name = ESTIMATORS[model_type]
    estimator = getattr(importlib.import_module(module), name)()
    return frozenset(estimator.get_params()) - contract.FIXED_HYPERPARAMETERS


def _hyperparameters(reader: _Reader, model_type: str) -> dict[str, Any]:
    raw = reader.mapping("hyperparameters")
    key = reader.full("hyperparameters")
    for fixed in sorted(contract.FIXED_HYPERPARAMETERS & set(raw)):
        raise ConfigError(
            f"{key}.{fixed}",
            "is fixed by the pipeline (seed 42) so that training is reproducible",
            "remove it",
        )
    if raw:
        _reject_unknown(
            raw,
            hyperparameter_names(model_type),
            key,
            f"a hyperparameter of {model_type} (modelType)",
        )
    return raw


def _promotion(reader: _Reader) -> contract.PromotionPolicy:
    raw = reader.mapping("promotion")
    key = reader.full("promotion")
    _reject_unknown(raw, ("metric", "minimum", "tolerance"), key)
    fields = _Reader(raw, key)
    return contract.PromotionPolicy(
        metric=fields.choice(
            "metric", contract.PROMOTION_METRICS, contract.DEFAULT_PROMOTION_METRIC
        ),
        minimum=fields.parsed("minimum", contract.DEFAULT_PROMOTION_MINIMUM, as_fraction),
        tolerance=fields.parsed("tolerance", contract.DEFAULT_PROMOTION_TOLERANCE, as_fraction),
    )


def _functions(reader: _Reader) -> dict[str, FunctionSettings]:
    raw = reader.mapping("functions")
    key = reader.full("functions")
    _reject_unknown(raw, FUNCTION_KEYS, key, "a function")
    result = dict(_DEFAULT_FUNCTIONS)
    for name, overrides in raw.items():
        where = f"{key}.{name}"
        if not isinstance(overrides, Mapping):
            raise ConfigError(
                where, "must be a map", "set memory, timeoutSeconds, minInstances, maxInstances"
            )
        _reject_unknown(
            overrides,
            ("memory", "timeoutSeconds", "minInstances", "maxInstances"),
            where,
        )
        base = result[name]
        fields = _Reader(overrides, where)
        settings = FunctionSettings(
            memory=fields.choice("memory", ALLOWED_MEMORY, base.memory),
            timeout_seconds=fields.integer(
                "timeoutSeconds", base.timeout_seconds, low=1, high=contract.MAX_TIMEOUT_SECONDS
            ),
            min_instances=fields.integer("minInstances", base.min_instances, low=0, high=100),
            max_instances=fields.integer("maxInstances", base.max_instances, low=1, high=1000),
        )
        if settings.min_instances > settings.max_instances:
            raise ConfigError(
                f"{where}.minInstances",
                f"{settings.min_instances} exceeds maxInstances {settings.max_instances}",
                "lower minInstances or raise maxInstances",
            )
        result[name] = settings
    return result


def _members(reader: _Reader) -> tuple[str, ...]:
    members = reader.string_list("predictInvokers")
    for member in members:
        if not _MEMBER.match(member):
            raise ConfigError(
                reader.full("predictInvokers"),
                f"'{member}' is not an IAM member",
                "use user:EMAIL, serviceAccount:EMAIL, group:EMAIL or domain:DOMAIN",
            )
        if member in ("allUsers", "allAuthenticatedUsers"):
            raise ConfigError(
                reader.full("predictInvokers"),
                f"'{member}' would make the endpoint public",
                "set publicPredict: true instead, so the choice is explicit",
            )
    return members


def _deployer(reader: _Reader) -> str | None:
    value = reader.raw("deployer")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _MEMBER.match(value) or value.startswith("all"):
        raise ConfigError(
            reader.full("deployer"),
            f"{value!r} is not a user or service account member",
            "use user:EMAIL or serviceAccount:EMAIL (whoever runs pulumi up), or unset it "
            "to use the credentials' own identity",
        )
    return value


def _score_prefix(reader: _Reader) -> str:
    prefix = reader.string("scorePrefix", contract.DEFAULT_SCORE_PREFIX)
    key = reader.full("scorePrefix")
    if not _PREFIX.match(prefix):
        raise ConfigError(
            key,
            f"'{prefix}' is not an object-name prefix ending with '/'",
            "use letters, digits, '.', '_' or '-' in each part, e.g. 'score/'",
        )
    for fixed in contract.FIXED_PREFIXES:
        if prefix.startswith(fixed) or fixed.startswith(prefix):
            raise ConfigError(
                key,
                f"'{prefix}' overlaps the pipeline's own prefix '{fixed}' (uploads there "
                "would be read as that prefix's objects too)",
                f"use a prefix outside {', '.join(contract.FIXED_PREFIXES)}, e.g. 'score/'",
            )
    return prefix


def _id_column(reader: _Reader) -> str | None:
    value = reader.raw("idColumn")
    if value is None or value == "":
        return None
    key = reader.full("idColumn")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a column name, got {value!r}", "quote it, or unset it")
    if value in PREDICTION_COLUMNS or value.startswith(PROBABILITY_COLUMN_PREFIX):
        raise ConfigError(
            key,
            f"'{value}' is the name of a column the predictions file already has",
            f"rename the column: not {', '.join(PREDICTION_COLUMNS)} or "
            f"{PROBABILITY_COLUMN_PREFIX}*",
        )
    return value


def _labels(reader: _Reader) -> dict[str, str]:
    labels = reader.mapping("labels")
    for label_key, label_value in labels.items():
        if not isinstance(label_key, str) or not _LABEL_KEY.match(label_key):
            raise ConfigError(
                f"{reader.full('labels')}.{label_key}",
                "is not a valid label key",
                "use lowercase letters, digits, '_' or '-', starting with a letter",
            )
        if not isinstance(label_value, str) or not _LABEL_VALUE.match(label_value):
            raise ConfigError(
                f"{reader.full('labels')}.{label_key}",
                f"value {label_value!r} is not a valid label value",
                "use up to 63 lowercase letters, digits, '_' or '-' (quote it in YAML)",
            )
    return {str(k): str(v) for k, v in labels.items()}


_MONITORING_SWITCHES = {
    "enabled": "enabled",
    "deadLetterAlert": "dead_letter_alert",
    "workflowFailureAlert": "workflow_failure_alert",
    "predict5xxAlert": "predict_5xx_alert",
    "predictLatencyAlert": "predict_latency_alert",
    "errorLogAlerts": "error_log_alerts",
    "logMetrics": "log_metrics",
    "dashboard": "dashboard",
}
_MONITORING_KEYS = (
    *_MONITORING_SWITCHES,
    "notificationEmails",
    "notificationChannels",
    "predict5xxRatio",
    "predictLatencyP95Ms",
    "alertDurationSeconds",
    "errorLogNotifyEverySeconds",
)


def _monitoring(reader: _Reader, project: str, predict: FunctionSettings) -> MonitoringSettings:
    raw = reader.mapping("monitoring")
    key = reader.full("monitoring")
    _reject_unknown(raw, _MONITORING_KEYS, key)
    defaults = MonitoringSettings()
    fields = _Reader(raw, key)
    switches = {
        field_name: fields.boolean(name, getattr(defaults, field_name))
        for name, field_name in _MONITORING_SWITCHES.items()
    }
    settings = MonitoringSettings(
        **switches,
        notification_emails=fields.parsed("notificationEmails", [], _emails),
        notification_channels=fields.parsed(
            "notificationChannels", [], partial(_channels, project=project)
        ),
        predict_5xx_ratio=fields.parsed(
            "predict5xxRatio", defaults.predict_5xx_ratio, _open_fraction
        ),
        predict_latency_p95_ms=fields.integer(
            "predictLatencyP95Ms", defaults.predict_latency_p95_ms, low=1, high=3_600_000
        ),
        alert_duration_seconds=fields.parsed(
            "alertDurationSeconds", defaults.alert_duration_seconds, partial(_whole_minutes, low=0)
        ),
        error_log_notify_every_seconds=fields.parsed(
            "errorLogNotifyEverySeconds",
            defaults.error_log_notify_every_seconds,
            partial(_whole_minutes, low=300),
        ),
    )
    timeout_ms = predict.timeout_seconds * 1000
    if settings.predict_latency_alert and settings.predict_latency_p95_ms >= timeout_ms:
        raise ConfigError(
            f"{key}.predictLatencyP95Ms",
            f"{settings.predict_latency_p95_ms} ms is not below predict's timeout "
            f"({reader.full('functions')}.predict.timeoutSeconds = {predict.timeout_seconds} s), "
            "so the alert could never fire",
            f"use a value below {timeout_ms}, or raise predict's timeoutSeconds",
        )
    return settings


def _emails(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(
            key, f"must be a list of email addresses, got {value!r}", "use a YAML list"
        )
    for address in value:
        if not _EMAIL.match(address):
            raise ConfigError(key, f"'{address}' is not an email address", "use name@domain")
    if len(set(value)) != len(value):
        raise ConfigError(key, "has duplicates", "list each address once")
    return tuple(value)


def _channels(key: str, value: Any, project: str) -> tuple[str, ...]:
    """Existing channels, by full name or by the numeric id of a channel in ``project``."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(key, f"must be a list of channel ids, got {value!r}", "use a YAML list")
    names = []
    for given in value:
        channel = (
            f"projects/{project}/notificationChannels/{given}"
            if _CHANNEL_ID.match(given)
            else given
        )
        if not _CHANNEL_NAME.match(channel):
            raise ConfigError(
                key,
                f"'{given}' is not a notification channel id",
                "use projects/PROJECT/notificationChannels/ID or the numeric ID "
                "(gcloud beta monitoring channels list --format='value(name)')",
            )
        names.append(channel)
    if len(set(names)) != len(names):
        raise ConfigError(key, "has duplicates", "list each channel once")
    return tuple(names)


def _open_fraction(key: str, value: Any) -> float:
    """A ratio threshold: 0 would alert on any single error, 1 could never be exceeded."""
    number = as_fraction(key, value)
    if not 0.0 < number < 1.0:
        raise ConfigError(key, f"{value!r} is out of range", "use a number above 0 and below 1")
    return number


def _whole_minutes(key: str, value: Any, *, low: int) -> int:
    """Cloud Monitoring accepts alert durations in whole minutes only."""
    seconds = as_int(key, value, low=low, high=86_400)
    if seconds % 60:
        raise ConfigError(
            key, f"{seconds} is not a whole number of minutes", "use a multiple of 60 seconds"
        )
    return seconds


def load_stack_config() -> StackConfig:
    """Read the current Pulumi stack's configuration (the only pulumi.Config reader)."""
    import pulumi

    gcp = pulumi.Config("gcp")
    ours = pulumi.Config(PROJECT_NAMESPACE)
    values: dict[str, Any] = {}
    for key in _KEYS:
        # The CLI hands the program maps and lists as JSON and scalars as plain text: JSON
        # parsing a scalar such as `events` would fail, so only structured keys are parsed.
        value = ours.get_object(key) if key in _STRUCTURED_KEYS else ours.get(key)
        if value is not None:
            values[key] = value
    return StackConfig.from_values(
        project=gcp.get("project"),
        region=gcp.get("region"),
        stack=pulumi.get_stack(),
        values=values,
    )


def load_public_predict() -> bool:
    """The stack's ``publicPredict`` alone, for the policy pack (policy/pack.py): Pulumi
    hands a pack the stack's config, but the pack's own virtualenv lacks scikit-learn and
    the rest that validating the whole stack imports."""
    import pulumi

    value = pulumi.Config(PROJECT_NAMESPACE).get("publicPredict")
    return as_bool(_full_key("publicPredict"), False if value is None else value)


def load_stack_file(path: Path) -> StackConfig:
    """Read ``Pulumi.<stack>.yaml`` the way ``pulumi up`` would, for the local stack."""
    import yaml

    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(str(path), problem, "pass an existing Pulumi.<stack>.yaml")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(
            str(path), f"is not UTF-8 text (byte {error.start})", "pass a Pulumi.<stack>.yaml"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(str(path), _yaml_problem(error), "fix the YAML syntax") from None
    raw = document.get("config", {}) if isinstance(document, Mapping) else None
    if not isinstance(raw, Mapping):
        raise ConfigError(str(path), "has no 'config' map", "put the keys under 'config:'")
    values: dict[str, Any] = {}
    for full_key, value in raw.items():
        namespace, _, key = str(full_key).partition(":")
        if namespace == PROJECT_NAMESPACE:
            values[key] = value
    stack = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    return StackConfig.from_values(
        project=raw.get("gcp:project"), region=raw.get("gcp:region"), stack=stack, values=values
    )


def _yaml_problem(error: Exception) -> str:
    """One line: PyYAML's own message spans several, with a caret drawing."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is None or problem is None:
        return "is not valid YAML (" + " ".join(str(error).split()) + ")"
    return f"is not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
