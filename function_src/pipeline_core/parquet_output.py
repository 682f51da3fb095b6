"""Kept rows -> Parquet parts, row group by row group, encoded and stored while the next
block is cleaned.

Nothing here knows about cleaning or storage: ``ParquetOutput`` takes Arrow tables of
any size, writes row groups of a fixed number of rows, a fixed number of row groups to
a part, and hands each finished part (a whole Parquet file, in bytes) to
``store_part``. Encoding runs on one thread and storing on another, one of each in
flight, so the cleaning, the encoding of one part and the upload of the one before
overlap.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
# Parquet bytes a row takes, at most, with distinct float64 features (plain encoded;
# compression can only shrink them) and a dictionary-encoded label: 8 a feature, 1 more.
FEATURE_BYTES = 8
LABEL_BYTES = 1


def rows_per_part(part_bytes: int, features: int) -> int:
    """How many rows of ``features`` float features and a label fit ``part_bytes``."""
    return part_bytes // (FEATURE_BYTES * features + LABEL_BYTES)


class ParquetOutput:
    """Row groups of exactly ``row_group_rows`` rows (the last one may be smaller) and
    parts of ``part_rows`` rows rounded down to whole row groups (at least one); the
    parts are stored in order, and ``parts`` counts them."""

    def __init__(
        self,
        store_part: Callable[[bytes], None],
        arrow_schema: pa.Schema,
        row_group_rows: int,
        part_rows: int,
    ) -> None:
        self._store_part = store_part
        self.schema = arrow_schema
        self._row_group_rows = row_group_rows
        self._part_rows = max(1, part_rows // row_group_rows) * row_group_rows
        self.parts = 0
        self._pending: list[pa.Table] = []  # rows of the next row groups
        self._rows_in_part = 0  # rows sent to the encoder for the part being written
        self._buffer = pa.BufferOutputStream()
        self._writer: pq.ParquetWriter | None = None
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-write")
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-store")
        self._last_write: Future[None] | None = None
        self._last_store: Future[None] | None = None

    def __enter__(self) -> ParquetOutput:
        return self

    def __exit__(self, *exception: object) -> None:
        self._encoder.shutdown(wait=True)
        self._uploader.shutdown(wait=True)

    def add(self, rows: pa.Table) -> None:
        self._pending.append(rows)
        self._write(final=False)

    def finish(self) -> None:
        """Writes the rest and waits until every part is stored (its error raised)."""
        self._write(final=True)
        self._wait_for_write()
        if self._writer is not None:
            self._encoder.submit(self._close_part).result()
        self._wait_for_store()

    def _write(self, *, final: bool) -> None:
        pending = sum(table.num_rows for table in self._pending)
        full = pending if final else pending - pending % self._row_group_rows
        if not full:
            return
        rows = pa.concat_tables(self._pending)
        self._pending = [rows.slice(full)] if full < pending else []
        start = 0
        while start < full:
            # Never across a part's end: a part holds whole row groups of this run.
            size = min(full - start, self._part_rows - self._rows_in_part)
            self._rows_in_part += size
            closes_part = self._rows_in_part == self._part_rows
            if closes_part:
                self._rows_in_part = 0
            self._wait_for_write()  # one slice (a part at most) encoding at a time
            self._last_write = self._encoder.submit(
                self._encode, rows.slice(start, size), closes_part
            )
            start += size

    def _encode(self, rows: pa.Table, closes_part: bool) -> None:
        if self._writer is None:
            # Dictionary pages only for the labels: distinct floats would fill a
            # dictionary only to have it dropped, at several times the cost of the write.
            # Features are stored uncompressed: snappy finds nothing to take out of
            # float64 values that are not repeated (0.5% of a part of random ones) and
            # costs 30% of the write; repeated values are what a dictionary is for.
            label = self.schema.names[-1]
            self._writer = pq.ParquetWriter(
                self._buffer,
                self.schema,
                compression={name: "none" for name in self.schema.names[:-1]} | {label: "snappy"},
                use_dictionary=[label],
            )
        self._writer.write_table(rows, row_group_size=self._row_group_rows)
        if closes_part:
            self._close_part()

    def _close_part(self) -> None:
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        # An Arrow buffer, not a BytesIO: the writer fills it without taking the GIL,
        # so the cleaning runs meanwhile (1 GB over the local disk was 5-7% slower
        # with a BytesIO than writing to a file); the copy into bytes is made on the
        # uploading thread.
        part, self._buffer = [self._buffer.getvalue()], pa.BufferOutputStream()
        self._wait_for_store()  # one part uploading while the next one fills
        self._last_store = self._uploader.submit(self._store, part)
        self.parts += 1

    def _store(self, part: list[pa.Buffer]) -> None:
        """Stores the part in ``part`` (a list of one, emptied): the Arrow buffer is let
        go as soon as its bytes are copied, before the upload, which holds them and the
        request's body (the task's own arguments would keep it until the end)."""
        data = part.pop().to_pybytes()
        self._store_part(data)

    def _wait_for_write(self) -> None:
        if self._last_write is not None:
            self._last_write.result()
            self._last_write = None

    def _wait_for_store(self) -> None:
        if self._last_store is not None:
            self._last_store.result()
            self._last_store = None
