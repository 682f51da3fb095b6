"""A bounded set of 128-bit row digests, for exact-duplicate detection at numpy speed.

A Python ``set`` of ``bytes`` costs about 110 bytes per entry, several times the CSV row
it stands for. Here a digest is two ``uint64`` lanes kept in insertion order (16 bytes
an entry), found through an open-addressing hash table of ``int32`` positions with at
least four slots per entry (linear probing; the low bits of the first lane, uniformly
random, pick the slot). A batch is looked up and inserted in whole-array operations, one
round per probe step, so a batch costs a few dozen numpy calls whatever its size and no
sorting or merging happens at all.

The capacity is fixed when the set is made; ``deduplication`` takes the digests of a
full set (``take``) to spill them to the object store while the set fills again, which
is what keeps memory flat on any upload. The table and the lanes are mapped lazily, so a
small upload only touches the pages it uses.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

DIGEST_LANES = 2
# 1M digests: 16 MB of digests and 16 MB of table.
DEFAULT_CAPACITY = 2**20

_Lane = np.ndarray[Any, np.dtype[np.uint64]]
_Flags = np.ndarray[Any, np.dtype[np.bool_]]


class DigestSet:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        # A power of two >= 4 * capacity: a quarter full at most, so that most rows are
        # decided by their first probe (25% less time than at half full, for 8 MB more).
        slots = 1 << (4 * capacity - 1).bit_length()
        self._slot_mask = np.uint64(slots - 1)
        # 0: an empty slot; otherwise 1 + the position of its digest in the lanes below.
        self._table = np.zeros(slots, dtype=np.int32)
        self._keys, self._checks = _lane(capacity), _lane(capacity)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def room(self) -> int:
        return self.capacity - self._size

    def digests(self) -> tuple[_Lane, _Lane]:
        """The first and second lanes of every digest held, in the order they came."""
        return self._keys[: self._size], self._checks[: self._size]

    def take(self) -> tuple[_Lane, _Lane]:
        """The digests held (as ``digests``), handed over: the set is empty afterwards and
        fills new lanes, so the ones returned stay as they are while it fills again."""
        held = self.digests()
        self._keys, self._checks = _lane(self.capacity), _lane(self.capacity)
        self._table.fill(0)  # the pages stay mapped for the next round of digests
        self._size = 0
        return held

    def release(self) -> None:
        """Gives the memory back; the set holds nothing and has no room afterwards."""
        self.capacity = self._size = 0
        self._table = np.zeros(1, dtype=np.int32)
        self._keys = self._checks = np.empty(0, dtype=np.uint64)

    def add_new(self, digests: np.ndarray[Any, np.dtype[np.uint64]]) -> _Flags:
        """For each digest (a row of ``digests``, shape (n, 2)), whether it is new
        (neither held before nor earlier in this batch); every new one is remembered.
        The batch must fit in the ``room`` left."""
        if digests.ndim != 2 or digests.shape[1] != DIGEST_LANES:
            raise ValueError(f"digests must be an (n, {DIGEST_LANES}) array of uint64 lanes")
        count = len(digests)
        if count > self.room:
            raise ValueError(f"{count} digests do not fit in the {self.room} left")
        keys, checks = digests[:, 0], digests[:, 1]
        base = self._size
        # The batch goes after the digests held, so that the table can point at any of
        # its rows while it is being inserted; the new ones are compacted at the end.
        self._keys[base : base + count] = keys
        self._checks[base : base + count] = checks
        ids = np.arange(base + 1, base + count + 1, dtype=np.int32)
        slots = (keys & self._slot_mask).astype(np.intp)
        new = np.zeros(count, dtype=bool)
        pending, first = np.arange(count), True
        while len(pending):
            pending, first = self._probe_step(pending, slots, ids, new, first), False
        rows = np.flatnonzero(new)
        if len(rows) < count:
            # A new digest's slot is the one its row claimed; point it at the compacted
            # row. Without repeats every row already sits where its slot points.
            self._table[slots[rows]] = ids[: len(rows)]
            self._keys[base : base + len(rows)] = keys[rows]
            self._checks[base : base + len(rows)] = checks[rows]
        self._size = base + len(rows)
        return new

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


def _lane(capacity: int) -> _Lane:
    """``capacity`` uint64 values in an anonymous mapping of their own: pages are
    touched only as they fill, and unmapped as soon as the last view of them goes
    (through malloc, a lane freed after a spill could stay in the process's heap)."""
    lane: _Lane = np.frombuffer(mmap.mmap(-1, 8 * capacity), dtype=np.uint64)
    return lane
