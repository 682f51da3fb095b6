"""One upload's cleaning in a single process: the rules of ``cleaning`` over the blocks
``csv_source`` decodes, with what spans blocks (counts, the first example of each
rejection, duplicates across blocks, merged statistics, progress) and the kept rows on
their way to ``ParquetOutput``.

This is the single-process runner of the pure rules; ``processing`` wraps it in the
run-once orchestration (lease, recorded outcome). A distributed runner would replace
this module and keep the rules.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
from pipeline_core.contract import PROCESSED_PART_BYTES
from pipeline_core.deduplication import Deduplicator
from pipeline_core.events import ObjectRef
from pipeline_core.parquet_output import ParquetOutput, rows_per_part

# A long upload says how far it is this often (Cloud Logging, `devstack logs`).
PROGRESS_SECONDS = 5.0


@dataclass(frozen=True)
class PreparedBlock:
    """One block parsed, cleaned and its kept rows digested; its parsed columns are
    not kept (the worker's next block is parsed while this one is counted)."""

    rows: int  # records with the header's field count
    wrong_field_count: int  # records skipped for another field count
    cleaned: CleanBlock
    digests: np.ndarray[Any, np.dtype[np.uint64]]  # (kept rows, 2), ``row_digests``


@dataclass
class CleaningRun:
    """The counts of one upload's cleaning so far; ``run`` cleans it block by block,
    ``rerun`` drops the far repeats from what ``run`` wrote, ``check_result`` applies
    the whole-file rules to the totals."""

    target_column: str
    feature_columns: tuple[str, ...]  # empty: every column but the target
    min_rows: int
    row_group_rows: int
    part_rows: int | None  # None: as many as fit PROCESSED_PART_BYTES
    block_bytes: int
    progress_seconds: float
    rows_in: int = 0
    rows_out: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # the first row of each reason
    class_counts: Counter[str] = field(default_factory=Counter)
    features: tuple[str, ...] = ()
    feature_stats: FeatureStats = field(default_factory=lambda: FeatureStats.empty(0))

    def run(
        self,
        source: IO[bytes],
        store_part: Callable[[bytes], None],
        ref: ObjectRef,
        deduplicator: Deduplicator,
    ) -> None:
        """Cleans the upload ``source`` reads; the kept rows go, as Parquet parts, to
        ``store_part``."""
        # Whatever happens, the reading and preparing threads are done with ``source``
        # when this returns (``csv_source.Ahead``).
        with (
            csv_source.Ahead("csv-read-ahead") as reader,
            csv_source.Ahead("csv-prepare") as preparer,
        ):
            cells, blocks = csv_source.header(
                csv_source.blocks(csv_source.decoded(source), reader, self.block_bytes)
            )
            columns = layout(cells, self.target_column, self.feature_columns)
            self.features = columns.features
            self.feature_stats = FeatureStats.empty(len(self.features))
            progress = Progress(ref, self.progress_seconds)

            def prepare(block: csv_source.Block) -> PreparedBlock:
                """What one block needs on its own (pure), a block ahead of the counting
                and duplicate detection that need the blocks before it."""
                parsed = csv_source.parse(
                    block, len(columns.names), columns.positions, len(self.features)
                )
                cleaned = clean(parsed.columns, columns)
                return PreparedBlock(
                    parsed.columns.num_rows,
                    parsed.wrong_field_count,
                    cleaned,
                    row_digests(cleaned.features, cleaned.label_keys),
                )

            with self._output(store_part) as output:
                for block, prepared in csv_source.prepared_ahead(blocks, prepare, preparer):
                    self._count(block, prepared, columns)
                    self._keep_new(prepared, deduplicator, output)
                    progress.advance(len(block.data), self.rows_in)
                output.finish()
            progress.finish(self.rows_in)

    def _count(self, block: csv_source.Block, prepared: PreparedBlock, columns: Layout) -> None:
        self.rows_in += prepared.rows + prepared.wrong_field_count
        self.rejections.update(prepared.cleaned.rejections)
        if prepared.wrong_field_count:
            self.rejections[ROW_WRONG_FIELD_COUNT] += prepared.wrong_field_count
        unnamed = {
            reason: first
            for reason, first in prepared.cleaned.first_rejected.items()
            if reason not in self.examples
        }
        ragged = bool(prepared.wrong_field_count) and ROW_WRONG_FIELD_COUNT not in self.examples
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
        self, prepared: PreparedBlock, deduplicator: Deduplicator, output: ParquetOutput
    ) -> None:
        """The rows of the block not seen before, in order; the first occurrence stays."""
        cleaned = prepared.cleaned
        new = deduplicator.new_rows(prepared.digests)
        kept = int(new.sum())
        if kept < len(new):
            self.rejections[ROW_DUPLICATE] += len(new) - kept
        if not kept:
            return
        codes = cleaned.label_codes if kept == len(new) else cleaned.label_codes[new]
        # The classes counted by their codes in the block: no string is hashed again.
        for code, count in enumerate(np.bincount(codes, minlength=len(cleaned.spellings))):
            if count:
                self.class_counts[cleaned.spellings[code]] += int(count)
        if kept == len(new):
            self._keep(cleaned.features, cleaned.labels, output)
        else:
            self._keep(cleaned.features[:, new], cleaned.labels.filter(arrow_mask(new)), output)

    def _output(self, store_part: Callable[[bytes], None]) -> ParquetOutput:
        arrow_schema = pa.schema(
            [(name, pa.float64()) for name in self.features] + [(self.target_column, pa.string())]
        )
        part_rows = self.part_rows or rows_per_part(PROCESSED_PART_BYTES, len(self.features))
        return ParquetOutput(store_part, arrow_schema, self.row_group_rows, part_rows)

    def rerun(
        self,
        written: Iterable[pa.RecordBatch],
        store_part: Callable[[bytes], None],
        drop: np.ndarray[Any, Any],
    ) -> None:
        """The rows ``written`` (the batches of ``run``'s parts, in kept order) but
        those numbered ``drop`` (ascending, repeats of earlier rows) to ``store_part``,
        with the counts and statistics redone."""
        self.rejections[ROW_DUPLICATE] += len(drop)
        self.rows_out = 0
        self.class_counts = Counter()
        self.feature_stats = FeatureStats.empty(len(self.features))
        first = 0  # the number of the batch's first row
        with self._output(store_part) as output:
            for batch in written:
                keep = np.ones(batch.num_rows, dtype=bool)
                start, end = np.searchsorted(drop, [first, first + batch.num_rows])
                keep[drop[start:end] - first] = False
                first += batch.num_rows
                kept = batch.filter(arrow_mask(keep))
                features = np.stack(
                    [_float_values(kept.column(index)) for index in range(len(self.features))]
                )
                labels = kept.column(len(self.features))
                for entry in pc.value_counts(labels).to_pylist():
                    self.class_counts[entry["values"]] += entry["counts"]
                self._keep(features, labels, output)
            output.finish()

    def _keep(
        self,
        features: np.ndarray[Any, np.dtype[np.float64]],
        labels: pa.Array,
        output: ParquetOutput,
    ) -> None:
        """Rows that stay (their classes counted by the caller): counted, in the
        statistics, on their way to the Parquet."""
        if not len(labels):
            return
        self.rows_out += len(labels)
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
        if self.rows_out < self.min_rows:
            raise FileRejectedError(
                TOO_FEW_ROWS,
                f"{self.rows_out} valid rows, at least {self.min_rows} are required",
            )
        if len(self.class_counts) < 2:
            raise FileRejectedError(
                TOO_FEW_CLASSES,
                f"only one class {sorted(self.class_counts)} in {self.target_column!r}; "
                "a classifier needs at least 2",
            )

    def outcome(self) -> dict[str, Any]:
        """The counts and statistics of the run, as the recorded outcome holds them."""
        return {
            "target_column": self.target_column,
            "features": list(self.features),
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rejections": dict(sorted(self.rejections.items())),
            "rejection_examples": dict(sorted(self.examples.items())),
            "feature_stats": self.feature_stats.to_json(self.features),
            "class_counts": dict(sorted(self.class_counts.items())),
        }


def _float_values(column: pa.Array) -> np.ndarray[Any, np.dtype[np.float64]]:
    """A view of a float64 column without nulls (``to_numpy`` would import pandas)."""
    values: np.ndarray[Any, np.dtype[np.float64]] = np.frombuffer(
        column.buffers()[1], dtype=np.float64, count=len(column), offset=column.offset * 8
    )
    return values


class Progress:
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
