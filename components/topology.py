"""The pipeline as plain data: functions, topics, deliveries, workflow and environment.

Both the Pulumi components and the local stack (``devstack``) read this module, so the
cloud wiring and the local wiring cannot drift apart. Nothing here imports Pulumi. The
bucket layout, environment names and log events are the functions' contract: they are
imported from ``pipeline_core.contract`` wherever they are used, never named here again.

How events reach functions:

* ``eventarc`` deliveries become a Cloud Functions event trigger in the cloud (its own
  trigger service account, retry policy; every one is a Pub/Sub trigger, so it sits in
  the functions' single region, never the bucket's multi-region: pitfall 4). Eventarc's
  managed subscription cannot carry a dead-letter policy (pitfall 9), so these are used
  where retrying is the whole story.
* ``push`` deliveries are explicit Pub/Sub push subscriptions with OIDC and a dead-letter
  policy. They push to ``path`` on the function URL; for CloudEvent functions the path
  ``/projects/<project>/topics/<topic>`` lets functions-framework turn the raw push into
  a ``google.cloud.pubsub.topic.v1.messagePublished`` CloudEvent, in the cloud and
  locally alike.

Locally both kinds become emulator push subscriptions; only ``push`` ones carry the
dead-letter policy, exactly as in the cloud.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Literal, TypeVar

from components.config import Orchestration, StackConfig
from pipeline_core.contract import (
    DEFAULT_SCORE_PREFIX,
    RAW_PREFIX,
    STREAMING_ALLOCATOR,
    Env,
    LogEvent,
)

Signature = Literal["http", "cloudevent"]
Mechanism = Literal["eventarc", "push"]

# Run summaries: the topic every run's outcome is published to, and the pull
# subscription that keeps them for people to read (components/messaging.py).
SUMMARY_TOPIC = "model_events"
SUMMARY_SUBSCRIPTION_SUFFIX = "run-summaries"
# Messages that kept failing: the dead-letter topic and the subscription that keeps them.
DEAD_LETTER_TOPIC = "dead_letter"
DEAD_LETTER_SUBSCRIPTION_SUFFIX = "dead-letter-hold"


# The stage (FunctionSpec.settings_key) whose functions write each event: in either
# orchestration mode the training stage promotes and the processing stage rejects.
LOG_EVENT_STAGES: Mapping[str, str] = {
    LogEvent.MODEL_PROMOTED: "train_model",
    LogEvent.UPLOAD_REJECTED: "process_data",
}


class WorkflowEnv:
    """User environment variables of the Workflows definition (``sys.get_env``)."""

    PROCESS_DATA_URL = "PROCESS_DATA_URL"
    TRAIN_MODEL_URL = "TRAIN_MODEL_URL"
    PREDICT_URL = "PREDICT_URL"
    MODEL_EVENTS_TOPIC = "MODEL_EVENTS_TOPIC"


@dataclass(frozen=True)
class TopicSpec:
    key: str
    suffix: str
    purpose: str


@dataclass(frozen=True)
class FunctionSpec:
    key: str  # resource key, local service name and its entry point in function_src/main.py
    _: KW_ONLY
    signature: Signature
    workload: str  # key of the runtime service account (see WORKLOADS)
    env: tuple[str, ...]  # Env names it receives
    publishes_to: tuple[str, ...] = ()  # topic keys it publishes to
    # The stage it runs, whose FunctionSettings it takes (StackConfig.functions): its own
    # key but for the events mode's variants (process_data_event runs process_data).
    settings_key: str = ""

    def __post_init__(self) -> None:
        if not self.settings_key:
            object.__setattr__(self, "settings_key", self.key)

    @property
    def entry_point(self) -> str:
        """The attribute of function_src/main.py the function runs."""
        return self.key


@dataclass(frozen=True)
class Delivery:
    key: str
    topic: str  # topic key
    function: str  # function key
    mechanism: Mechanism
    path: str = "/"  # for push: path on the function URL ({project}/{topic} filled in)

    @property
    def dead_letter(self) -> bool:
        return self.mechanism == "push"

    def push_path(self, project: str, topic_name: str) -> str:
        return self.path.format(project=project, topic=topic_name)

    def emulator_push_path(self, signature: Signature, project: str, topic_name: str) -> str:
        """The path of the emulator push that stands in for this delivery locally.

        Eventarc sends a CloudEvent itself; a plain push reaches functions-framework as
        a raw Pub/Sub envelope, which it converts only when the path names the topic.
        """
        if self.mechanism == "eventarc" and signature == "cloudevent":
            return CLOUDEVENT_PUSH_PATH.format(project=project, topic=topic_name)
        return self.push_path(project, topic_name)


@dataclass(frozen=True)
class Notification:
    """A bucket notification: OBJECT_FINALIZE events under ``prefix`` go to ``topic``.

    ``key`` names its resources; the upload notification's is empty, so it keeps the
    names it had before scoring existed (a renamed IAM member is deleted after its
    replacement is created, and takes the binding they share with it).
    """

    key: str
    topic: str  # topic key
    prefix: str


@dataclass(frozen=True)
class WorkflowSpec:
    key: str
    source: str  # path relative to the repository root
    calls: tuple[str, ...]  # function keys it invokes over HTTP with OIDC
    publishes_to: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    orchestration: Orchestration
    topics: tuple[TopicSpec, ...]
    functions: tuple[FunctionSpec, ...]
    deliveries: tuple[Delivery, ...]
    notifications: tuple[Notification, ...]  # the training uploads' first
    workflow: WorkflowSpec | None

    @property
    def notification_topic(self) -> str:
        """The topic key the notification of training uploads (raw/) publishes to."""
        return self.notifications[0].topic

    def topic(self, key: str) -> TopicSpec:
        return _find(self.topics, key, "topic")

    def function(self, key: str) -> FunctionSpec:
        return _find(self.functions, key, "function")

    def deliveries_to(self, function_key: str) -> tuple[Delivery, ...]:
        return tuple(d for d in self.deliveries if d.function == function_key)

    def functions_logging(self, event: str) -> tuple[str, ...]:
        """Keys of the functions that write the structured log ``event``."""
        stage = LOG_EVENT_STAGES[event]
        return tuple(spec.key for spec in self.functions if spec.settings_key == stage)


# Runtime and supporting identities: one service account per workload.
WORKLOADS: Mapping[str, str] = {
    "processing": "Reads raw uploads, writes processed data and rejection records",
    "training": "Reads processed data, writes model versions and the champion pointer",
    "prediction": "Reads the champion and model artifacts",
    "workflow_trigger": "Starts Workflows executions from upload notifications",
    "scoring": "Reads scoring uploads and the champion, writes predictions",
    "workflow": "Runs the Workflows definition and invokes the stage functions",
    "event_trigger": "Identity of Eventarc triggers and OIDC push subscriptions",
    "build": "Builds function source into containers (Cloud Build)",
}

# The push path functions-framework turns into a messagePublished CloudEvent.
CLOUDEVENT_PUSH_PATH = "/projects/{project}/topics/{topic}"

_BASE_ENV = (Env.PROJECT, Env.DATA_BUCKET)
_PROCESSING_ENV = (
    *_BASE_ENV,
    Env.TARGET_COLUMN,
    Env.FEATURE_COLUMNS,
    Env.MIN_ROWS,
    Env.FUNCTION_TIMEOUT_SECONDS,
    *STREAMING_ALLOCATOR,
)
_TRAINING_ENV = (
    *_BASE_ENV,
    Env.FUNCTION_TIMEOUT_SECONDS,
    Env.TARGET_COLUMN,
    Env.MODEL_TYPE,
    Env.MODEL_HYPERPARAMETERS,
    Env.PROMOTION_METRIC,
    Env.PROMOTION_MINIMUM,
    Env.PROMOTION_TOLERANCE,
    Env.MAX_TRAINING_ROWS,
)
_PREDICT_ENV = (
    *_BASE_ENV,
    Env.PREDICT_MAX_BATCH,
    Env.MODEL_REFRESH_SECONDS,
    Env.PREDICT_RUNTIME,
)

_PREDICT = FunctionSpec("predict", signature="http", workload="prediction", env=_PREDICT_ENV)

# Scoring is one stage in both modes: its own notification, topic and push delivery
# (with a dead-letter queue) straight to score_data, which publishes its summary.
_SCORE_TOPIC = TopicSpec("score_uploaded", "score-uploaded", "Notifications of scoring uploads")
_SCORE_DATA = FunctionSpec(
    "score_data",
    signature="cloudevent",
    workload="scoring",
    env=(
        *_BASE_ENV,
        Env.FUNCTION_TIMEOUT_SECONDS,
        Env.SCORE_PREFIX,
        Env.ID_COLUMN,
        Env.TARGET_COLUMN,
        Env.PREDICT_RUNTIME,
        Env.MODEL_EVENTS_TOPIC,
        *STREAMING_ALLOCATOR,
    ),
    publishes_to=("model_events",),
)
_SCORE_DELIVERY = Delivery(
    "score_to_scoring", "score_uploaded", "score_data", "push", CLOUDEVENT_PUSH_PATH
)


def topology_for(config: StackConfig) -> Topology:
    """The wiring of a stack: its orchestration mode and its scoring prefix."""
    return build_topology(config.orchestration, score_prefix=config.score_prefix)


def build_topology(
    orchestration: Orchestration, *, score_prefix: str = DEFAULT_SCORE_PREFIX
) -> Topology:
    scoring = Notification("score", "score_uploaded", score_prefix)
    if orchestration == "workflow":
        return Topology(
            orchestration="workflow",
            topics=(
                TopicSpec("data_uploaded", "data-uploaded", "Upload notifications of the bucket"),
                TopicSpec("model_events", "model-events", "Run summaries and failures"),
                TopicSpec("dead_letter", "dead-letter", "Messages that kept failing"),
                _SCORE_TOPIC,
            ),
            functions=(
                FunctionSpec(
                    "process_data", signature="http", workload="processing", env=_PROCESSING_ENV
                ),
                FunctionSpec(
                    "train_model", signature="http", workload="training", env=_TRAINING_ENV
                ),
                _PREDICT,
                FunctionSpec(
                    "trigger_workflow",
                    signature="cloudevent",
                    workload="workflow_trigger",
                    env=(
                        *_BASE_ENV,
                        Env.FUNCTION_TIMEOUT_SECONDS,
                        Env.WORKFLOW_NAME,
                        Env.WORKFLOW_LOCATION,
                    ),
                ),
                _SCORE_DATA,
            ),
            deliveries=(
                # The entry of the whole pipeline gets a dead-letter queue, so an explicit
                # push subscription rather than Eventarc's managed one.
                Delivery(
                    "upload_to_trigger",
                    "data_uploaded",
                    "trigger_workflow",
                    "push",
                    CLOUDEVENT_PUSH_PATH,
                ),
                _SCORE_DELIVERY,
            ),
            notifications=(Notification("", "data_uploaded", RAW_PREFIX), scoring),
            workflow=WorkflowSpec(
                "ml_pipeline",
                "workflow_defs/ml_pipeline.yaml",
                calls=("process_data", "train_model", "predict"),
                publishes_to=("model_events",),
            ),
        )
    return Topology(
        orchestration="events",
        topics=(
            TopicSpec(
                "data_processing_trigger",
                "data-processing-trigger",
                "Upload notifications of the bucket, consumed by processing",
            ),
            TopicSpec(
                "model_training_trigger",
                "model-training-trigger",
                "Processed data ready for training",
            ),
            TopicSpec(
                "model_serving_trigger",
                "model-serving-trigger",
                "A new champion for the prediction service to load",
            ),
            TopicSpec("model_events", "model-events", "Run summaries and failures"),
            TopicSpec("dead_letter", "dead-letter", "Messages that kept failing"),
            _SCORE_TOPIC,
        ),
        functions=(
            FunctionSpec(
                "process_data_event",
                signature="cloudevent",
                workload="processing",
                settings_key="process_data",
                env=(*_PROCESSING_ENV, Env.MODEL_TRAINING_TOPIC, Env.MODEL_EVENTS_TOPIC),
                publishes_to=("model_training_trigger", "model_events"),
            ),
            FunctionSpec(
                "train_model_event",
                signature="cloudevent",
                workload="training",
                settings_key="train_model",
                # PREDICT_RUNTIME: the candidate's smoke prediction runs in process,
                # with the runtime predict would serve it with.
                env=(
                    *_TRAINING_ENV,
                    Env.PREDICT_RUNTIME,
                    Env.MODEL_SERVING_TOPIC,
                    Env.MODEL_EVENTS_TOPIC,
                ),
                publishes_to=("model_serving_trigger", "model_events"),
            ),
            _PREDICT,
            _SCORE_DATA,
        ),
        deliveries=(
            Delivery(
                "processing_trigger", "data_processing_trigger", "process_data_event", "eventarc"
            ),
            Delivery("training_trigger", "model_training_trigger", "train_model_event", "eventarc"),
            Delivery("serving_reload", "model_serving_trigger", "predict", "push", "/reload"),
            _SCORE_DELIVERY,
        ),
        notifications=(Notification("", "data_processing_trigger", RAW_PREFIX), scoring),
        workflow=None,
    )


T = TypeVar("T")


def resource_name(config: StackConfig, suffix: str) -> str:
    """Names of stack resources derive from the prefix, so two stacks never collide."""
    return f"{config.name_prefix}-{suffix}"


def function_name(config: StackConfig, function_key: str) -> str:
    """The Cloud Functions name, which is also its Cloud Run service's name."""
    return resource_name(config, function_key.replace("_", "-"))


def bucket_name(config: StackConfig, purpose: str) -> str:
    """Bucket names are global: the project id keeps two projects' stacks apart."""
    return f"{config.name_prefix}-{purpose}-{config.project}"


def data_bucket_name(config: StackConfig) -> str:
    """The bucket of uploads, processed data, models and predictions (cloud and local)."""
    return bucket_name(config, "data")


def push_subscription_name(config: StackConfig, delivery: Delivery) -> str:
    """The push subscription of a delivery: declared for ``push`` ones in the cloud, and
    what every delivery becomes locally."""
    return resource_name(config, f"{delivery.key.replace('_', '-')}-push")


def dead_letter_subscription_name(config: StackConfig) -> str:
    """The pull subscription that holds what kept failing (local stack and cloud alike)."""
    return resource_name(config, DEAD_LETTER_SUBSCRIPTION_SUFFIX)


def summary_subscription_name(config: StackConfig) -> str:
    """The pull subscription that keeps run summaries (local stack and cloud alike)."""
    return resource_name(config, SUMMARY_SUBSCRIPTION_SUFFIX)


def workflow_name(config: StackConfig) -> str:
    """The Workflows id; the local Executions API serves the same id."""
    return resource_name(config, "ml-pipeline")


def function_environment(
    config: StackConfig,
    function: FunctionSpec,
    *,
    bucket: T | str,
    topic_names: Mapping[str, T | str],
    workflow_name: T | str | None = None,
) -> dict[str, T | str]:
    """The environment a function receives; values may be Pulumi Outputs or strings."""
    values: dict[str, T | str | None] = {
        Env.PROJECT: config.project,
        Env.DATA_BUCKET: bucket,
        Env.TARGET_COLUMN: config.target_column,
        Env.FEATURE_COLUMNS: json.dumps(list(config.feature_columns)),
        Env.MIN_ROWS: str(config.min_rows),
        Env.MODEL_TYPE: config.model_type,
        Env.MODEL_HYPERPARAMETERS: json.dumps(dict(config.hyperparameters), sort_keys=True),
        Env.PROMOTION_METRIC: config.promotion.metric,
        Env.PROMOTION_MINIMUM: repr(config.promotion.minimum),
        Env.PROMOTION_TOLERANCE: repr(config.promotion.tolerance),
        Env.PREDICT_MAX_BATCH: str(config.predict_max_batch),
        Env.MODEL_REFRESH_SECONDS: str(config.model_refresh_seconds),
        Env.PREDICT_RUNTIME: config.predict_runtime,
        Env.MAX_TRAINING_ROWS: str(config.max_training_rows),
        Env.SCORE_PREFIX: config.score_prefix,
        Env.ID_COLUMN: config.id_column or "",
        Env.MODEL_EVENTS_TOPIC: topic_names.get("model_events"),
        Env.MODEL_TRAINING_TOPIC: topic_names.get("model_training_trigger"),
        Env.MODEL_SERVING_TOPIC: topic_names.get("model_serving_trigger"),
        Env.WORKFLOW_NAME: workflow_name,
        Env.WORKFLOW_LOCATION: config.region,
        Env.FUNCTION_TIMEOUT_SECONDS: str(config.function(function.settings_key).timeout_seconds),
        **STREAMING_ALLOCATOR,
    }
    environment: dict[str, T | str] = {}
    for name in function.env:
        value = values[name]
        if value is None:
            raise ValueError(f"function {function.key} needs {name}, which this topology lacks")
        environment[name] = value
    return environment


def workflow_environment(
    *, function_urls: Mapping[str, T | str], topic_names: Mapping[str, T | str]
) -> dict[str, T | str]:
    """User env vars of the workflow: the stage URLs and the model-events topic."""
    return {
        WorkflowEnv.PROCESS_DATA_URL: function_urls["process_data"],
        WorkflowEnv.TRAIN_MODEL_URL: function_urls["train_model"],
        WorkflowEnv.PREDICT_URL: function_urls["predict"],
        WorkflowEnv.MODEL_EVENTS_TOPIC: topic_names["model_events"],
    }


def _find(items: tuple[T, ...], key: str, kind: str) -> T:
    for item in items:
        if getattr(item, "key", None) == key:
            return item
    raise KeyError(f"no {kind} '{key}' in this topology")
