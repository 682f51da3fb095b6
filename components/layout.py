"""Object layout of the data bucket: the prefixes every stage reads and writes.

Its own module so that ``config`` can check the configurable scoring prefix against the
fixed ones without importing ``topology`` (which imports ``config``). ``topology``
re-exports these names; the handlers repeat them (they are deployed alone).
"""

from __future__ import annotations

RAW_PREFIX = "raw/"
PROCESSED_PREFIX = "processed/"
REJECTED_PREFIX = "rejected/"
MODELS_PREFIX = "models/"
RUNS_PREFIX = "runs/"
PREDICTIONS_PREFIX = "predictions/"
DEFAULT_SCORE_PREFIX = "score/"

# Prefixes the pipeline owns; the scoring prefix may neither lie inside one nor hold one.
FIXED_PREFIXES = (
    RAW_PREFIX,
    PROCESSED_PREFIX,
    REJECTED_PREFIX,
    MODELS_PREFIX,
    RUNS_PREFIX,
    PREDICTIONS_PREFIX,
)
