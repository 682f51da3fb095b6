"""The processed data in the bucket: a Parquet dataset of numbered parts under a prefix
(``contract.part_object``), each part written in one upload.

``DatasetWriter`` stores the parts ``ParquetOutput`` makes and remembers them, so that
a run that fails deletes what it wrote; ``open_part`` reads one part back at a given
generation, row group by row group. Readers are given the prefix and the number of
parts: nothing here lists the bucket.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow.parquet as pq

from pipeline_core import logging as log
from pipeline_core.contract import part_object
from pipeline_core.errors import PipelineError
from pipeline_core.parquet_output import PARQUET_CONTENT_TYPE
from pipeline_core.storage import Storage

# Read a part a row group at a time through this buffer: pre-buffering reads far ahead
# (peak RSS 322 -> 251 MB on 3M rows with 2M far repeats).
READ_BUFFER_BYTES = 4 * 2**20


@dataclass(frozen=True)
class StoredPart:
    name: str
    generation: int


class DatasetWriter:
    """Stores parts 0, 1, ... under ``dataset``, in the order they come."""

    def __init__(self, storage: Storage, dataset: str) -> None:
        self._storage = storage
        self.dataset = dataset
        self.written: list[StoredPart] = []

    def store(self, data: bytes) -> None:
        name = part_object(self.dataset, len(self.written))
        generation = self._storage.write(name, data, content_type=PARQUET_CONTENT_TYPE)
        self.written.append(StoredPart(name, generation))

    def discard(self) -> None:
        """Deletes the parts written, each by its generation and for good (the bucket
        keeps versions): a concurrent attempt's newer generation of a part stays. Every
        part is tried; one that cannot be deleted now is logged, so that a failed run's
        own error is the one raised."""
        for part in self.written:
            try:
                self._storage.delete_version(part.name, part.generation)
            except PipelineError as error:
                log.warning(
                    "could not delete a part of a failed run", part=part.name, error=str(error)
                )
        self.written = []


@contextmanager
def open_part(storage: Storage, part: StoredPart) -> Iterator[pq.ParquetFile]:
    with storage.open_read(part.name, part.generation) as source:
        yield pq.ParquetFile(source, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
