"""The compact digest set behind exact-duplicate detection agrees with a Python set."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_core.digest_set import DigestSet


def digest(value: int) -> bytes:
    return hashlib.blake2b(value.to_bytes(8, "little"), digest_size=16).digest()


def test_new_digests_are_remembered_and_repeats_are_not_new() -> None:
    seen = DigestSet()
    assert seen.add_new([digest(1), digest(2), digest(1)]) == [True, True, False]
    assert seen.add_new([digest(2), digest(3)]) == [False, True]
    assert len(seen) == 3
    assert seen.add_new([]) == []


def test_many_batches_merge_without_forgetting() -> None:
    seen = DigestSet()
    for start in range(0, 5000, 100):
        assert all(seen.add_new([digest(value) for value in range(start, start + 100)]))
    assert len(seen) == 5000
    assert not any(seen.add_new([digest(value) for value in range(0, 5000, 7)]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(min_value=0, max_value=300), max_size=40), max_size=30))
def test_agrees_with_a_python_set(batches: list[list[int]]) -> None:
    seen = DigestSet()
    oracle: set[bytes] = set()
    for batch in batches:
        expected = []
        for item in (digest(value) for value in batch):
            expected.append(item not in oracle)
            oracle.add(item)
        assert seen.add_new([digest(value) for value in batch]) == expected
    assert len(seen) == len(oracle)


def test_digests_of_the_wrong_width_are_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        DigestSet().add_new([b"short"])
