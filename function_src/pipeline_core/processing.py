"""process_data: raw CSV upload -> cleaned Parquet + stats, or a recorded rejection.

The raw object is streamed: memory holds one chunk of rows, a 16-byte digest per
distinct row (for exact-duplicate detection, ``digest_set``) and the running
statistics, never the file.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import re
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_core import logging as log
from pipeline_core.digest_set import DIGEST_BYTES, DigestSet
from pipeline_core.errors import BadRequestError, DataRejectedError, PreconditionFailedError
from pipeline_core.events import ObjectRef
from pipeline_core.leases import Clock, acquire, utc_now
from pipeline_core.settings import DEFAULT_TIMEOUT_SECONDS
from pipeline_core.storage import Storage, read_json, write_json

GZIP_MAGIC = b"\x1f\x8b"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# A plain decimal label ("1", "1.0", "-2.50", "1e3"); the exponent is bounded so that
# writing the number out in full stays short.
# What a CSV cell may spell a number as: plain ASCII decimal notation. Python's float()
# also takes "1_000" and non-ASCII digits, which in a data file mean something else.
# inf and nan parse, so that the non-finite rule can name them.
NUMBER = re.compile(
    r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)", re.ASCII | re.IGNORECASE
)
NUMERIC_LABEL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,2})?", re.ASCII)
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"

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

# Row-level rejection reasons (counted in stats.json).
ROW_WRONG_FIELD_COUNT = "wrong_field_count"
ROW_MISSING_TARGET = "missing_target"
ROW_MISSING_FEATURE = "missing_feature"
ROW_NON_NUMERIC_FEATURE = "non_numeric_feature"
ROW_NON_FINITE_FEATURE = "non_finite_feature"
ROW_DUPLICATE = "duplicate"


@dataclass(frozen=True)
class DatasetSchema:
    target_column: str = "target"
    feature_columns: tuple[str, ...] = ()  # empty: every column but the target
    min_rows: int = 20


def processed_object(ref: ObjectRef) -> str:
    return f"processed/{ref.name}/{ref.generation}/data.parquet"


def stats_object(ref: ObjectRef) -> str:
    return f"processed/{ref.name}/{ref.generation}/stats.json"


def rejection_object(ref: ObjectRef) -> str:
    return f"rejected/{ref.name}/{ref.generation}.json"


def lease_object(ref: ObjectRef) -> str:
    return f"processed/{ref.name}/{ref.generation}/lease.json"


@dataclass(frozen=True)
class ProcessingResult:
    stats: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "processed",
            "processed_object": self.stats["processed_object"],
            "stats_object": self.stats["stats_object"],
            "rows_in": self.stats["rows_in"],
            "rows_out": self.stats["rows_out"],
            "rejections": self.stats["rejections"],
            "features": self.stats["features"],
            "target_column": self.stats["target_column"],
        }


class _RejectError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def process(
    storage: Storage,
    ref: ObjectRef,
    schema: DatasetSchema,
    *,
    chunk_rows: int = 50_000,
    lease_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    clock: Clock = utc_now,
) -> ProcessingResult:
    """Clean one raw object generation once; a later call returns the recorded outcome.

    Concurrent deliveries of one generation process it once: the first takes the lease,
    the others get ``LeaseHeldError`` (transient) and, redelivered, the outcome.
    """
    if ref.bucket != storage.bucket:
        raise BadRequestError(f"bucket {ref.bucket!r} is not this pipeline's data bucket")
    if not ref.name.startswith("raw/"):
        raise BadRequestError(f"object {ref.name!r} is outside raw/; only uploads are processed")
    previous = _previous_outcome(storage, ref)
    if previous is not None:
        return previous
    lease = acquire(storage, lease_object(ref), seconds=lease_seconds, clock=clock)
    try:
        # The attempt that held the lease before us may have finished since our check.
        return _previous_outcome(storage, ref) or _clean(storage, ref, schema, chunk_rows)
    finally:
        lease.release()


def _clean(
    storage: Storage, ref: ObjectRef, schema: DatasetSchema, chunk_rows: int
) -> ProcessingResult:
    cleaner = _Cleaner(schema)
    try:
        with (
            storage.open_read(ref.name, ref.generation) as source,
            storage.open_write(processed_object(ref), content_type=PARQUET_CONTENT_TYPE) as sink,
        ):
            cleaner.run(source, sink, chunk_rows)
            cleaner.check_result()
    except _RejectError as rejection:
        raise _record_rejection(storage, ref, rejection, cleaner) from None
    stats = cleaner.stats_document(ref)
    _write_once(storage, stats_object(ref), stats)
    log.info(
        "processed upload",
        object=ref.name,
        generation=ref.generation,
        rows_in=stats["rows_in"],
        rows_out=stats["rows_out"],
    )
    return ProcessingResult(stats)


def _write_once(storage: Storage, name: str, document: dict[str, Any]) -> None:
    """The first outcome recorded stays: one written by an attempt whose lease expired
    while it ran is as good as ours (processing is deterministic)."""
    try:
        write_json(storage, name, document, if_generation_match=0)
    except PreconditionFailedError:
        log.info("another attempt recorded the outcome first", outcome=name)


def _previous_outcome(storage: Storage, ref: ObjectRef) -> ProcessingResult | None:
    if storage.stat(stats_object(ref)) is not None:
        log.info("already processed; returning the recorded outcome", object=ref.name)
        return ProcessingResult(read_json(storage, stats_object(ref)))
    if storage.stat(rejection_object(ref)) is not None:
        log.info("already rejected; returning the recorded rejection", object=ref.name)
        record = read_json(storage, rejection_object(ref))
        raise DataRejectedError(
            record["reason"], rejection_object=rejection_object(ref), detail=record["detail"]
        )
    return None


def _record_rejection(
    storage: Storage, ref: ObjectRef, rejection: _RejectError, cleaner: _Cleaner
) -> DataRejectedError:
    record = {
        "source": ref.to_json(),
        "reason": rejection.reason,
        "detail": rejection.detail,
        "rows_in": cleaner.rows_in,
        "row_rejections": dict(sorted(cleaner.rejections.items())),
        "row_rejection_examples": dict(sorted(cleaner.examples.items())),
    }
    _write_once(storage, rejection_object(ref), record)
    log.warning(
        "rejected upload", object=ref.name, generation=ref.generation, reason=rejection.reason
    )
    return DataRejectedError(
        rejection.reason, rejection_object=rejection_object(ref), detail=rejection.detail
    )


@dataclass
class _RunningStats:
    """Per-feature count/mean/M2/min/max, merged chunk by chunk (Chan et al.)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, values: np.ndarray[Any, np.dtype[np.float64]]) -> None:
        n = int(values.size)
        if n == 0:
            return
        chunk_mean = float(values.mean())
        chunk_m2 = float(((values - chunk_mean) ** 2).sum())
        total = self.count + n
        delta = chunk_mean - self.mean
        self.mean += delta * n / total
        self.m2 += chunk_m2 + delta * delta * self.count * n / total
        self.count = total
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))

    def to_json(self) -> dict[str, float]:
        std = math.sqrt(self.m2 / self.count) if self.count else 0.0
        return {"min": self.minimum, "max": self.maximum, "mean": self.mean, "std": std}


@dataclass
class _Cleaner:
    schema: DatasetSchema
    rows_in: int = 0
    rows_out: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # the first row of each reason
    class_counts: Counter[str] = field(default_factory=Counter)
    features: tuple[str, ...] = ()
    feature_stats: dict[str, _RunningStats] = field(default_factory=dict)
    _seen: DigestSet = field(default_factory=DigestSet)

    def run(self, source: IO[bytes], sink: IO[bytes], chunk_rows: int) -> None:
        rows = csv.reader(_text_lines(source))
        try:
            header = next((row for row in rows if row), None)
            if header is None:
                raise _RejectError(EMPTY, "the file is empty")
            feature_index, target_index = self._resolve_columns(header)
            arrow_schema = pa.schema(
                [(name, pa.float64()) for name in self.features]
                + [(self.schema.target_column, pa.string())]
            )
            self.feature_stats = {name: _RunningStats() for name in self.features}
            writer: pq.ParquetWriter | None = None
            for chunk in _chunks(
                self._valid_rows(
                    rows, [cell.strip() for cell in header], feature_index, target_index
                ),
                chunk_rows,
            ):
                kept = self._drop_duplicates(chunk)
                if not kept:
                    continue
                if writer is None:
                    writer = pq.ParquetWriter(sink, arrow_schema, compression="snappy")
                writer.write_table(self._to_table(kept, arrow_schema))
            if writer is not None:
                writer.close()
        except UnicodeDecodeError as error:
            detail = f"the file is not UTF-8 text (byte {error.start})"
            raise _RejectError(NOT_CSV, detail) from None
        except csv.Error as error:
            raise _RejectError(NOT_CSV, f"the file is not valid CSV: {error}") from None
        except (OSError, EOFError, zlib.error) as error:
            raise _RejectError(NOT_CSV, f"the gzip stream is corrupt: {error}") from None

    def _resolve_columns(self, header: list[str]) -> tuple[list[int], int]:
        names = [cell.strip() for cell in header]
        if all(_is_number(name) for name in names):
            raise _RejectError(
                NO_HEADER, "the first row holds only numbers; a header row is required"
            )
        if any(not name for name in names):
            raise _RejectError(BAD_HEADER, f"the header has an empty column name: {names}")
        duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
        if duplicates:
            raise _RejectError(BAD_HEADER, f"the header repeats column names: {duplicates}")
        target = self.schema.target_column
        if target not in names:
            raise _RejectError(
                MISSING_TARGET,
                f"missing target column {target!r}; header: {names}{_delimiter_hint(names)}",
            )
        if self.schema.feature_columns:
            absent = [name for name in self.schema.feature_columns if name not in names]
            if absent:
                raise _RejectError(MISSING_FEATURES, f"missing feature columns {absent}")
            self.features = self.schema.feature_columns
        else:
            self.features = tuple(name for name in names if name != target)
        if not self.features:
            raise _RejectError(NO_FEATURES, f"no feature columns besides the target {target!r}")
        return [names.index(name) for name in self.features], names.index(target)

    def _valid_rows(
        self, rows: Any, header: list[str], feature_index: list[int], target_index: int
    ) -> Iterator[tuple[list[float], str, bytes]]:
        """Rows that parse, with the digest that identifies exact duplicates.

        ``rows`` is the ``csv.reader``: its ``line_num`` names the line of a rejected row.
        """
        packer = struct.Struct(f"<{len(feature_index)}d")
        for row in rows:
            if not row:
                continue  # blank line
            self.rows_in += 1
            problem, values, label = self._parse(row, header, feature_index, target_index)
            if problem is not None:
                reason, detail = problem
                self.rejections[reason] += 1
                self.examples.setdefault(reason, f"line {rows.line_num}: {detail}")
                continue
            digest = hashlib.blake2b(
                packer.pack(*values) + label.encode(), digest_size=DIGEST_BYTES
            ).digest()
            yield values, label, digest

    def _drop_duplicates(
        self, chunk: list[tuple[list[float], str, bytes]]
    ) -> list[tuple[list[float], str]]:
        """The rows of the chunk not seen before, in order; the first occurrence stays."""
        kept: list[tuple[list[float], str]] = []
        is_new = self._seen.add_new([digest for _, _, digest in chunk])
        for (values, label, _), new in zip(chunk, is_new, strict=True):
            if not new:
                self.rejections[ROW_DUPLICATE] += 1
                continue
            self.rows_out += 1
            self.class_counts[label] += 1
            kept.append((values, label))
        return kept

    @staticmethod
    def _parse(
        row: list[str], header: list[str], feature_index: list[int], target_index: int
    ) -> tuple[tuple[str, str] | None, list[float], str]:
        """(reason, detail) of a row that cannot be used, or its values and label."""
        if len(row) != len(header):
            detail = f"{len(row)} fields where the header has {len(header)}"
            return (ROW_WRONG_FIELD_COUNT, detail), [], ""
        label = canonical_label(row[target_index].strip())
        if not label:
            return (ROW_MISSING_TARGET, f"no value for {header[target_index]!r}"), [], ""
        values: list[float] = []
        for index in feature_index:
            cell = row[index].strip()
            if not cell:
                return (ROW_MISSING_FEATURE, f"no value for feature {header[index]!r}"), [], ""
            if not _is_number(cell):
                detail = f"feature {header[index]!r} is {_shortened(cell)!r}, not a number"
                return (ROW_NON_NUMERIC_FEATURE, detail), [], ""
            value = float(cell)
            if not math.isfinite(value):
                detail = f"feature {header[index]!r} is {_shortened(cell)!r}"
                return (ROW_NON_FINITE_FEATURE, detail), [], ""
            values.append(value)
        return None, values, label

    def _to_table(self, chunk: list[tuple[list[float], str]], arrow_schema: pa.Schema) -> pa.Table:
        matrix = np.array([values for values, _ in chunk], dtype=np.float64)
        columns = []
        for position, name in enumerate(self.features):
            column = matrix[:, position]
            self.feature_stats[name].add(column)
            columns.append(pa.array(column, type=pa.float64()))
        columns.append(pa.array([label for _, label in chunk], type=pa.string()))
        return pa.Table.from_arrays(columns, schema=arrow_schema)

    def check_result(self) -> None:
        if self.rows_in == 0:
            raise _RejectError(NO_VALID_ROWS, "the file has a header and no data rows")
        if self.rows_out == 0:
            raise _RejectError(
                NO_VALID_ROWS,
                f"no row survived cleaning ({self.rows_in} rows in; rejected: "
                f"{dict(sorted(self.rejections.items()))}; first of each: "
                f"{'; '.join(self.examples[reason] for reason in sorted(self.examples))})",
            )
        if self.rows_out < self.schema.min_rows:
            raise _RejectError(
                TOO_FEW_ROWS,
                f"{self.rows_out} valid rows, at least {self.schema.min_rows} are required",
            )
        if len(self.class_counts) < 2:
            raise _RejectError(
                TOO_FEW_CLASSES,
                f"only one class {sorted(self.class_counts)} in {self.schema.target_column!r}; "
                "a classifier needs at least 2",
            )

    def stats_document(self, ref: ObjectRef) -> dict[str, Any]:
        return {
            "source": ref.to_json(),
            "processed_object": processed_object(ref),
            "stats_object": stats_object(ref),
            "target_column": self.schema.target_column,
            "features": list(self.features),
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rejections": dict(sorted(self.rejections.items())),
            "rejection_examples": dict(sorted(self.examples.items())),
            "feature_stats": {name: stats.to_json() for name, stats in self.feature_stats.items()},
            "class_counts": dict(sorted(self.class_counts.items())),
        }


def _delimiter_hint(names: list[str]) -> str:
    if len(names) != 1:
        return ""
    for delimiter, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
        if delimiter in names[0]:
            return f"; the file looks separated by {name}: export it with commas"
    return ""


def _shortened(cell: str, limit: int = 40) -> str:
    return cell if len(cell) <= limit else f"{cell[:limit]}..."


def canonical_label(text: str) -> str:
    """One spelling per numeric class: "1", "1.0" and "+1e0" are all class "1", as an
    export that mixes integer and float formatting means them to be; other labels stay."""
    if not NUMERIC_LABEL.fullmatch(text):
        return text
    number = Decimal(text)
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def _text_lines(source: IO[bytes]) -> Iterator[str]:
    """Decoded lines of a plain or gzip-compressed UTF-8 stream (with or without BOM)."""
    head = source.read(2)
    if head in UTF16_BOMS:
        raise _RejectError(NOT_CSV, "the file is UTF-16 text; save it as UTF-8")
    stream: IO[bytes] = io.BufferedReader(_Prefixed(head, source))
    if head == GZIP_MAGIC:
        stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
    for line in io.TextIOWrapper(stream, encoding="utf-8-sig", newline=""):
        # Python's csv module accepts NUL; a NUL still means a binary file, not CSV.
        if "\x00" in line:
            raise _RejectError(NOT_CSV, "the file holds NUL bytes: it is binary, not CSV text")
        yield line


class _Prefixed(io.RawIOBase):
    """Puts bytes already read back in front of a stream."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            size = min(len(view), len(self._head))
            view[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


Row = TypeVar("Row")


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _is_number(text: str) -> bool:
    return NUMBER.fullmatch(text) is not None
