"""process_data: raw CSV upload -> cleaned Parquet + stats, or a recorded rejection.

The run-once orchestration (lease, recorded outcome) and the single-process runner of
the cleaning: ``csv_source`` turns the raw bytes into record-aligned blocks, the pure
rules of ``cleaning`` clean each block's columns, and this module removes the
duplicates across blocks, merges the statistics and writes Parquet row group by row
group. Memory holds one block, one row group, a window of row digests (exact
duplicate detection, ``deduplication``: the rest is spilled to the bucket) and the
running statistics, never the file. An upload with repeats further apart than the
window is written once more without them (``deduplicated_object``).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline_core import csv_source
from pipeline_core import logging as log
from pipeline_core.cleaning import (
    NO_VALID_ROWS,
    ROW_DUPLICATE,
    ROW_WRONG_FIELD_COUNT,
    TOO_FEW_CLASSES,
    TOO_FEW_ROWS,
    CleanBlock,
    FeatureStats,
    FileRejectedError,
    Layout,
    arrow_mask,
    arrow_numbers,
    clean,
    layout,
    row_digests,
)
from pipeline_core.contract import (
    DEFAULT_MIN_ROWS,
    DEFAULT_TARGET_COLUMN,
    DEFAULT_TIMEOUT_SECONDS,
    RAW_PREFIX,
    LogEvent,
    deduplicated_object,
    digest_spill_prefix,
    processed_object,
    processing_lease_object,
    rejection_object,
    stats_object,
)
from pipeline_core.csv_source import DEFAULT_BLOCK_BYTES
from pipeline_core.deduplication import Deduplicator
from pipeline_core.digest_set import DEFAULT_CAPACITY
from pipeline_core.errors import BadRequestError, DataRejectedError, PreconditionFailedError
from pipeline_core.events import ObjectRef
from pipeline_core.leases import Clock, acquire, utc_now
from pipeline_core.storage import Storage, read_json, write_json

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
# A long upload says how far it is this often (Cloud Logging, `devstack logs`).
PROGRESS_SECONDS = 5.0


@dataclass(frozen=True)
class DatasetSchema:
    target_column: str = DEFAULT_TARGET_COLUMN
    feature_columns: tuple[str, ...] = ()  # empty: every column but the target
    min_rows: int = DEFAULT_MIN_ROWS


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


def process(
    storage: Storage,
    ref: ObjectRef,
    schema: DatasetSchema,
    *,
    chunk_rows: int = 50_000,
    lease_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    clock: Clock = utc_now,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    progress_seconds: float = PROGRESS_SECONDS,
    window_rows: int = DEFAULT_CAPACITY,
) -> ProcessingResult:
    """Clean one raw object generation once; a later call returns the recorded outcome.

    Concurrent deliveries of one generation process it once: the first takes the lease,
    the others get ``LeaseHeldError`` (transient) and, redelivered, the outcome.
    ``chunk_rows`` is the Parquet row-group size; ``block_bytes`` the CSV text parsed
    and cleaned at a time; a progress line is logged every ``progress_seconds``;
    ``window_rows`` distinct rows are checked for repeats in memory, the rest spilled.
    """
    if ref.bucket != storage.bucket:
        raise BadRequestError(f"bucket {ref.bucket!r} is not this pipeline's data bucket")
    if not ref.name.startswith(RAW_PREFIX):
        raise BadRequestError(
            f"object {ref.name!r} is outside {RAW_PREFIX}; only uploads are processed"
        )
    previous = _previous_outcome(storage, ref)
    if previous is not None:
        return previous
    lease = acquire(storage, processing_lease_object(ref), seconds=lease_seconds, clock=clock)
    try:
        # The attempt that held the lease before us may have finished since our check.
        return _previous_outcome(storage, ref) or _clean(
            storage,
            ref,
            _Cleaner(schema, chunk_rows, block_bytes, progress_seconds),
            Deduplicator(storage, digest_spill_prefix(ref), window_rows),
        )
    finally:
        lease.release()


def _clean(
    storage: Storage, ref: ObjectRef, cleaner: _Cleaner, deduplicator: Deduplicator
) -> ProcessingResult:
    start = log.started()
    try:
        with (
            storage.open_read(ref.name, ref.generation) as source,
            storage.open_write(processed_object(ref), content_type=PARQUET_CONTENT_TYPE) as sink,
        ):
            cleaner.run(source, sink, ref, deduplicator)
            far_duplicates = deduplicator.far_duplicates()
            if not len(far_duplicates):
                cleaner.check_result()
        if len(far_duplicates):
            _write_without(storage, ref, cleaner, far_duplicates)
    except FileRejectedError as rejection:
        raise _record_rejection(storage, ref, rejection, cleaner, start) from None
    finally:
        deduplicator.close()
    stats = cleaner.stats_document(ref)
    _write_once(storage, stats_object(ref), stats)
    log.info(
        "processed upload",
        object=ref.name,
        generation=ref.generation,
        rows_in=stats["rows_in"],
        rows_out=stats["rows_out"],
        duration_ms=log.elapsed_ms(start),
    )
    return ProcessingResult(stats)


def _write_without(
    storage: Storage, ref: ObjectRef, cleaner: _Cleaner, rows: np.ndarray[Any, Any]
) -> None:
    """The second pass of an upload whose repeats lay further apart than the window:
    ``processed_object`` again without the kept rows numbered ``rows``, as
    ``deduplicated_object``; the first pass's object is deleted either way."""
    written = storage.stat(processed_object(ref))
    assert written is not None  # the first pass has just written it
    try:
        with (
            storage.open_read(processed_object(ref), written.generation) as source,
            storage.open_write(deduplicated_object(ref), content_type=PARQUET_CONTENT_TYPE) as sink,
        ):
            # Row group by row group through a 4 MiB buffer: pre-buffering read far ahead
            # (peak RSS 322 -> 251 MB on 3M rows with 2M far repeats).
            first_pass = pq.ParquetFile(source, pre_buffer=False, buffer_size=4 * 2**20)
            cleaner.rerun(first_pass, sink, rows)
            cleaner.output_object = deduplicated_object(ref)
            cleaner.check_result()
    finally:
        storage.delete(processed_object(ref))


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
    storage: Storage,
    ref: ObjectRef,
    rejection: FileRejectedError,
    cleaner: _Cleaner,
    start: float,
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
    # event and reason are a contract: the log-based metric of rejections counts them.
    log.warning(
        "rejected upload",
        event=LogEvent.UPLOAD_REJECTED,
        reason=rejection.reason,
        object=ref.name,
        generation=ref.generation,
        rows_in=cleaner.rows_in,
        duration_ms=log.elapsed_ms(start),
    )
    return DataRejectedError(
        rejection.reason, rejection_object=rejection_object(ref), detail=rejection.detail
    )


@dataclass
class _Cleaner:
    schema: DatasetSchema
    row_group_rows: int
    block_bytes: int
    progress_seconds: float
    rows_in: int = 0
    rows_out: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # the first row of each reason
    class_counts: Counter[str] = field(default_factory=Counter)
    features: tuple[str, ...] = ()
    feature_stats: FeatureStats = field(default_factory=lambda: FeatureStats.empty(0))
    output_object: str | None = None  # where the rows went, if not processed_object

    def run(
        self, source: IO[bytes], sink: IO[bytes], ref: ObjectRef, deduplicator: Deduplicator
    ) -> None:
        cells, blocks = csv_source.header(
            csv_source.blocks(csv_source.decoded(source), self.block_bytes)
        )
        columns = layout(cells, self.schema.target_column, self.schema.feature_columns)
        self.features = columns.features
        self.feature_stats = FeatureStats.empty(len(self.features))
        arrow_schema = pa.schema(
            [(name, pa.float64()) for name in self.features]
            + [(self.schema.target_column, pa.string())]
        )
        progress = _Progress(ref, self.progress_seconds)
        with _ParquetOutput(sink, arrow_schema, self.row_group_rows) as output:
            for block, parsed in csv_source.parsed_ahead(
                blocks, len(columns.names), columns.positions
            ):
                cleaned = clean(parsed.columns, columns)
                self._count(block, parsed, cleaned, columns)
                self._keep_new(cleaned, deduplicator, output)
                progress.advance(len(block.data), self.rows_in)
            output.finish()
        progress.finish(self.rows_in)

    def _count(
        self,
        block: csv_source.Block,
        parsed: csv_source.ParsedBlock,
        cleaned: CleanBlock,
        columns: Layout,
    ) -> None:
        self.rows_in += parsed.columns.num_rows + parsed.wrong_field_count
        self.rejections.update(cleaned.rejections)
        if parsed.wrong_field_count:
            self.rejections[ROW_WRONG_FIELD_COUNT] += parsed.wrong_field_count
        unnamed = {
            reason: first
            for reason, first in cleaned.first_rejected.items()
            if reason not in self.examples
        }
        ragged = bool(parsed.wrong_field_count) and ROW_WRONG_FIELD_COUNT not in self.examples
        if unnamed or ragged:
            self._name_examples(block, unnamed, ragged, len(columns.names))

    def _name_examples(
        self,
        block: csv_source.Block,
        unnamed: dict[str, tuple[int, str]],
        ragged: bool,
        field_count: int,
    ) -> None:
        """The line of each reason's first row: the block is read once more, by the csv
        module, which happens at most once per reason and upload."""
        wanted = {row: reason for reason, (row, _) in unnamed.items()}
        row = 0
        for line, fields in csv_source.record_lines(block):
            if fields != field_count:
                if ragged:
                    detail = f"{fields} fields where the header has {field_count}"
                    self.examples[ROW_WRONG_FIELD_COUNT] = f"line {line}: {detail}"
                    ragged = False
                continue
            if row in wanted:
                reason = wanted.pop(row)
                self.examples[reason] = f"line {line}: {unnamed[reason][1]}"
            row += 1
            if not wanted and not ragged:
                return

    def _keep_new(
        self, cleaned: CleanBlock, deduplicator: Deduplicator, output: _ParquetOutput
    ) -> None:
        """The rows of the block not seen before, in order; the first occurrence stays."""
        new = deduplicator.new_rows(row_digests(cleaned.features, cleaned.label_keys))
        kept = int(new.sum())
        if kept < len(new):
            self.rejections[ROW_DUPLICATE] += len(new) - kept
        if kept == len(new):
            self._keep(cleaned.features, cleaned.labels, output)
        elif kept:
            self._keep(cleaned.features[:, new], cleaned.labels.filter(arrow_mask(new)), output)

    def rerun(self, written: pq.ParquetFile, sink: IO[bytes], drop: np.ndarray[Any, Any]) -> None:
        """The rows ``written`` (in kept order) but those numbered ``drop`` (ascending,
        repeats of earlier rows) to ``sink``, with the counts and statistics redone."""
        self.rejections[ROW_DUPLICATE] += len(drop)
        self.rows_out = 0
        self.class_counts = Counter()
        self.feature_stats = FeatureStats.empty(len(self.features))
        first = 0  # the number of the batch's first row
        with _ParquetOutput(sink, written.schema_arrow, self.row_group_rows) as output:
            for batch in written.iter_batches(batch_size=self.row_group_rows):
                keep = np.ones(batch.num_rows, dtype=bool)
                start, end = np.searchsorted(drop, [first, first + batch.num_rows])
                keep[drop[start:end] - first] = False
                first += batch.num_rows
                kept = batch.filter(arrow_mask(keep))
                features = np.stack(
                    [_float_values(kept.column(index)) for index in range(len(self.features))]
                )
                self._keep(features, kept.column(len(self.features)), output)
            output.finish()

    def _keep(
        self,
        features: np.ndarray[Any, np.dtype[np.float64]],
        labels: pa.Array,
        output: _ParquetOutput,
    ) -> None:
        """Rows that stay: counted, in the statistics, on their way to the Parquet."""
        if not len(labels):
            return
        self.rows_out += len(labels)
        for entry in pc.value_counts(labels).to_pylist():
            self.class_counts[entry["values"]] += entry["counts"]
        self.feature_stats = self.feature_stats.merge(FeatureStats.of(features))
        columns = [*(arrow_numbers(values) for values in features), labels]
        output.add(pa.Table.from_arrays(columns, schema=output.schema))

    def check_result(self) -> None:
        if self.rows_in == 0:
            raise FileRejectedError(NO_VALID_ROWS, "the file has a header and no data rows")
        if self.rows_out == 0:
            raise FileRejectedError(
                NO_VALID_ROWS,
                f"no row survived cleaning ({self.rows_in} rows in; rejected: "
                f"{dict(sorted(self.rejections.items()))}; first of each: "
                f"{'; '.join(self.examples[reason] for reason in sorted(self.examples))})",
            )
        if self.rows_out < self.schema.min_rows:
            raise FileRejectedError(
                TOO_FEW_ROWS,
                f"{self.rows_out} valid rows, at least {self.schema.min_rows} are required",
            )
        if len(self.class_counts) < 2:
            raise FileRejectedError(
                TOO_FEW_CLASSES,
                f"only one class {sorted(self.class_counts)} in {self.schema.target_column!r}; "
                "a classifier needs at least 2",
            )

    def stats_document(self, ref: ObjectRef) -> dict[str, Any]:
        return {
            "source": ref.to_json(),
            "processed_object": self.output_object or processed_object(ref),
            "stats_object": stats_object(ref),
            "target_column": self.schema.target_column,
            "features": list(self.features),
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rejections": dict(sorted(self.rejections.items())),
            "rejection_examples": dict(sorted(self.examples.items())),
            "feature_stats": self.feature_stats.to_json(self.features),
            "class_counts": dict(sorted(self.class_counts.items())),
        }


class _ParquetOutput:
    """Row groups of exactly ``row_group_rows`` rows (the last one may be smaller),
    encoded and uploaded on a thread, one at a time, while the next block is cleaned."""

    def __init__(self, sink: IO[bytes], arrow_schema: pa.Schema, row_group_rows: int) -> None:
        self._sink = sink
        self.schema = arrow_schema
        self._row_group_rows = row_group_rows
        self._pending: list[pa.Table] = []  # rows of the next row groups
        self._writer: pq.ParquetWriter | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-write")
        self._last_write: Future[None] | None = None

    def __enter__(self) -> _ParquetOutput:
        return self

    def __exit__(self, *exception: object) -> None:
        self._thread.shutdown(wait=True)

    def add(self, rows: pa.Table) -> None:
        self._pending.append(rows)
        self._write(final=False)

    def finish(self) -> None:
        self._write(final=True)
        self._wait()
        if self._writer is not None:
            self._writer.close()

    def _write(self, *, final: bool) -> None:
        pending = sum(table.num_rows for table in self._pending)
        full = pending if final else pending - pending % self._row_group_rows
        if not full:
            return
        rows = pa.concat_tables(self._pending)
        self._pending = [rows.slice(full)] if full < pending else []
        if self._writer is None:
            # Dictionary pages only for the labels: distinct floats would fill a
            # dictionary only to have it dropped, at several times the cost of the write.
            self._writer = pq.ParquetWriter(
                self._sink,
                self.schema,
                compression="snappy",
                use_dictionary=[self.schema.names[-1]],
            )
        self._wait()  # one write in flight: memory holds at most two row groups' worth
        self._last_write = self._thread.submit(
            self._writer.write_table, rows.slice(0, full), row_group_size=self._row_group_rows
        )

    def _wait(self) -> None:
        if self._last_write is not None:
            self._last_write.result()
            self._last_write = None


def _float_values(column: pa.Array) -> np.ndarray[Any, np.dtype[np.float64]]:
    """A view of a float64 column without nulls (``to_numpy`` would import pandas)."""
    values: np.ndarray[Any, np.dtype[np.float64]] = np.frombuffer(
        column.buffers()[1], dtype=np.float64, count=len(column), offset=column.offset * 8
    )
    return values


class _Progress:
    """Logs rows and MB of CSV text so far, and the rate, every ``seconds``."""

    def __init__(self, ref: ObjectRef, seconds: float) -> None:
        self._ref = ref
        self._seconds = seconds
        self._started = self._last = time.monotonic()
        self._bytes = 0

    def advance(self, block_bytes: int, rows: int) -> None:
        self._bytes += block_bytes
        now = time.monotonic()
        if now - self._last >= self._seconds:
            self._last = now
            self._log("processing progress", rows, now)

    def finish(self, rows: int) -> None:
        if self._last > self._started:  # only uploads long enough to have shown progress
            self._log("processing read the whole upload", rows, time.monotonic())

    def _log(self, message: str, rows: int, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        log.info(
            message,
            object=self._ref.name,
            generation=self._ref.generation,
            rows_in=rows,
            mb_read=round(self._bytes / 2**20, 1),
            # Three decimals: a small upload on a busy machine is slow, not at 0 MB/s.
            mb_per_second=round(self._bytes / 2**20 / elapsed, 3),
            elapsed_seconds=round(elapsed, 1),
        )
