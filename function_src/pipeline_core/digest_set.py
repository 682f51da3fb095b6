"""A compact set of 16-byte digests, for exact-duplicate detection in bounded memory.

A Python ``set`` of ``bytes`` costs about 110 bytes per entry, several times the CSV row
it stands for, so a large upload would run out of memory on duplicate detection alone.
Here the digests live in sorted numpy runs of fixed-width 16-byte values: about 16
bytes an entry (32 while two runs merge). Runs merge like the levels of a
log-structured merge tree, so a lookup is a binary search per run (at most log2(n)
runs) and each digest is re-sorted O(log n) times over the whole upload.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DIGEST_BYTES = 16
_DIGEST = np.dtype(f"V{DIGEST_BYTES}")


class DigestSet:
    def __init__(self) -> None:
        # Sizes strictly decrease along the list, as in a binary counter.
        self._runs: list[np.ndarray[Any, Any]] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    def add_new(self, digests: Sequence[bytes]) -> list[bool]:
        """For each digest, whether it is new (neither seen before nor earlier in this
        batch); every new one is remembered."""
        if not digests:
            return []
        joined = b"".join(digests)
        if len(joined) != DIGEST_BYTES * len(digests):
            raise ValueError(f"digests must be {DIGEST_BYTES} bytes long")
        batch = np.frombuffer(joined, dtype=_DIGEST)
        new = np.zeros(len(batch), dtype=bool)
        new[np.unique(batch, return_index=True)[1]] = True  # first occurrence in the batch
        for run in self._runs:
            new &= ~_contains(run, batch)
        self._push(np.sort(batch[new]))
        return [bool(flag) for flag in new]

    def _push(self, run: np.ndarray[Any, Any]) -> None:
        if not len(run):
            return
        while self._runs and len(self._runs[-1]) <= len(run):
            merged = np.concatenate((self._runs.pop(), run))
            merged.sort(kind="stable")
            run = merged
        self._runs.append(run)


def _contains(run: np.ndarray[Any, Any], batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    positions = np.searchsorted(run, batch)
    inside = positions < len(run)
    found = np.zeros(len(batch), dtype=bool)
    found[inside] = run[positions[inside]] == batch[inside]
    return found
