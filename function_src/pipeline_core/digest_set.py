"""A bounded set of 128-bit row digests, for exact-duplicate detection at numpy speed.

A Python ``set`` of ``bytes`` costs about 110 bytes per entry, several times the CSV row
it stands for. Here a digest is two ``uint64`` lanes and the number of its row (a
``uint32``: the how-many-th digest the set took), 20 bytes an entry, found through an
open-addressing hash table of ``int32`` places with at least four slots per entry
(linear probing; the low bits of the first lane, uniformly random, pick the slot). A
batch is looked up and inserted in whole-array operations, one round per probe step,
so a batch costs a few dozen numpy calls whatever its size and no sorting or merging
happens at all.

The entries are kept range by range (``RANGES`` ranges, by the top bits of the first
lane), each range in a segment of its own, in the order they came. The capacity is
fixed when the set is made; ``deduplication`` takes a full set (``take``) and spills it
to the object store range by range while the set fills again, and each range's memory
is given back as soon as it is written (``HeldDigests.release``): with one block of
entries in arrival order, the spill held the whole full set until its last range was
written, while the next one filled (14 MB more at the peak of a 10M-row upload). The
table and the segments are mapped lazily, so a small upload only touches the pages it
uses.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from typing import Any

import numpy as np

DIGEST_LANES = 2
# 1M digests: 20 MB of entries and 16 MB of table.
DEFAULT_CAPACITY = 2**20
RANGE_BITS = 4
RANGES = 1 << RANGE_BITS  # ranges of the first lane, by its top bits
_RANGE_SHIFT = np.uint64(64 - RANGE_BITS)
# A segment is a whole number of pages in every lane (a page of the uint32 lane is the
# fewest entries; 1024 with 4 KiB pages), so a range's pages can be given back on their
# own (madvise takes whole pages only).
_SEGMENT_GRAIN = mmap.PAGESIZE // np.dtype(np.uint32).itemsize

_Lane = np.ndarray[Any, np.dtype[np.uint64]]
_Rows = np.ndarray[Any, np.dtype[np.uint32]]
_Flags = np.ndarray[Any, np.dtype[np.bool_]]


@dataclass
class HeldDigests:
    """The entries of a set, range by range: range ``part`` is ``sizes[part]`` entries
    from ``starts[part]`` in each lane, in the order they came; ``rows`` numbers each
    entry's row among all the set took."""

    keys: _Lane
    checks: _Lane
    rows: _Rows
    starts: np.ndarray[Any, np.dtype[np.int64]]
    sizes: np.ndarray[Any, np.dtype[np.int64]]
    segment: int  # entries a range has room for
    mappings: tuple[mmap.mmap, ...]  # of the three lanes

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def range(self, part: int) -> tuple[_Lane, _Lane, _Rows]:
        """Range ``part``'s first lanes, second lanes and row numbers."""
        start, end = int(self.starts[part]), int(self.starts[part] + self.sizes[part])
        return self.keys[start:end], self.checks[start:end], self.rows[start:end]

    def release(self, part: int) -> None:
        """Gives range ``part``'s memory back; it reads as zeros afterwards."""
        start = int(self.starts[part])
        lanes: tuple[np.ndarray[Any, Any], ...] = (self.keys, self.checks, self.rows)
        for lane, mapping in zip(lanes, self.mappings, strict=True):
            size = lane.itemsize
            mapping.madvise(mmap.MADV_DONTNEED, start * size, self.segment * size)


class DigestSet:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        # A power of two >= 4 * capacity: a quarter full at most, so that most rows are
        # decided by their first probe (25% less time than at half full, for 8 MB more).
        slots = 1 << (4 * capacity - 1).bit_length()
        self._slot_mask = np.uint64(slots - 1)
        # 0: an empty slot; otherwise 1 + the place of its digest in the lanes below.
        self._table = np.zeros(slots, dtype=np.int32)
        # A range's share of a full set and room for eight standard deviations more
        # (binomial): a segment that fills up first ends the set early (``add_new_if_it_fits``).
        share = -(-capacity // RANGES)
        room = share + 8 * math.isqrt(share) + 64
        self._segment = -(-room // _SEGMENT_GRAIN) * _SEGMENT_GRAIN
        self._starts = np.arange(RANGES, dtype=np.int64) * self._segment
        self._new_lanes()

    def __len__(self) -> int:
        return self._size

    @property
    def segment(self) -> int:
        """Entries a range has room for (a whole number of pages of every lane)."""
        return self._segment

    @property
    def room(self) -> int:
        """Digests the set takes at most before it is full."""
        return self.capacity - self._size

    def _segments_take(self, counts: np.ndarray[Any, Any]) -> bool:
        return bool((self._sizes + counts <= self._segment).all())

    def take(self) -> HeldDigests:
        """The digests held, handed over: the set is empty afterwards and fills new
        lanes, so the ones returned stay as they are while it fills again."""
        held = HeldDigests(
            self._keys,
            self._checks,
            self._rows,
            self._starts,
            self._sizes,
            self._segment,
            self._mappings,
        )
        self._table.fill(0)  # the pages stay mapped for the next round of digests
        self._new_lanes()
        return held

    def release(self) -> None:
        """Gives the memory back; the set holds nothing and has no room afterwards."""
        self.capacity = 0
        self._table = np.zeros(1, dtype=np.int32)
        self._new_lanes(entries=0)

    def _new_lanes(self, entries: int | None = None) -> None:
        entries = RANGES * self._segment if entries is None else entries
        self._keys, keys = _lane(entries, np.uint64)
        self._checks, checks = _lane(entries, np.uint64)
        self._rows, rows = _lane(entries, np.uint32)
        self._mappings = (keys, checks, rows)
        self._sizes = np.zeros(RANGES, dtype=np.int64)
        self._size = 0

    def add_new(self, digests: np.ndarray[Any, np.dtype[np.uint64]]) -> _Flags:
        """For each digest (a row of ``digests``, shape (n, 2)), whether it is new
        (neither held before nor earlier in this batch); every new one is remembered,
        numbered after those held. The batch must fit: within ``room``, and within what
        each range's segment has left (``add_new_if_it_fits``)."""
        new = self.add_new_if_it_fits(digests)
        if new is None:
            raise ValueError(f"{len(digests)} digests do not fit in the {self.room} left")
        return new

    def add_new_if_it_fits(self, digests: np.ndarray[Any, np.dtype[np.uint64]]) -> _Flags | None:
        """``add_new``'s answer if the batch fits, else None and nothing is added: the
        check and the insertion share one pass over the batch's ranges."""
        if digests.ndim != 2 or digests.shape[1] != DIGEST_LANES:
            raise ValueError(f"digests must be an (n, {DIGEST_LANES}) array of uint64 lanes")
        if len(digests) > self.room:
            return None
        keys, checks = digests[:, 0], digests[:, 1]
        ranges = _ranges(keys)
        counts = _counts(ranges)
        if not self._segments_take(counts):
            return None
        # The batch goes after the digests held in each range, so that the table can
        # point at any of its rows while it is being inserted; the new ones are
        # compacted at the end.
        places = self._places(ranges, counts)
        self._keys[places] = keys
        self._checks[places] = checks
        ids = (places + 1).astype(np.int32)
        slots = (keys & self._slot_mask).astype(np.intp)
        new = np.zeros(len(digests), dtype=bool)
        pending, first = np.arange(len(digests)), True
        while len(pending):
            pending, first = self._probe_step(pending, slots, ids, new, first), False
        rows = np.flatnonzero(new)
        if len(rows) < len(digests):
            # A new digest's slot is the one its row claimed; point it at the compacted
            # place. Without repeats every row already sits where its slot points.
            ranges = ranges[rows]
            counts = _counts(ranges)
            places = self._places(ranges, counts)
            self._table[slots[rows]] = places + 1
            self._keys[places] = keys[rows]
            self._checks[places] = checks[rows]
        self._rows[places] = np.arange(self._size, self._size + len(rows), dtype=np.uint32)
        self._sizes += counts
        self._size += len(rows)
        return new

    def _places(
        self, ranges: np.ndarray[Any, np.dtype[np.uint8]], counts: np.ndarray[Any, Any]
    ) -> np.ndarray[Any, Any]:
        """Where entries of these ``ranges`` (``counts`` of each) go, in this order:
        after the entries each range holds, in order within a range (a stable radix sort
        of the ranges)."""
        order = np.argsort(ranges, kind="stable")
        first_of_range = np.cumsum(counts) - counts  # in ``order``
        places = np.empty(len(ranges), dtype=np.int64)
        places[order] = np.arange(len(ranges)) + np.repeat(
            self._starts + self._sizes - first_of_range, counts
        )
        return places

    def _probe_step(
        self,
        pending: np.ndarray[Any, Any],
        slots: np.ndarray[Any, Any],
        ids: np.ndarray[Any, Any],
        new: _Flags,
        first: bool,
    ) -> np.ndarray[Any, Any]:
        """One probe of every undecided row (``first``: every row of the batch, in
        order): a row at an empty slot claims it (new), at its own digest it is a repeat,
        at another digest it moves to the next slot. Returns the rows still undecided,
        in no particular order."""
        table, held_keys, held_checks = self._table, self._keys, self._checks
        # In the first round ``at`` is ``slots`` itself, which the moves below change:
        # everything is read from it before them.
        at = slots if first else slots.take(pending)
        entries = table.take(at)
        is_empty = entries == 0
        empty = np.flatnonzero(is_empty)
        undecided = []
        if len(empty):
            claimers = empty if first else pending[empty]
            claimed, claimer_ids = at[empty], ids[claimers]
            table[claimed] = claimer_ids  # one of the rows claiming a slot gets it
            winners = table.take(claimed)
            won = winners == claimer_ids
            if not won.all():
                lost = np.flatnonzero(~won)
                # Equal digests probe the same slots in step, so they claim one
                # together: the first of them in the batch must be the one that stays.
                held, twins = winners[lost] - 1, claimers[lost]
                twin_positions = ids[twins] - 1
                earlier = (
                    (held_keys[held] == held_keys[twin_positions])
                    & (held_checks[held] == held_checks[twin_positions])
                    & (ids[twins] < winners[lost])
                )
                if earlier.any():
                    np.minimum.at(table, claimed[lost[earlier]], ids[twins[earlier]])
                    won = table.take(claimed) == claimer_ids
                undecided.append(claimers[~won])  # they look at the winner next round
            new[claimers[won]] = True
        if len(empty) < len(pending):
            occupied = np.flatnonzero(~is_empty)
            rows = occupied if first else pending[occupied]
            held, positions = entries[occupied] - 1, ids[rows] - 1
            repeat = (held_keys[held] == held_keys[positions]) & (
                held_checks[held] == held_checks[positions]
            )
            moving = rows[~repeat]
            slots[moving] = (slots[moving] + 1) & int(self._slot_mask)
            undecided.append(moving)
        remaining: np.ndarray[Any, Any] = (
            np.concatenate(undecided) if undecided else np.zeros(0, dtype=np.intp)
        )
        return remaining


def _ranges(keys: _Lane) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The range of each first lane (its top bits), as uint8: numpy counts those
    several times faster than the shifted uint64 values."""
    ranges: np.ndarray[Any, np.dtype[np.uint8]] = (keys >> _RANGE_SHIFT).astype(np.uint8)
    return ranges


def _counts(ranges: np.ndarray[Any, np.dtype[np.uint8]]) -> np.ndarray[Any, Any]:
    return np.bincount(ranges, minlength=RANGES)


def _lane(entries: int, dtype: type[Any]) -> tuple[np.ndarray[Any, Any], mmap.mmap]:
    """``entries`` values in a private anonymous mapping of their own: pages are touched
    only as they fill, given back by ``HeldDigests.release`` and unmapped as soon as the
    last view of them goes (through malloc, a lane freed after a spill could stay in the
    process's heap). Returns the lane and its mapping."""
    size = max(1, entries * np.dtype(dtype).itemsize)
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    lane: np.ndarray[Any, Any] = np.frombuffer(mapping, dtype=dtype, count=entries)
    return lane, mapping
