"""A compact set of 128-bit row digests, for exact-duplicate detection in bounded memory.

A Python ``set`` of ``bytes`` costs about 110 bytes per entry, several times the CSV row
it stands for, so a large upload would run out of memory on duplicate detection alone.
Here a digest is two ``uint64`` lanes (16 bytes an entry), kept in sorted runs ordered
by the first lane (numpy sorts and searches machine integers several times faster than
16-byte strings); the second lane confirms a match. Runs merge like the levels of a
log-structured merge tree, so a lookup is a binary search per run and each digest is
re-sorted O(log n) times over the whole upload. Runs stop merging at
``MAX_RUN_DIGESTS``, which bounds the transient memory of a merge to a few runs.

In front of the runs sits a one-hash Bloom filter of about ``FILTER_BITS_PER_DIGEST``
bits a digest (one byte): a digest whose bit is clear is new without searching any run,
so only about one new digest in eight (and the true repeats) pays for the searches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DIGEST_LANES = 2
# 2M digests = 32 MB a run; a merge briefly holds two runs and the merged one.
MAX_RUN_DIGESTS = 2**21

FILTER_BITS_PER_DIGEST = 8
_FIRST_FILTER_BITS_LOG2 = 20

_Lane = np.ndarray[Any, np.dtype[np.uint64]]


class DigestSet:
    def __init__(self) -> None:
        # (first lanes sorted, second lanes in the same order); sizes decrease along the
        # list, as in a binary counter, except for runs that reached MAX_RUN_DIGESTS.
        self._runs: list[tuple[_Lane, _Lane]] = []
        self._filter = _Filter(_FIRST_FILTER_BITS_LOG2)
        self._size = 0

    def __len__(self) -> int:
        return sum(len(keys) for keys, _ in self._runs)

    def add_new(self, digests: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, Any]:
        """For each digest (a row of ``digests``, shape (n, 2)), whether it is new
        (neither seen before nor earlier in this batch); every new one is remembered."""
        if digests.ndim != 2 or digests.shape[1] != DIGEST_LANES:
            raise ValueError(f"digests must be an (n, {DIGEST_LANES}) array of uint64 lanes")
        keys, checks = digests[:, 0], digests[:, 1]
        order = np.argsort(keys)
        sorted_keys, sorted_checks = keys[order], checks[order]
        same_key = sorted_keys[1:] == sorted_keys[:-1]
        if (same_key & (sorted_checks[1:] != sorted_checks[:-1])).any():
            # Two digests share a first lane; order by both so that repeats are adjacent.
            order = np.lexsort((checks, keys))
            sorted_keys, sorted_checks = keys[order], checks[order]
            same_key = sorted_keys[1:] == sorted_keys[:-1]
        starts = np.ones(len(order), dtype=bool)  # where each distinct digest begins
        starts[1:] = ~(same_key & (sorted_checks[1:] == sorted_checks[:-1]))
        groups = np.flatnonzero(starts)
        unique_keys, unique_checks = sorted_keys[groups], sorted_checks[groups]
        seen = np.zeros(len(groups), dtype=bool)
        maybe = np.flatnonzero(self._filter.may_hold(unique_keys))
        for run in self._runs:
            seen[maybe] |= _contains(run, unique_keys[maybe], unique_checks[maybe])
        new = np.zeros(len(order), dtype=bool)
        if len(groups):
            # The sort is not stable: the first occurrence is the smallest index.
            new[np.minimum.reduceat(order, groups)[~seen]] = True
        self._push(unique_keys[~seen], unique_checks[~seen])
        return new

    def _push(self, keys: _Lane, checks: _Lane) -> None:
        if not len(keys):
            return
        self._size += len(keys)
        if self._size * FILTER_BITS_PER_DIGEST > self._filter.bits:
            bits_log2 = int(np.ceil(np.log2(self._size * FILTER_BITS_PER_DIGEST))) + 1
            self._filter = _Filter(bits_log2)
            for run_keys, _ in self._runs:
                self._filter.add(run_keys)
        self._filter.add(keys)
        while (
            self._runs
            and len(self._runs[-1][0]) <= len(keys)
            and len(self._runs[-1][0]) + len(keys) <= MAX_RUN_DIGESTS
        ):
            keys, checks = _merged(self._runs.pop(), (keys, checks))
        self._runs.append((keys, checks))


class _Filter:
    """One bit per slot, addressed by the top bits of a (uniformly random) first lane."""

    def __init__(self, bits_log2: int) -> None:
        self.bits = 1 << bits_log2
        self._shift = np.uint64(64 - bits_log2)
        self._bytes = np.zeros(self.bits // 8, dtype=np.uint8)

    def _slots(self, keys: _Lane) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        slots = keys >> self._shift
        return (slots >> np.uint64(3)).astype(np.intp), (slots & np.uint64(7)).astype(np.uint8)

    def may_hold(self, keys: _Lane) -> np.ndarray[Any, Any]:
        byte, bit = self._slots(keys)
        flags: np.ndarray[Any, Any] = ((self._bytes[byte] >> bit) & 1).astype(bool)
        return flags

    def add(self, sorted_keys: _Lane) -> None:
        """Sorted keys share their bytes in runs: one OR per byte (``ufunc.at`` is slow)."""
        if not len(sorted_keys):
            return
        byte, bit = self._slots(sorted_keys)
        starts = np.flatnonzero(np.diff(byte, prepend=-1))
        self._bytes[byte[starts]] |= np.bitwise_or.reduceat(np.uint8(1) << bit, starts)


def _merged(older: tuple[_Lane, _Lane], newer: tuple[_Lane, _Lane]) -> tuple[_Lane, _Lane]:
    """Two runs as one sorted run, in linear time and without an index array the size
    of both: each newer digest goes where a binary search in the older run puts it."""
    total = len(older[0]) + len(newer[0])
    slots = np.searchsorted(older[0], newer[0]) + np.arange(len(newer[0]))
    from_newer = np.zeros(total, dtype=bool)
    from_newer[slots] = True
    merged = []
    for old_lane, new_lane in zip(older, newer, strict=True):
        lane = np.empty(total, dtype=np.uint64)
        lane[slots] = new_lane
        lane[~from_newer] = old_lane
        merged.append(lane)
    return merged[0], merged[1]


def _contains(run: tuple[_Lane, _Lane], keys: _Lane, checks: _Lane) -> np.ndarray[Any, Any]:
    """Whether each (key, check) is in the run; ``keys`` sorted, for cache locality."""
    run_keys, run_checks = run
    positions = np.minimum(np.searchsorted(run_keys, keys), len(run_keys) - 1)
    same_key = run_keys[positions] == keys
    found: np.ndarray[Any, Any] = same_key & (run_checks[positions] == checks)
    # A first lane shared by different digests (about one in 2**64 pairs): look at all.
    for index in np.flatnonzero(same_key & ~found):
        end = np.searchsorted(run_keys, keys[index], side="right")
        found[index] = bool((run_checks[positions[index] : end] == checks[index]).any())
    return found
