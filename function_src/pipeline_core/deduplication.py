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

import collections
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
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
_Lane = np.ndarray[Any, np.dtype[np.uint64]]


@dataclass
class _Spill:
    """One window in the bucket: its first row's number and, for each range, how many
    digests its object holds and that object's generation (None until written)."""

    first_row: int
    sizes: list[int]
    generations: list[int | None]


class _Ranges:
    """The digests of one window grouped by range, in row order within each range."""

    def __init__(self, keys: _Lane, checks: _Lane) -> None:
        self.keys, self.checks = keys, checks
        self._range_of = (keys >> np.uint64(64 - RANGE_BITS)).astype(np.uint8)
        self.sizes = np.bincount(self._range_of, minlength=SPILL_RANGES)

    def rows(self, part: int) -> np.ndarray[Any, Any]:
        """The numbers, within the window, of the digests in range ``part``, in the order
        of their first lanes. A pass over the window each: one order of the whole window
        would hold 8 bytes a digest more while the window spills."""
        rows = np.flatnonzero(self._range_of == part)
        ordered: np.ndarray[Any, Any] = rows[np.argsort(self.keys[rows])]
        return ordered

    def columns(self, part: int) -> bytes:
        """The range as a spilled object stores it: ``SPILLED``'s fields one after the
        other, in the order of the first lanes, so that the ranges of all windows merge
        at the end instead of being sorted (4x faster at 10M rows)."""
        rows = self.rows(part)
        return b"".join(
            (self.keys[rows].tobytes(), self.checks[rows].tobytes(), rows.astype("<u4").tobytes())
        )


class Deduplicator:
    """Which kept rows are new, in the order they are kept; ``prefix`` names the
    objects a spill writes (under the upload's processed/ folder)."""

    def __init__(self, storage: Storage, prefix: str, window_rows: int = DEFAULT_CAPACITY) -> None:
        self._storage = storage
        self._prefix = prefix
        self._window = DigestSet(window_rows)
        self._window_start = 0  # the number of the window's first kept row
        self._spills: list[_Spill] = []
        self._io = ThreadPoolExecutor(max_workers=SPILL_THREADS, thread_name_prefix="spill-io")
        # Writes a spill while the window fills again, and reads a range back while
        # the one before is sorted.
        self._spiller = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spill")
        self._spilling: Future[None] | None = None
        self._removed: set[tuple[int, int]] = set()  # (window, range) deleted or deleting
        self._deletes: list[Future[None]] = []

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
        earlier window held: the duplicates no window saw. Empty if nothing spilled.
        The window held last is not spilled: it takes part from memory."""
        if not self._spills:
            return np.zeros(0, dtype=np.int64)
        self._wait_for_spill()
        last = _Ranges(*self._window.take())
        self._window.release()  # its table; the lanes taken stay until the end
        repeats = []
        upcoming = self._spiller.submit(self._first_lanes, 0, last)
        for part in range(SPILL_RANGES):
            first_lanes = upcoming.result()
            if part + 1 < SPILL_RANGES:  # read while this range is sorted
                upcoming = self._spiller.submit(self._first_lanes, part + 1, last)
            # Sorted runs, one a window: a stable sort merges them (timsort), in place and
            # without the GIL.
            first_lanes.sort(kind="stable")
            if (first_lanes[1:] == first_lanes[:-1]).any():
                repeats.append(self._repeated_rows(part, last))
            del first_lanes
            self._remove_range(part)
        return np.sort(np.concatenate(repeats)) if repeats else np.zeros(0, dtype=np.int64)

    def close(self) -> None:
        """Deletes whatever was spilled; safe to call more than once. Raises the first
        delete that failed, once every one was tried; a spill's own failure is the
        caller's to report (``new_rows`` or ``far_duplicates`` raised it), so it is
        only waited for here."""
        if self._spilling is not None:
            wait([self._spilling])
            self._spilling = None
        for part in range(SPILL_RANGES):
            self._remove_range(part)
        deletes, self._deletes = self._deletes, []
        wait(deletes)
        self._io.shutdown(wait=True)
        self._spiller.shutdown(wait=True)
        for delete in deletes:
            delete.result()

    def _spill(self) -> None:
        keys, checks = self._window.take()
        if not len(keys):
            return
        # One spill at a time: memory holds its window's lanes and the window filling.
        self._wait_for_spill()
        spill = _Spill(self._window_start, [0] * SPILL_RANGES, [None] * SPILL_RANGES)
        self._spills.append(spill)
        self._window_start += len(keys)
        self._spilling = self._spiller.submit(
            self._write, len(self._spills) - 1, spill, keys, checks
        )

    def _write(self, window: int, spill: _Spill, keys: _Lane, checks: _Lane) -> None:
        """Writes one window's ranges, one range's columns at a time plus the bytes of at
        most SPILL_WRITES_IN_FLIGHT writes."""
        ranges = _Ranges(keys, checks)
        spill.sizes = ranges.sizes.tolist()
        writes: collections.deque[tuple[int, Future[int]]] = collections.deque()
        for part in range(SPILL_RANGES):
            if len(writes) >= SPILL_WRITES_IN_FLIGHT:
                written, write = writes.popleft()
                spill.generations[written] = write.result()
            columns = ranges.columns(part)
            writes.append(
                (
                    part,
                    self._io.submit(
                        self._storage.write,
                        self._name(window, part),
                        columns,
                        content_type=SPILL_CONTENT_TYPE,
                    ),
                )
            )
        for written, write in writes:
            spill.generations[written] = write.result()

    def _wait_for_spill(self) -> None:
        if self._spilling is not None:
            spilling, self._spilling = self._spilling, None
            spilling.result()

    def _first_lanes(self, part: int, last: _Ranges) -> _Lane:
        """The first lanes of range ``part`` of every window: the spilled ones read back
        (8 of each digest's 20 bytes), the last window's from memory."""
        sizes = [spill.sizes[part] for spill in self._spills]
        offsets = np.cumsum([0, *sizes])
        rows = last.rows(part)
        keys = np.empty(offsets[-1] + len(rows), dtype=np.uint64)
        keys[offsets[-1] :] = last.keys[rows]

        def copy_keys(window: int) -> None:
            first_lanes = self._storage.read_range(self._name(window, part), 0, 8 * sizes[window])
            keys[offsets[window] : offsets[window + 1]] = np.frombuffer(first_lanes, "<u8")

        list(self._io.map(copy_keys, range(len(sizes))))
        return keys

    def _repeated_rows(self, part: int, last: _Ranges) -> _Rows:
        """Of each digest in this range held by more than one window, the rows of all
        windows but the first. Within a window digests are distinct, so a first lane
        seen twice is rare: only then are the checks and row numbers read as well."""
        spilled = list(
            self._io.map(self._records, range(len(self._spills)), [part] * len(self._spills))
        )
        held = last.rows(part)
        in_memory = np.empty(len(held), dtype=SPILLED)
        in_memory["key"], in_memory["check"], in_memory["row"] = (
            last.keys[held],
            last.checks[held],
            held,
        )
        records = np.concatenate([*spilled, in_memory])
        starts = [spill.first_row for spill in self._spills] + [self._window_start]
        sizes = [spill.sizes[part] for spill in self._spills] + [len(in_memory)]
        rows = np.repeat(np.array(starts, dtype=np.int64), sizes) + records["row"]
        order = np.lexsort((rows, records["check"], records["key"]))
        ordered = records[order]
        same = (ordered["key"][1:] == ordered["key"][:-1]) & (
            ordered["check"][1:] == ordered["check"][:-1]
        )
        repeated: _Rows = rows[order][1:][same]
        return repeated

    def _records(self, window: int, part: int) -> np.ndarray[Any, Any]:
        count = self._spills[window].sizes[part]
        data = self._storage.read(self._name(window, part)).data
        records = np.empty(count, dtype=SPILLED)
        for field, offset in (("key", 0), ("check", 8 * count), ("row", 16 * count)):
            records[field] = np.frombuffer(data, SPILLED[field], count, offset)
        return records

    def _remove_range(self, part: int) -> None:
        """Deletes the objects of range ``part``, in the background: each by its
        generation and for good (the bucket keeps versions), or by name if its write
        never reported one."""
        for window, spill in enumerate(self._spills):
            if (window, part) in self._removed:
                continue
            self._removed.add((window, part))
            name, generation = self._name(window, part), spill.generations[part]
            if generation is None:
                self._deletes.append(self._io.submit(self._storage.delete, name))
            else:
                self._deletes.append(
                    self._io.submit(self._storage.delete_version, name, generation)
                )

    def _name(self, window: int, part: int) -> str:
        return f"{self._prefix}{window:06d}-{part:02d}.digests"
