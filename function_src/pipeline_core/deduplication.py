"""Exact duplicate detection over a whole upload in bounded memory.

An exact answer for every row needs every distinct row's digest somewhere: 16 bytes a
row, 450 MB for the 28M rows of a 1 GB upload, more than a function should hold. So
memory holds one window (a ``DigestSet`` of ``window_rows`` digests, 32 MB): a row
whose digest is in the window is a duplicate at once, the others are kept and their
digests added. A full window is spilled to the object store, partitioned by the top
bits of the digest into ``SPILL_RANGES`` objects (digest, row number), and a new one
starts, so the common case (duplicates close together, or none) costs one hash probe
per row and a sequential write.

At the end, if anything was spilled, each range is read back across all windows and
sorted: a digest held by two windows marks the later row (by row number) a duplicate
the window could not see. ``far_duplicates`` returns those rows; the caller drops
them in a second pass over what it wrote, which only an upload with repeats further
apart than a window pays for. A spilled object holds its columns one after the other
(first lanes, second lanes, row numbers), so the first look, at the first lanes only,
is a ranged read of 8 of its 20 bytes a digest. A range holds 1/16 of all digests:
35 MB at 28M rows.

Cloud Run's /tmp is memory, so the spill goes to the bucket, not to local disk.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline_core.digest_set import DEFAULT_CAPACITY, DigestSet
from pipeline_core.storage import Storage

RANGE_BITS = 4
SPILL_RANGES = 1 << RANGE_BITS  # ranges of the first lane, by its top bits
# Object-store round trips overlap: a spill is 16 small writes, a range 1 read a window.
SPILL_THREADS = 8
# Writes of one spill queued or in flight at a time: each holds its range's records and
# the client's copies of them (a multipart request body). 4 instead of all 16: 5-14 MB
# less peak RSS at 10M rows through fake-gcs-server, for a wait of about three round
# trips at each spill (docs/FUNCTIONS.md).
SPILL_WRITES_IN_FLIGHT = 4
SPILL_CONTENT_TYPE = "application/octet-stream"
# One spilled digest: both lanes and the row's number within its window. An object
# stores each of these fields as a column of its own, in this order.
SPILLED = np.dtype([("key", "<u8"), ("check", "<u8"), ("row", "<u4")])

_Rows = np.ndarray[Any, np.dtype[np.int64]]


class Deduplicator:
    """Which kept rows are new, in the order they are kept; ``prefix`` names the
    objects a spill writes (under the upload's processed/ folder)."""

    def __init__(self, storage: Storage, prefix: str, window_rows: int = DEFAULT_CAPACITY) -> None:
        self._storage = storage
        self._prefix = prefix
        self._window = DigestSet(window_rows)
        self._window_start = 0  # the number of the window's first kept row
        self._spilled_starts: list[int] = []  # the first row number of each spill
        self._spilled_sizes: list[list[int]] = []  # digests in each range of each spill
        self._io = ThreadPoolExecutor(max_workers=SPILL_THREADS, thread_name_prefix="spill")
        self._writes: list[Future[int]] = []

    def new_rows(self, digests: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, Any]:
        """For each digest (rows of shape (n, 2)), whether its row is new so far as the
        window can tell; the new ones are the next kept rows."""
        flags = []
        for start in range(0, len(digests), self._window.capacity):
            piece = digests[start : start + self._window.capacity]
            if len(piece) > self._window.room:
                self._spill()
            flags.append(self._window.add_new(piece))
        return np.concatenate(flags) if flags else np.zeros(0, dtype=bool)

    def far_duplicates(self) -> _Rows:
        """The numbers (in kept order, ascending) of the kept rows whose digest an
        earlier window held: the duplicates no window saw. Empty if nothing spilled."""
        if not self._spilled_starts:
            return np.zeros(0, dtype=np.int64)
        self._spill()
        self._finish_writes()
        self._window.release()  # the ranges read back need the room
        repeats = [self._repeated_rows(part) for part in range(SPILL_RANGES)]
        return np.sort(np.concatenate(repeats))

    def close(self) -> None:
        """Deletes whatever was spilled; safe to call more than once."""
        try:
            self._finish_writes()
        finally:
            names = [
                self._name(window, part)
                for window in range(len(self._spilled_starts))
                for part in range(SPILL_RANGES)
            ]
            self._spilled_starts, self._spilled_sizes = [], []
            list(self._io.map(self._storage.delete, names))
            self._io.shutdown(wait=True)

    def _spill(self) -> None:
        keys, checks = self._window.digests()
        if not len(keys):
            return
        self._finish_writes()  # one spill in flight: its records are the only copy
        parts = (keys >> np.uint64(64 - RANGE_BITS)).astype(np.uint8)
        window = len(self._spilled_starts)
        sizes = []
        for part in range(SPILL_RANGES):
            # One range at a time: memory holds the window and one range's columns, plus
            # the bytes of at most SPILL_WRITES_IN_FLIGHT writes.
            rows = np.flatnonzero(parts == part)
            columns = b"".join(
                (keys[rows].tobytes(), checks[rows].tobytes(), rows.astype("<u4").tobytes())
            )
            if len(self._writes) >= SPILL_WRITES_IN_FLIGHT:
                self._writes.pop(0).result()
            self._writes.append(
                self._io.submit(
                    self._storage.write,
                    self._name(window, part),
                    columns,
                    content_type=SPILL_CONTENT_TYPE,
                )
            )
            sizes.append(len(rows))
        self._spilled_sizes.append(sizes)
        self._spilled_starts.append(self._window_start)
        self._window_start += len(keys)
        self._window.clear()

    def _finish_writes(self) -> None:
        writes, self._writes = self._writes, []
        for write in writes:
            write.result()

    def _repeated_rows(self, part: int) -> _Rows:
        """Of each digest in this range held by more than one window, the rows of all
        windows but the first. Within a window digests are distinct, so a first lane
        seen twice is rare: only then are the checks and row numbers read as well."""
        sizes = [spill[part] for spill in self._spilled_sizes]
        if not self._first_lane_repeats(part, sizes):
            return np.zeros(0, dtype=np.int64)
        records = np.concatenate(
            list(self._io.map(self._records, range(len(sizes)), [part] * len(sizes)))
        )
        starts = np.array(self._spilled_starts, dtype=np.int64)
        rows = np.repeat(starts, sizes) + records["row"]
        order = np.lexsort((rows, records["check"], records["key"]))
        ordered = records[order]
        same = (ordered["key"][1:] == ordered["key"][:-1]) & (
            ordered["check"][1:] == ordered["check"][:-1]
        )
        repeated: _Rows = rows[order][1:][same]
        return repeated

    def _first_lane_repeats(self, part: int, sizes: list[int]) -> bool:
        """Whether two windows hold a digest with the same first lane in this range;
        memory holds the range's first lanes only (8 bytes a digest)."""
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        keys = np.empty(offsets[-1], dtype=np.uint64)

        def copy_keys(window: int) -> None:
            first_lanes = self._storage.read_range(self._name(window, part), 0, 8 * sizes[window])
            keys[offsets[window] : offsets[window + 1]] = np.frombuffer(first_lanes, "<u8")

        list(self._io.map(copy_keys, range(len(sizes))))
        keys.sort()
        return bool((keys[1:] == keys[:-1]).any())

    def _records(self, window: int, part: int) -> np.ndarray[Any, Any]:
        count = self._spilled_sizes[window][part]
        data = self._storage.read(self._name(window, part)).data
        records = np.empty(count, dtype=SPILLED)
        for field, offset in (("key", 0), ("check", 8 * count), ("row", 16 * count)):
            records[field] = np.frombuffer(data, SPILLED[field], count, offset)
        return records

    def _name(self, window: int, part: int) -> str:
        return f"{self._prefix}{window:06d}-{part:02d}.digests"
