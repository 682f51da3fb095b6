"""Exact duplicate detection over a whole upload in bounded memory.

An exact answer for every row needs every distinct row's digest somewhere: 16 bytes a
row, 450 MB for the 28M rows of a 1 GB upload, more than a function should hold. So
memory holds one window (a ``DigestSet`` of ``window_rows`` digests, 36 MB): a row
whose digest is in the window is a duplicate at once, the others are kept and their
digests added. A full window is handed to a thread that spills it to the object store
while the next window fills: its digests (both lanes and the row number), which the
window keeps in ``SPILL_RANGES`` ranges by the top bits of the first lane, are written
range by range, each nearly in the order of its first lanes, ``RANGES_PER_OBJECT``
ranges to an object, and each object's ranges are given back as soon as it is written.
The common case (duplicates close together, or none) costs one hash probe per row.

At the end, if anything was spilled, the ranges are read back across all windows, a
few at a time (``END_READ_BYTES``), and merged: a digest held by two windows marks the
later row (by row number) a duplicate the window could not see. The window held last is
not spilled; it takes part from memory. ``far_duplicates`` returns those rows; the
caller drops them in a second pass over what it wrote, which only an upload with
repeats further apart than a window pays for. An object holds its columns one after the
other (first lanes, second lanes, row numbers), so the first look, at the first lanes
only, is a ranged read of 8 of each digest's 20 bytes. Each object is deleted, by its
generation, as soon as its ranges are checked.

Each object-store request costs the client about 2 ms of CPU under the GIL: eight objects
a window instead of one a range, and two ranges a read at the end, are 220 requests
fewer at 10M rows. Larger objects would save more requests, but a spill's peak memory
is about twice an object (its columns and the client's copy of them): 5 MB objects
took a 1 GB upload's peak RSS 5 MB higher than 2.5 MB ones. Spilling on a thread of its
own holds the spilled window's unwritten ranges while the next window fills (a spill
takes about as long as a window takes to fill), where a spill the cleaning waits for
kept its thread waiting 1.1-1.2 s at 10M rows (0.02 s now). Before the window kept its
ranges apart, a spill held the whole window until its last object was written: 10M
rows peaked at 338-339 MB against 322-328 now, 28M rows at 331-332 against 320-323.

Cloud Run's /tmp is memory, so the spill goes to the bucket, not to local disk.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline_core.digest_set import DEFAULT_CAPACITY, RANGE_BITS, RANGES, DigestSet, HeldDigests
from pipeline_core.storage import Storage

SPILL_RANGES = RANGES  # ranges of the first lane, by its top bits, as the window keeps them
RANGES_PER_OBJECT = 2
SPILL_OBJECTS = SPILL_RANGES // RANGES_PER_OBJECT  # objects a spilled window makes
# A batch this small that a range of the window cannot take spills the window instead
# of being split further; an empty window's segment always takes it (a segment is at
# least a page of uint32 row numbers, 1024 entries).
SPLIT_ROWS_ABOVE = 1024
ORDER_BITS = 16  # of the first lane after the range's, that order a range (``_Ranges``)
# Reads at the end and deletes overlap: each costs a round trip.
SPILL_THREADS = 8
# The first lanes read back at a time at the end: an object's ranges if they fit, else
# one range; each window's in one read. 16 MiB: two ranges a read up to 14M rows.
END_READ_BYTES = 16 * 2**20
SPILL_CONTENT_TYPE = "application/octet-stream"
# One spilled digest: both lanes and the row's number within its window. An object
# stores each of these fields as a column of its own, in this order.
SPILLED = np.dtype([("key", "<u8"), ("check", "<u8"), ("row", "<u4")])

_Rows = np.ndarray[Any, np.dtype[np.int64]]
_Lane = np.ndarray[Any, np.dtype[np.uint64]]


@dataclass
class _Spill:
    """One window in the bucket: its first row's number, how many digests each range
    holds and the generation of each object (None until written)."""

    first_row: int
    sizes: list[int]
    generations: list[int | None]

    def offset(self, part: int) -> int:
        """Digests before range ``part`` in its object."""
        first = part - part % RANGES_PER_OBJECT
        return sum(self.sizes[first:part])

    def in_object(self, part: int) -> int:
        """Digests in the object that holds range ``part``."""
        first = part - part % RANGES_PER_OBJECT
        return sum(self.sizes[first : first + RANGES_PER_OBJECT])


class _Ranges:
    """The ranges of one window (``DigestSet.take``), each nearly in the order of its
    first lanes, so that the ranges of all windows merge at the end instead of being
    sorted (3x faster).

    Nearly: by 16 bits of the lane, a radix pass (numpy's stable sort of uint16 keys),
    0.3 ms a range of a full window against 3.4 ms for the order of whole lanes, which
    made a spill slower than the window filling up (so both windows' lanes were held).
    With about one digest a 16-bit bucket, the runs merge at the end 20% slower than
    sorted ones (57 against 47 ms a range at 28M rows; unordered ones take 146)."""

    def __init__(self, held: HeldDigests) -> None:
        self._held = held
        self.sizes = held.sizes

    def range(self, part: int) -> tuple[_Lane, _Lane, np.ndarray[Any, Any]]:
        """Range ``part``'s first lanes, second lanes and row numbers, in that order."""
        keys, checks, rows = self._held.range(part)
        below = np.uint64(64 - RANGE_BITS - ORDER_BITS)
        order = np.argsort((keys >> below).astype(np.uint16), kind="stable")
        return keys[order], checks[order], rows[order]

    def columns(self, spilled_object: int) -> bytes:
        """The object's ranges as it stores them: ``SPILLED``'s fields one after the
        other."""
        first = spilled_object * RANGES_PER_OBJECT
        ranges = [self.range(part) for part in range(first, first + RANGES_PER_OBJECT)]
        # Joined from the ordered columns themselves (tobytes would copy each again).
        return b"".join(ordered[field].data for field in range(3) for ordered in ranges)

    def release(self, spilled_object: int) -> None:
        """Gives the memory of the object's ranges back, once it is written."""
        first = spilled_object * RANGES_PER_OBJECT
        for part in range(first, first + RANGES_PER_OBJECT):
            self._held.release(part)


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
        # Writes a spill while the window fills again, and reads ranges back while the
        # ones before are merged.
        self._spiller = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spill")
        self._spilling: Future[None] | None = None
        self._removed: set[tuple[int, int]] = set()  # (window, object) deleted or deleting
        self._deletes: list[Future[None]] = []

    def new_rows(self, digests: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, Any]:
        """For each digest (rows of shape (n, 2)), whether its row is new so far as the
        window can tell; the new ones are the next kept rows."""
        flags = [
            self._add(digests[start : start + self._window.capacity])
            for start in range(0, len(digests), self._window.capacity)
        ]
        return np.concatenate(flags) if flags else np.zeros(0, dtype=bool)

    def _add(self, digests: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, Any]:
        """``new_rows`` of a batch of at most a window. One with room in the window but
        more rows of one range than its segment has left goes in by halves before the
        window spills: a segment counts every row of the batch, repeats too, but keeps
        only the new ones (a block mostly of one repeated row would spill every time)."""
        window = self._window
        new = window.add_new_if_it_fits(digests)
        if new is not None:
            return new
        if len(digests) <= window.room and len(digests) > SPLIT_ROWS_ABOVE:
            return self._add_halves(digests)
        self._spill()
        new = window.add_new_if_it_fits(digests)
        # None: more of one range than an empty segment holds.
        return new if new is not None else self._add_halves(digests)

    def _add_halves(self, digests: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, Any]:
        half = len(digests) // 2
        return np.concatenate([self._add(digests[:half]), self._add(digests[half:])])

    def far_duplicates(self) -> _Rows:
        """The numbers (in kept order, ascending) of the kept rows whose digest an
        earlier window held: the duplicates no window saw. Empty if nothing spilled."""
        if not self._spills:
            return np.zeros(0, dtype=np.int64)
        self._wait_for_spill()
        last = _Ranges(self._window.take())
        self._window.release()  # its table; the lanes taken stay until the end
        spilled_bytes = 8 * sum(sum(spill.sizes) for spill in self._spills)
        at_once = next(
            count
            for count in (RANGES_PER_OBJECT, 1)
            if count == 1 or spilled_bytes * count <= END_READ_BYTES * SPILL_RANGES
        )
        groups = [range(first, first + at_once) for first in range(0, SPILL_RANGES, at_once)]
        repeats = []
        upcoming = self._spiller.submit(self._first_lanes, groups[0], last)
        for number, group in enumerate(groups):
            first_lanes = upcoming.result()
            if number + 1 < len(groups):  # read while these are merged
                upcoming = self._spiller.submit(self._first_lanes, groups[number + 1], last)
            # Sorted runs, one a range and window: a stable sort merges them (timsort),
            # in place and without the GIL.
            first_lanes.sort(kind="stable")
            if (first_lanes[1:] == first_lanes[:-1]).any():
                repeats += [self._repeated_rows(part, last) for part in group]
            del first_lanes
            if group.stop % RANGES_PER_OBJECT == 0:
                self._remove_object(group.stop // RANGES_PER_OBJECT - 1)
        return np.sort(np.concatenate(repeats)) if repeats else np.zeros(0, dtype=np.int64)

    def close(self) -> None:
        """Deletes whatever was spilled; safe to call more than once. Raises the first
        delete that failed, once every one was tried; a spill's own failure is the
        caller's to report (``new_rows`` or ``far_duplicates`` raised it), so it is
        only waited for here."""
        if self._spilling is not None:
            wait([self._spilling])
            self._spilling = None
        for spilled_object in range(SPILL_OBJECTS):
            self._remove_object(spilled_object)
        deletes, self._deletes = self._deletes, []
        wait(deletes)
        self._io.shutdown(wait=True)
        self._spiller.shutdown(wait=True)
        for delete in deletes:
            delete.result()

    def _spill(self) -> None:
        held = self._window.take()
        if not len(held):
            return
        # One spill at a time: memory holds its window's unwritten ranges and the window
        # filling.
        self._wait_for_spill()
        spill = _Spill(self._window_start, [0] * SPILL_RANGES, [None] * SPILL_OBJECTS)
        self._spills.append(spill)
        self._window_start += len(held)
        self._spilling = self._spiller.submit(self._write, len(self._spills) - 1, spill, held)

    def _write(self, window: int, spill: _Spill, held: HeldDigests) -> None:
        """Writes one window's objects one at a time: memory holds the ranges not yet
        written, one object's columns (2.5 MB for a full window) and the client's copy
        of them."""
        ranges = _Ranges(held)
        spill.sizes = ranges.sizes.tolist()
        for spilled_object in range(SPILL_OBJECTS):
            spill.generations[spilled_object] = self._storage.write(
                self._name(window, spilled_object),
                ranges.columns(spilled_object),
                content_type=SPILL_CONTENT_TYPE,
            )
            ranges.release(spilled_object)

    def _wait_for_spill(self) -> None:
        if self._spilling is not None:
            spilling, self._spilling = self._spilling, None
            spilling.result()

    def _first_lanes(self, group: range, last: _Ranges) -> _Lane:
        """The first lanes of the ranges in ``group`` (consecutive, in one object) of
        every window: each spilled window's in one ranged read, the last window's from
        memory."""
        sizes = [sum(spill.sizes[group.start : group.stop]) for spill in self._spills]
        offsets = np.cumsum([0, *sizes])
        held = [last.range(part)[0] for part in group]
        keys = np.empty(offsets[-1] + sum(len(lanes) for lanes in held), dtype=np.uint64)
        keys[offsets[-1] :] = np.concatenate(held)
        spilled_object = group.start // RANGES_PER_OBJECT

        def copy_keys(window: int) -> None:
            spill = self._spills[window]
            first_lanes = self._storage.read_range(
                self._name(window, spilled_object), 8 * spill.offset(group.start), 8 * sizes[window]
            )
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
        in_memory = np.empty(int(last.sizes[part]), dtype=SPILLED)
        in_memory["key"], in_memory["check"], in_memory["row"] = last.range(part)
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
        """Range ``part`` of a spilled window, read with the rest of its object."""
        spill = self._spills[window]
        count, start, total = spill.sizes[part], spill.offset(part), spill.in_object(part)
        data = self._storage.read(self._name(window, part // RANGES_PER_OBJECT)).data
        records = np.empty(count, dtype=SPILLED)
        for field, column in (("key", 0), ("check", 8 * total), ("row", 16 * total)):
            size = SPILLED[field].itemsize
            records[field] = np.frombuffer(data, SPILLED[field], count, column + size * start)
        return records

    def _remove_object(self, spilled_object: int) -> None:
        """Deletes that object of every window, in the background: each by its
        generation and for good (the bucket keeps versions), or by name if its write
        never reported one."""
        for window, spill in enumerate(self._spills):
            if (window, spilled_object) in self._removed:
                continue
            self._removed.add((window, spilled_object))
            name, generation = self._name(window, spilled_object), spill.generations[spilled_object]
            if generation is None:
                self._deletes.append(self._io.submit(self._storage.delete, name))
            else:
                self._deletes.append(
                    self._io.submit(self._storage.delete_version, name, generation)
                )

    def _name(self, window: int, spilled_object: int) -> str:
        return f"{self._prefix}{window:06d}-{spilled_object:02d}.digests"
