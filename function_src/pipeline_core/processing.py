"""process_data: raw CSV upload -> cleaned Parquet + stats, or a recorded rejection.

The run-once orchestration: the lease, the outcome recorded once (stats or rejection)
and the objects an upload's processing reads and writes. The work is in four layers
below: ``csv_source`` turns the raw bytes into record-aligned blocks, the pure rules of
``cleaning`` clean each block's columns, ``cleaning_run`` runs them over the whole
upload (duplicates across blocks, merged statistics, progress) and ``parquet_output``
writes the kept rows row group by row group into parts (``parquet_dataset`` stores
them). Memory holds two blocks (the next one is prepared while this one is counted), a
row group or two, a part filling and one uploading (and its bytes), a window of row digests
(exact duplicate detection, ``deduplication``: the rest is spilled to the bucket) and
the running statistics, never the file. An upload with repeats further apart than the
window is written once more without them (``deduplicated_data``). A run that fails
deletes the parts it wrote.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline_core import logging as log
from pipeline_core.cleaning import FileRejectedError
from pipeline_core.cleaning_run import PROGRESS_SECONDS, CleaningRun
from pipeline_core.contract import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_MIN_ROWS,
    DEFAULT_TARGET_COLUMN,
    DEFAULT_TIMEOUT_SECONDS,
    RAW_PREFIX,
    LogEvent,
    deduplicated_data,
    digest_spill_prefix,
    processed_data,
    processing_lease_object,
    rejection_object,
    stats_object,
)
from pipeline_core.csv_source import DEFAULT_BLOCK_BYTES
from pipeline_core.deduplication import Deduplicator
from pipeline_core.digest_set import DEFAULT_CAPACITY
from pipeline_core.errors import (
    BadRequestError,
    DataRejectedError,
    PermanentError,
    PipelineError,
    PreconditionFailedError,
)
from pipeline_core.events import ObjectRef
from pipeline_core.leases import Clock, once, utc_now
from pipeline_core.parquet_dataset import DatasetWriter, StoredPart, open_part
from pipeline_core.storage import Storage, read_json, write_json


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
            "processed_data": self.stats["processed_data"],
            "processed_parts": self.stats["processed_parts"],
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
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    part_rows: int | None = None,
    lease_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    clock: Clock = utc_now,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    progress_seconds: float = PROGRESS_SECONDS,
    window_rows: int = DEFAULT_CAPACITY,
) -> ProcessingResult:
    """Clean one raw object generation once; a later call returns the recorded outcome.

    Concurrent deliveries of one generation process it once: the first takes the lease,
    the others get ``LeaseHeldError`` (transient) and, redelivered, the outcome.
    ``chunk_rows`` is the Parquet row-group size and ``part_rows`` the rows of a part
    (whole row groups; by default as many as fit ``contract.PROCESSED_PART_BYTES``);
    ``block_bytes`` the CSV text parsed and cleaned at a time; a progress line is
    logged every ``progress_seconds``; ``window_rows`` distinct rows are checked for
    repeats in memory, the rest spilled.
    """
    ref.check_bucket(storage.bucket)
    if not ref.name.startswith(RAW_PREFIX):
        raise BadRequestError(
            f"object {ref.name!r} is outside {RAW_PREFIX}; only uploads are processed"
        )
    return once(
        storage,
        processing_lease_object(ref),
        seconds=lease_seconds,
        clock=clock,
        recorded=lambda: _previous_outcome(storage, ref),
        work=lambda: _clean(
            storage,
            ref,
            CleaningRun(
                schema.target_column,
                schema.feature_columns,
                schema.min_rows,
                chunk_rows,
                part_rows,
                block_bytes,
                progress_seconds,
            ),
            Deduplicator(storage, digest_spill_prefix(ref), window_rows),
        ),
    )


def _clean(
    storage: Storage, ref: ObjectRef, cleaning_run: CleaningRun, deduplicator: Deduplicator
) -> ProcessingResult:
    start = log.started()
    output = DatasetWriter(storage, processed_data(ref))
    try:
        with storage.open_read(ref.name, ref.generation) as source:
            cleaning_run.run(source, output.store, ref, deduplicator)
        far_duplicates = deduplicator.far_duplicates()
        if len(far_duplicates):
            output = _write_without(storage, ref, cleaning_run, output, far_duplicates)
        else:
            cleaning_run.check_result()
    except FileRejectedError as rejection:
        _discard_unless_recorded(storage, ref, output)
        raise _record_rejection(storage, ref, rejection, cleaning_run, start) from None
    except BaseException:
        _discard_unless_recorded(storage, ref, output)
        raise
    finally:
        deduplicator.close()
    stats = {
        "source": ref.to_json(),
        "processed_data": output.dataset,
        "processed_parts": len(output.written),
        "stats_object": stats_object(ref),
        **cleaning_run.outcome(),
    }
    _write_once(storage, stats_object(ref), stats)
    log.info(
        "processed upload",
        object=ref.name,
        generation=ref.generation,
        rows_in=stats["rows_in"],
        rows_out=stats["rows_out"],
        parts=stats["processed_parts"],
        duration_ms=log.elapsed_ms(start),
    )
    return ProcessingResult(stats)


def _write_without(
    storage: Storage,
    ref: ObjectRef,
    cleaning_run: CleaningRun,
    first_pass: DatasetWriter,
    rows: np.ndarray[Any, Any],
) -> DatasetWriter:
    """The second pass of an upload whose repeats lay further apart than the window:
    the first pass's parts again without the kept rows numbered ``rows``, as
    ``deduplicated_data``; the first pass's parts are deleted either way."""
    output = DatasetWriter(storage, deduplicated_data(ref))
    try:
        cleaning_run.rerun(
            _batches(storage, first_pass.written, cleaning_run.row_group_rows), output.store, rows
        )
        cleaning_run.check_result()
    except BaseException:
        _discard_unless_recorded(storage, ref, output)
        raise  # the caller discards the first pass
    first_pass.discard()  # no longer named anywhere: one left behind is only logged
    return output


def _discard_unless_recorded(storage: Storage, ref: ObjectRef, output: DatasetWriter) -> None:
    """A failed run's parts are deleted, unless another attempt (one whose lease ours
    took over) has recorded its outcome meanwhile: the parts share their names, and
    the recorded outcome names them."""
    try:
        recorded = storage.stat(stats_object(ref)) is not None
    except PipelineError as error:  # the run's own error is the one raised
        log.warning("could not tell whether the parts can go", error=str(error))
        return
    if not recorded:
        output.discard()


def _batches(
    storage: Storage, parts: list[StoredPart], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The rows of ``parts`` in order, a batch at a time, one part open at a time."""
    for part in parts:
        with open_part(storage, part) as parquet:
            yield from parquet.iter_batches(batch_size=batch_rows)


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
        recorded = read_json(storage, stats_object(ref))
        if "processed_data" not in recorded:
            raise PermanentError(
                f"{stats_object(ref)} was recorded by an earlier version of the pipeline, "
                "whose processed data training can no longer read; upload the file again"
            )
        return ProcessingResult(recorded)
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
    cleaning_run: CleaningRun,
    start: float,
) -> DataRejectedError:
    record = {
        "source": ref.to_json(),
        "reason": rejection.reason,
        "detail": rejection.detail,
        "rows_in": cleaning_run.rows_in,
        "row_rejections": dict(sorted(cleaning_run.rejections.items())),
        "row_rejection_examples": dict(sorted(cleaning_run.examples.items())),
    }
    _write_once(storage, rejection_object(ref), record)
    # event and reason are a contract: the log-based metric of rejections counts them.
    log.warning(
        "rejected upload",
        event=LogEvent.UPLOAD_REJECTED,
        reason=rejection.reason,
        object=ref.name,
        generation=ref.generation,
        rows_in=cleaning_run.rows_in,
        duration_ms=log.elapsed_ms(start),
    )
    return DataRejectedError(
        rejection.reason, rejection_object=rejection_object(ref), detail=rejection.detail
    )
