"""The contract between the stack's wiring and its functions, written once.

The object layout of the data bucket, the environment variable names the functions
read, the structured log events that metrics count, and the defaults of every setting
both sides know. It sits inside the deployed package (``function_src`` is what gets
zipped) and imports nothing but the standard library, so the functions, the Pulumi
components (``components/topology.py``, ``components/config.py``) and the local stack
(``devstack``) read this one module and cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, get_args


class StoredVersion(Protocol):
    """One generation of an object (``pipeline_core.events.ObjectRef`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def generation(self) -> int | str: ...


# -- Object layout of the data bucket ---------------------------------------------------

RAW_PREFIX = "raw/"  # training uploads
PROCESSED_PREFIX = "processed/"
REJECTED_PREFIX = "rejected/"
MODELS_PREFIX = "models/"
RUNS_PREFIX = "runs/"  # workflow mode: one run marker per upload generation
PREDICTIONS_PREFIX = "predictions/"
DEFAULT_SCORE_PREFIX = "score/"  # scoring uploads; configurable (scorePrefix)

# Prefixes the pipeline owns; the scoring prefix may neither lie inside one nor hold one.
FIXED_PREFIXES = (
    RAW_PREFIX,
    PROCESSED_PREFIX,
    REJECTED_PREFIX,
    MODELS_PREFIX,
    RUNS_PREFIX,
    PREDICTIONS_PREFIX,
)

STATS_NAME = "stats.json"
MANIFEST_NAME = "manifest.json"
CHAMPION_OBJECT = f"{MODELS_PREFIX}champion.json"


def _per_upload(prefix: str, upload: StoredVersion) -> str:
    return f"{prefix}{upload.name}/{upload.generation}"


# process_data: everything made of one upload generation sits in one folder. The
# cleaned rows are a Parquet dataset: parts named by their number under a prefix, each
# one object written in one upload, so no part waits for the rest of the upload (and
# no compose re-reads them). Readers get the prefix and the number of parts, never a
# listing: the grants are prefix-scoped, and listing a bucket is a bucket-wide grant.
def processed_data(upload: StoredVersion) -> str:
    return f"{_per_upload(PROCESSED_PREFIX, upload)}/data/"


def deduplicated_data(upload: StoredVersion) -> str:
    """The cleaned rows when ``processed_data`` still held far-apart repeats."""
    return f"{_per_upload(PROCESSED_PREFIX, upload)}/deduplicated/"


def part_object(dataset: str, number: int) -> str:
    """Part ``number`` (from 0) of the Parquet dataset under the prefix ``dataset``."""
    return f"{dataset}part-{number:05d}.parquet"


# A part number has five digits: at 50,000 rows a part at least, 5 billion rows.
MAX_PARTS = 99_999


def part_objects(dataset: str, parts: int) -> list[str]:
    return [part_object(dataset, number) for number in range(parts)]


def digest_spill_prefix(upload: StoredVersion) -> str:
    """Where duplicate detection spills row digests while the upload is processed."""
    return f"{_per_upload(PROCESSED_PREFIX, upload)}/digests/"


def stats_object(upload: StoredVersion) -> str:
    return f"{_per_upload(PROCESSED_PREFIX, upload)}/{STATS_NAME}"


def processing_lease_object(upload: StoredVersion) -> str:
    return f"{_per_upload(PROCESSED_PREFIX, upload)}/lease.json"


def rejection_object(upload: StoredVersion) -> str:
    return f"{_per_upload(REJECTED_PREFIX, upload)}.json"


# train_model: model versions, and the outcome recorded per upload generation.
def artifact_object(version: str) -> str:
    return f"{MODELS_PREFIX}{version}/model.joblib"


def onnx_artifact_object(version: str) -> str:
    return f"{MODELS_PREFIX}{version}/model.onnx"


def manifest_object(version: str) -> str:
    return f"{MODELS_PREFIX}{version}/{MANIFEST_NAME}"


def lineage_object(upload: StoredVersion) -> str:
    return f"{_per_upload(MODELS_PREFIX + 'by-source/', upload)}.json"


def training_lease_object(upload: StoredVersion) -> str:
    return f"{_per_upload(MODELS_PREFIX + 'by-source/', upload)}.lease.json"


# trigger_workflow: the execution started for an upload generation, and its lease.
def run_marker_object(upload: StoredVersion) -> str:
    return f"{_per_upload(RUNS_PREFIX, upload)}.json"


def run_lease_object(upload: StoredVersion) -> str:
    return f"{_per_upload(RUNS_PREFIX, upload)}.lease.json"


# score_data: one folder of outputs per scoring upload generation.
def scoring_folder(upload: StoredVersion) -> str:
    return _per_upload(PREDICTIONS_PREFIX, upload)


def predictions_object(upload: StoredVersion) -> str:
    return f"{scoring_folder(upload)}/predictions.parquet"


def predictions_csv_object(upload: StoredVersion) -> str:
    return f"{scoring_folder(upload)}/predictions.csv"


def scoring_summary_object(upload: StoredVersion) -> str:
    return f"{scoring_folder(upload)}/summary.json"


def scoring_lease_object(upload: StoredVersion) -> str:
    return f"{scoring_folder(upload)}/lease.json"


# -- Environment variables the functions read (pipeline_core.settings) ------------------


class Env:
    PROJECT = "GOOGLE_CLOUD_PROJECT"
    DATA_BUCKET = "DATA_BUCKET"
    TARGET_COLUMN = "TARGET_COLUMN"
    FEATURE_COLUMNS = "FEATURE_COLUMNS"  # JSON list; [] means every column but the target
    MIN_ROWS = "MIN_ROWS"
    MODEL_TYPE = "MODEL_TYPE"
    MODEL_HYPERPARAMETERS = "MODEL_HYPERPARAMETERS"  # JSON object
    PROMOTION_METRIC = "PROMOTION_METRIC"
    PROMOTION_MINIMUM = "PROMOTION_MINIMUM"
    PROMOTION_TOLERANCE = "PROMOTION_TOLERANCE"
    PREDICT_MAX_BATCH = "PREDICT_MAX_BATCH"
    MODEL_REFRESH_SECONDS = "MODEL_REFRESH_SECONDS"
    PREDICT_RUNTIME = "PREDICT_RUNTIME"  # onnx (the compiled artifact when verified) or joblib
    MAX_TRAINING_ROWS = "MAX_TRAINING_ROWS"
    SCORE_PREFIX = "SCORE_PREFIX"
    ID_COLUMN = "ID_COLUMN"  # empty: no id column is passed through
    MODEL_EVENTS_TOPIC = "MODEL_EVENTS_TOPIC"
    MODEL_TRAINING_TOPIC = "MODEL_TRAINING_TOPIC"
    MODEL_SERVING_TOPIC = "MODEL_SERVING_TOPIC"
    WORKFLOW_NAME = "WORKFLOW_NAME"
    WORKFLOW_LOCATION = "WORKFLOW_LOCATION"
    # The function's own timeout: how long its claim on a run (a lease) may live.
    FUNCTION_TIMEOUT_SECONDS = "FUNCTION_TIMEOUT_SECONDS"
    # Set only by the local stack: where the Executions API is served.
    WORKFLOWS_API_ENDPOINT = "WORKFLOWS_API_ENDPOINT"
    # Set by Cloud Run functions (and the local stack alike): the entry point served.
    FUNCTION_TARGET = "FUNCTION_TARGET"
    # Read by glibc's allocator and by Arrow when the process starts, never by the
    # code (STREAMING_ALLOCATOR).
    MALLOC_ARENA_MAX = "MALLOC_ARENA_MAX"
    MALLOC_MMAP_THRESHOLD = "MALLOC_MMAP_THRESHOLD_"
    MALLOC_TRIM_THRESHOLD = "MALLOC_TRIM_THRESHOLD_"
    ARROW_DEFAULT_MEMORY_POOL = "ARROW_DEFAULT_MEMORY_POOL"


# -- Structured log events ---------------------------------------------------------------


class LogEvent:
    """``jsonPayload.event`` values of the structured log lines that log-based metrics
    count (components/monitoring.py). A promotion line also carries ``model_version``,
    ``metric_name`` and a numeric ``metric_value``; a rejection line carries ``reason``."""

    MODEL_PROMOTED = "model_promoted"
    UPLOAD_REJECTED = "upload_rejected"


# -- Defaults and bounds of the settings (stack config and environment alike) ------------


class Bounds(NamedTuple):
    """The lowest and highest value a whole-number setting accepts."""

    low: int
    high: int


ModelType = Literal["random_forest", "logistic_regression", "gradient_boosting"]
PromotionMetric = Literal["accuracy", "f1_macro"]
PredictRuntime = Literal["onnx", "joblib"]
MODEL_TYPES: tuple[ModelType, ...] = get_args(ModelType)
PROMOTION_METRICS: tuple[PromotionMetric, ...] = get_args(PromotionMetric)
# onnx serves the compiled artifact when its manifest verifies it; joblib never does.
PREDICT_RUNTIMES: tuple[PredictRuntime, ...] = get_args(PredictRuntime)

DEFAULT_TARGET_COLUMN = "target"
DEFAULT_MIN_ROWS = 20
MIN_ROWS_BOUNDS = Bounds(2, 10_000_000)
# Rows per Parquet row group of the processed data (processing's write unit).
DEFAULT_CHUNK_ROWS = 50_000
# Bytes of Parquet a part of the processed data holds at most (estimated from its
# columns, in whole row groups, at least one): the client's largest single-request
# (multipart) upload, so each part is one request, uploaded while the next ones are
# cleaned, and memory (the part filling, the one uploading and its bytes) does not grow
# with the number of features. Four features: 250,000 rows, about 7.7 MiB; a 1 GB
# upload makes about 110 parts.
PROCESSED_PART_BYTES = 8 * 2**20
DEFAULT_MODEL_TYPE: ModelType = "random_forest"
DEFAULT_PROMOTION_METRIC: PromotionMetric = "f1_macro"
DEFAULT_PROMOTION_MINIMUM = 0.7
DEFAULT_PROMOTION_TOLERANCE = 0.0
# Training fixes the seed itself, so a configured value would silently change what a
# model's recorded seed means; the stack config refuses these hyperparameters.
FIXED_HYPERPARAMETERS = frozenset({"random_state"})


@dataclass(frozen=True)
class PromotionPolicy:
    """When a candidate model replaces the champion: its ``metric`` reaches ``minimum``
    and is no worse than the champion's by more than ``tolerance``."""

    metric: str = DEFAULT_PROMOTION_METRIC
    minimum: float = DEFAULT_PROMOTION_MINIMUM
    tolerance: float = DEFAULT_PROMOTION_TOLERANCE


# Measured on 2 vCPUs (docs/FUNCTIONS.md, "train_model"): on pure-noise rows, the worst
# case (trees grow a leaf per row), a forest of 100 trees fits, compiles to ONNX and
# passes parity in about 30 s at a 1.3 GB peak: inside the default 2 GiB and 540 s.
DEFAULT_MAX_TRAINING_ROWS = 20_000
MAX_TRAINING_ROWS_BOUNDS = Bounds(100, 100_000_000)
DEFAULT_PREDICT_MAX_BATCH = 1000
PREDICT_MAX_BATCH_LIMIT = 100_000
# A candidate's smoke prediction sends up to this many held-out rows to predict
# (training), so predict's batch limit (predictMaxBatch) may not be lower.
SMOKE_ROWS = 5
DEFAULT_MODEL_REFRESH_SECONDS = 30
MODEL_REFRESH_SECONDS_BOUNDS = Bounds(0, 3600)
DEFAULT_PREDICT_RUNTIME: PredictRuntime = "onnx"
# The allocator of the functions that stream a file through a dozen threads
# (process_data, score_data), set in their environment:
# - two glibc arenas: glibc would keep up to 8 per core, each holding the request
#   buffers its threads freed (a 1 GB upload through fake-gcs-server peaked at 364 MB
#   instead of 405);
# - blocks, parts and request bodies of up to 32 MiB from the heap, which is never
#   trimmed below 256 MiB: glibc mapped each one afresh and the kernel faulted in and
#   zeroed every page of it again, 480,000 page faults and 1.6-1.8 s of system time at
#   10M rows (90,000 and 0.7 s with these);
# - Arrow's buffers from the same allocator (its default, mimalloc, keeps pools of its
#   own): 50-60 MB less peak RSS.
# Together, 10M rows through fake-gcs-server 56-61 -> 72-75 MB/s (docs/FUNCTIONS.md).
STREAMING_ALLOCATOR = {
    Env.MALLOC_ARENA_MAX: "2",
    Env.MALLOC_MMAP_THRESHOLD: str(32 * 2**20),
    Env.MALLOC_TRIM_THRESHOLD: str(256 * 2**20),
    Env.ARROW_DEFAULT_MEMORY_POOL: "system",
}
# The default timeout of the long-running functions; a lease lives as long as its holder.
DEFAULT_TIMEOUT_SECONDS = 540
# The longest timeout Cloud Functions (2nd gen) allows.
MAX_TIMEOUT_SECONDS = 3600
