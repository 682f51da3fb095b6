"""The cleaning rules, as pure functions over the string columns of one block of rows.

Nothing here reads bytes, holds state across blocks or talks to storage: ``clean``
maps one block's columns to its kept rows, its rejection counts and the first rejected
row of each reason; ``row_digests`` names each kept row for exact-duplicate detection;
``FeatureStats`` of two blocks merge associatively. That is what a distributed runner
(an Apache Beam ``ParDo`` per block, a ``CombineFn`` for the statistics, a group-by on
the digest for duplicates) needs to run the same rules on files no single function can
hold; ``processing`` is the single-process runner.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline_core.errors import PermanentError

# What a CSV cell may spell a number as: plain ASCII decimal notation. Python's float()
# also takes "1_000" and non-ASCII digits, which in a data file mean something else.
# inf and nan parse, so that the non-finite rule can name them. RE2 (Arrow) and Python
# read this pattern alike: \d is ASCII-only in RE2 and under re.ASCII.
NUMBER_PATTERN = r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)"
NUMBER = re.compile(NUMBER_PATTERN, re.ASCII | re.IGNORECASE)
# A plain decimal label ("1", "1.0", "-2.50", "1e3"); the exponent is bounded so that
# writing the number out in full stays short.
NUMERIC_LABEL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,2})?", re.ASCII)
# What str.strip() removes, so that a cell means the same as it did to Python: every
# code point whose str.isspace() is true (Python 3.11's Unicode 14 tables), written out
# because scanning all 1.1M code points at import cost process_data and score_data
# about 0.8 s of cold start. A test checks the list against the interpreter.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

# Whole-file rejection reasons (recorded under rejected/).
EMPTY = "empty"
NOT_CSV = "not_csv"
NO_HEADER = "no_header"
BAD_HEADER = "bad_header"
MISSING_TARGET = "missing_target"
MISSING_FEATURES = "missing_features"
NO_FEATURES = "no_features"
NO_VALID_ROWS = "no_valid_rows"
TOO_FEW_ROWS = "too_few_rows"
TOO_FEW_CLASSES = "too_few_classes"

# Row-level rejection reasons (counted in stats.json), in the order the rules apply.
ROW_WRONG_FIELD_COUNT = "wrong_field_count"
ROW_MISSING_TARGET = "missing_target"
ROW_MISSING_FEATURE = "missing_feature"
ROW_NON_NUMERIC_FEATURE = "non_numeric_feature"
ROW_NON_FINITE_FEATURE = "non_finite_feature"
ROW_DUPLICATE = "duplicate"

_KEPT = 0
# Per-row codes of the rules that look at one feature cell, most basic first: code c of
# ``FeatureCells.codes`` is ``CELL_REASONS[c - 1]``.
CELL_REASONS = (ROW_MISSING_FEATURE, ROW_NON_NUMERIC_FEATURE, ROW_NON_FINITE_FEATURE)
_MISSING_CELL, _NON_NUMERIC_CELL, _NON_FINITE_CELL = 1, 2, 3
_MISSING_TARGET_CODE = 4


class FileRejectedError(PermanentError):
    """The whole file cannot be used; ``reason`` is one of the whole-file reasons."""

    code = "rejected"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Layout:
    """The header's column names (stripped) and which of them the rules read."""

    names: tuple[str, ...]
    features: tuple[str, ...]
    target: str

    @property
    def positions(self) -> list[int]:
        """Positions of the features, in their configured order, then of the target."""
        return [self.names.index(name) for name in (*self.features, self.target)]


def header_names(header: list[str]) -> tuple[str, ...]:
    """The rules every header meets: a header row of named, distinct columns."""
    names = tuple(cell.strip() for cell in header)
    if all(is_number(name) for name in names):
        raise FileRejectedError(
            NO_HEADER, "the first row holds only numbers; a header row is required"
        )
    if any(not name for name in names):
        raise FileRejectedError(BAD_HEADER, f"the header has an empty column name: {list(names)}")
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise FileRejectedError(BAD_HEADER, f"the header repeats column names: {duplicates}")
    return names


def layout(header: list[str], target: str, feature_columns: tuple[str, ...]) -> Layout:
    """The header rules: a header row, named and distinct columns, target and features."""
    names = header_names(header)
    if target not in names:
        raise FileRejectedError(
            MISSING_TARGET,
            f"missing target column {target!r}; header: {list(names)}{delimiter_hint(names)}",
        )
    if feature_columns:
        absent = [name for name in feature_columns if name not in names]
        if absent:
            raise FileRejectedError(MISSING_FEATURES, f"missing feature columns {absent}")
        features = feature_columns
    else:
        features = tuple(name for name in names if name != target)
    if not features:
        raise FileRejectedError(NO_FEATURES, f"no feature columns besides the target {target!r}")
    return Layout(names, features, target)


@dataclass(frozen=True)
class CleanBlock:
    """One block after the row rules: the kept rows and what was rejected."""

    features: np.ndarray[Any, np.dtype[np.float64]]  # one contiguous row per feature
    labels: pa.Array  # canonical label of each kept row
    label_codes: np.ndarray[Any, np.dtype[np.int32]]  # of each kept row, into spellings
    spellings: tuple[str, ...]  # the canonical label of each code (one may recur)
    label_keys: np.ndarray[Any, np.dtype[np.uint64]]  # (kept rows, 2): digest of each label
    rejections: dict[str, int]
    first_rejected: dict[str, tuple[int, str]]  # reason -> (row in the block, detail)


@dataclass(frozen=True)
class FeatureCells:
    """The feature cells of one block as numbers, and which rows break a cell rule."""

    values: np.ndarray[Any, np.dtype[np.float64]]  # one row per feature; any value if refused
    codes: np.ndarray[Any, np.dtype[np.int8]]  # per row: 0, or the first cell rule broken
    culprit: np.ndarray[Any, np.dtype[np.int32]]  # per row: the feature that broke it, or -1

    def first_refused(
        self, columns: pa.Table, features: tuple[str, ...]
    ) -> dict[str, tuple[int, str]]:
        """reason -> (row in the block, detail) of the first row refused for it."""
        return _first_rejected(columns, features, "", self.codes, self.culprit)


def feature_cells(columns: pa.Table, features: int) -> FeatureCells:
    """The cell rules over the first ``features`` string columns of a block: a row is
    refused for the first feature, in order, that is missing, not a number or not finite."""
    rows = columns.num_rows
    codes = np.zeros(rows, dtype=np.int8)
    culprit = np.full(rows, -1, dtype=np.int32)
    values = np.empty((features, rows), dtype=np.float64)
    for position in range(features):
        cell_codes = _parse_numbers(columns.column(position), values[position])
        if cell_codes is None:
            continue
        newly = (codes == _KEPT) & (cell_codes != _KEPT)
        codes[newly] = cell_codes[newly]
        culprit[newly] = position
    return FeatureCells(values, codes, culprit)


def clean(columns: pa.Table, layout: Layout) -> CleanBlock:
    """The row rules over one block; ``columns`` holds the layout's features, then its
    target, every cell a string (or a feature column of finite float64 values). A row
    is rejected for the first rule it breaks: target first, then each feature in order
    (missing, not a number, not finite)."""
    # The distinct spellings are trimmed, not every cell: " a" and "a" are two entries
    # of the dictionary with one canonical label (0.6 of 1.7 ms a 110k-row block).
    encoded = pc.dictionary_encode(_combined(columns.column(len(layout.features))))
    spellings = encoded.dictionary.to_pylist()
    canonical_labels = [canonical_label(text.strip(WHITESPACE)) for text in spellings]
    canonical = arrow_strings(canonical_labels)
    label_index = _numpy(encoded.indices)
    missing_label = np.array([not label for label in canonical_labels], dtype=bool)
    cells = feature_cells(columns, len(layout.features))
    no_label = missing_label[label_index]
    codes = np.where(no_label, np.int8(_MISSING_TARGET_CODE), cells.codes).astype(np.int8)
    culprit = np.where(no_label, np.int32(-1), cells.culprit).astype(np.int32)
    values = cells.values
    kept = codes == _KEPT
    label_keys = np.array([_label_key(label) for label in canonical_labels], np.uint64)
    kept_index = label_index[kept]
    return CleanBlock(
        features=values if kept.all() else np.ascontiguousarray(values[:, kept]),
        labels=canonical.take(arrow_numbers(kept_index)),
        label_codes=kept_index,
        spellings=tuple(canonical_labels),
        # take, not fancy indexing: 0.1 ms instead of 1.2 a 110k-row block.
        label_keys=np.take(label_keys.reshape(-1, 2), kept_index, axis=0),
        rejections=_counts(codes),
        first_rejected=_first_rejected(columns, layout.features, layout.target, codes, culprit),
    )


def _parse_numbers(
    cells: pa.ChunkedArray, out: np.ndarray[Any, np.dtype[np.float64]]
) -> np.ndarray[Any, np.dtype[np.int8]] | None:
    """Writes each cell's number into ``out``; the per-cell codes, or None if all are
    finite numbers. Arrow's cast takes a superset of NUMBER ("nan(1)") that only ever
    yields NaN, so a cast to finite values alone proves every cell a number. A float64
    column is one the CSV reader already converted, which it does only when every cell
    is a finite number (``csv_source.parse``)."""
    if cells.type == pa.float64():
        out[:] = _numpy(cells)
        return None
    try:
        numbers = _numpy(pc.cast(cells, pa.float64()))
    except pa.ArrowInvalid:
        numbers = None
    if numbers is not None and np.isfinite(numbers).all():
        out[:] = numbers
        return None
    trimmed = pc.utf8_trim(cells, characters=WHITESPACE)
    missing = _numpy(pc.equal(pc.binary_length(trimmed), 0))
    matches = pc.match_substring_regex(trimmed, f"^(?:{NUMBER_PATTERN})$", ignore_case=True)
    numeric = _numpy(matches)
    spelled = pc.if_else(matches, trimmed, pa.scalar("nan"))
    out[:] = _numpy(pc.cast(spelled, pa.float64()))
    codes = np.where(np.isfinite(out), _KEPT, _NON_FINITE_CELL).astype(np.int8)
    codes[~numeric] = _NON_NUMERIC_CELL
    codes[missing] = _MISSING_CELL
    return codes


# pa.array() of anything but Arrow data first asks whether it is a pandas Series, and
# that imports pandas: 0.3 s and tens of MB the first time. These build the same arrays
# from buffers.
def arrow_numbers(values: np.ndarray[Any, Any]) -> pa.Array:
    """A zero-copy Arrow view of a one-dimensional numeric numpy array."""
    contiguous = np.ascontiguousarray(values)
    return pa.Array.from_buffers(
        pa.from_numpy_dtype(contiguous.dtype), len(contiguous), [None, pa.py_buffer(contiguous)]
    )


def arrow_mask(flags: np.ndarray[Any, np.dtype[np.bool_]]) -> pa.Array:
    bits = np.packbits(flags, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(flags), [None, pa.py_buffer(bits)])


def arrow_strings(texts: list[str]) -> pa.Array:
    encoded = [text.encode() for text in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(text) for text in encoded], out=offsets[1:])
    return pa.Array.from_buffers(
        pa.large_string(),
        len(encoded),
        [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
    ).cast(pa.string())


_NUMPY_TYPES = {pa.float64(): np.float64, pa.int32(): np.int32}


def _numpy(values: pa.ChunkedArray | pa.Array) -> np.ndarray[Any, Any]:
    """One contiguous numpy view of float64, int32 or boolean values without nulls
    (``to_numpy()`` asks pandas first, importing it)."""
    combined = _combined(values) if isinstance(values, pa.ChunkedArray) else values
    if combined.type != pa.bool_():
        dtype = np.dtype(_NUMPY_TYPES[combined.type])
        array: np.ndarray[Any, Any] = np.frombuffer(
            combined.buffers()[1],
            dtype=dtype,
            count=len(combined),
            offset=combined.offset * dtype.itemsize,
        )
        return array
    bits = np.frombuffer(combined.buffers()[1], dtype=np.uint8)
    flags = np.unpackbits(bits, bitorder="little")[
        combined.offset : combined.offset + len(combined)
    ]
    return flags.view(bool)


def _combined(values: pa.ChunkedArray) -> pa.Array:
    # ChunkedArray.combine_chunks() of no chunks calls pa.array([]).
    return pa.concat_arrays(values.chunks) if values.num_chunks else pa.nulls(0, values.type)


def _counts(codes: np.ndarray[Any, np.dtype[np.int8]]) -> dict[str, int]:
    if not codes.any():  # the common block: every row kept
        return {}
    tally = np.bincount(codes, minlength=_MISSING_TARGET_CODE + 1)
    reasons = (None, *CELL_REASONS, ROW_MISSING_TARGET)
    return {
        reason: int(count) for reason, count in zip(reasons, tally, strict=True) if reason and count
    }


def _first_rejected(
    columns: pa.Table,
    features: tuple[str, ...],
    target: str,
    codes: np.ndarray[Any, np.dtype[np.int8]],
    culprit: np.ndarray[Any, np.dtype[np.int32]],
) -> dict[str, tuple[int, str]]:
    first: dict[str, tuple[int, str]] = {}
    if not codes.any():  # the common block: every row kept
        return first
    # The codes that occur, by counting: np.unique imports numpy.ma on first use, 12 ms
    # of the first block of every instance.
    occurring = np.flatnonzero(np.bincount(codes))
    for code in occurring[occurring != _KEPT]:
        row = int(np.argmax(codes == code))
        if code == _MISSING_TARGET_CODE:
            first[ROW_MISSING_TARGET] = (row, f"no value for {target!r}")
            continue
        name = features[culprit[row]]
        cell = _shortened(str(columns.column(int(culprit[row]))[row].as_py()).strip())
        detail = {
            _MISSING_CELL: f"no value for feature {name!r}",
            _NON_NUMERIC_CELL: f"feature {name!r} is {cell!r}, not a number",
            _NON_FINITE_CELL: f"feature {name!r} is {cell!r}",
        }[int(code)]
        first[CELL_REASONS[code - 1]] = (row, detail)
    return first


def row_digests(
    features: np.ndarray[Any, np.dtype[np.float64]],
    label_keys: np.ndarray[Any, np.dtype[np.uint64]],
) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """A 128-bit digest of each row (two 64-bit lanes, shape (rows, 2)) over the exact
    bits of its features and its label: equal rows, equal digests; any two different
    rows collide with probability about 2**-128."""
    rows = features.shape[1]
    digests = np.empty((rows, 2), dtype=np.uint64)
    for lane, (seed, first, second) in enumerate(_LANES):
        digest = np.full(rows, seed, dtype=np.uint64)
        for column in (*features.view(np.uint64), label_keys[:, lane]):
            digest ^= column
            _mix(digest, first, second)
        digests[:, lane] = digest
    return digests


# Seed and multipliers of each lane: MurmurHash3's finalizer and one of Stafford's
# variants (splitmix64), so the lanes are independent 64-bit hashes.
_LANES = (
    (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)),
    (np.uint64(0xD1B54A32D192ED03), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)),
)
_SHIFT_A, _SHIFT_B = np.uint64(33), np.uint64(31)


def _mix(digest: np.ndarray[Any, np.dtype[np.uint64]], first: np.uint64, second: np.uint64) -> None:
    """A bijective avalanche step, in place (multiplication wraps modulo 2**64)."""
    digest ^= digest >> _SHIFT_A
    digest *= first
    digest ^= digest >> _SHIFT_B
    digest *= second
    digest ^= digest >> _SHIFT_A


@functools.lru_cache(maxsize=65_536)
def _label_key(label: str) -> tuple[int, int]:
    digest = hashlib.blake2b(label.encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature count/mean/M2/min/max of some rows; ``merge`` combines two disjoint
    sets of rows exactly and in a numerically stable way (Chan et al.)."""

    count: int
    mean: np.ndarray[Any, np.dtype[np.float64]]
    m2: np.ndarray[Any, np.dtype[np.float64]]
    minimum: np.ndarray[Any, np.dtype[np.float64]]
    maximum: np.ndarray[Any, np.dtype[np.float64]]

    @classmethod
    def empty(cls, features: int) -> FeatureStats:
        zeros = np.zeros(features)
        return cls(0, zeros, zeros, np.full(features, math.inf), np.full(features, -math.inf))

    @classmethod
    def of(cls, features: np.ndarray[Any, np.dtype[np.float64]]) -> FeatureStats:
        if not features.shape[1]:
            return cls.empty(features.shape[0])
        mean = features.mean(axis=1)
        m2 = ((features - mean[:, None]) ** 2).sum(axis=1)
        return cls(features.shape[1], mean, m2, features.min(axis=1), features.max(axis=1))

    def merge(self, other: FeatureStats) -> FeatureStats:
        if not other.count:
            return self
        if not self.count:
            return other
        total = self.count + other.count
        delta = other.mean - self.mean
        return FeatureStats(
            total,
            self.mean + delta * other.count / total,
            self.m2 + other.m2 + delta * delta * self.count * other.count / total,
            np.minimum(self.minimum, other.minimum),
            np.maximum(self.maximum, other.maximum),
        )

    def to_json(self, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
        std = np.sqrt(self.m2 / self.count) if self.count else np.zeros(len(names))
        return {
            name: {
                "min": float(self.minimum[index]),
                "max": float(self.maximum[index]),
                "mean": float(self.mean[index]),
                "std": float(std[index]),
            }
            for index, name in enumerate(names)
        }


@functools.lru_cache(maxsize=65_536)
def canonical_label(text: str) -> str:
    """One spelling per numeric class: "1", "1.0" and "+1e0" are all class "1", as an
    export that mixes integer and float formatting means them to be; other labels stay."""
    if not NUMERIC_LABEL.fullmatch(text):
        return text
    number = Decimal(text)
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def is_number(text: str) -> bool:
    return NUMBER.fullmatch(text) is not None


def delimiter_hint(names: tuple[str, ...]) -> str:
    """A sentence naming the separator of a one-column header that holds another one."""
    if len(names) != 1:
        return ""
    for delimiter, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
        if delimiter in names[0]:
            return f"; the file looks separated by {name}: export it with commas"
    return ""


def _shortened(cell: str, limit: int = 40) -> str:
    return cell if len(cell) <= limit else f"{cell[:limit]}..."
