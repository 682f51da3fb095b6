"""Kept rows -> a Parquet object, row group by row group, encoded while the next block
is cleaned.

Nothing here knows about cleaning or storage: ``ParquetOutput`` takes Arrow tables of
any size and writes row groups of a fixed number of rows to a binary sink (the object
store's resumable upload), one row group in flight on a thread of its own.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"


class ParquetOutput:
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

    def __enter__(self) -> ParquetOutput:
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
