"""The compact digest set behind exact-duplicate detection agrees with a Python set."""

from __future__ import annotations

import hashlib
import mmap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_core.digest_set import RANGES, DigestSet, HeldDigests


def digest(value: int) -> tuple[int, int]:
    raw = hashlib.blake2b(value.to_bytes(8, "little"), digest_size=16).digest()
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


def digests(values: list[int] | range) -> np.ndarray:
    return np.array([digest(value) for value in values], dtype=np.uint64).reshape(-1, 2)


def test_new_digests_are_remembered_and_repeats_are_not_new() -> None:
    seen = DigestSet()
    assert seen.add_new(digests([1, 2, 1])).tolist() == [True, True, False]
    assert seen.add_new(digests([2, 3])).tolist() == [False, True]
    assert len(seen) == 3
    assert seen.add_new(digests([])).tolist() == []


def test_many_batches_merge_without_forgetting() -> None:
    seen = DigestSet()
    for start in range(0, 5000, 100):
        assert seen.add_new(digests(range(start, start + 100))).all()
    assert len(seen) == 5000
    assert not seen.add_new(digests(range(0, 5000, 7))).any()


def test_digests_sharing_their_first_lane_stay_distinct() -> None:
    """A first lane shared by different digests: the second lane decides, in a batch and
    against every run."""
    seen = DigestSet()
    shared = np.array([[7, 1], [7, 2], [7, 1], [8, 1]], dtype=np.uint64)
    assert seen.add_new(shared).tolist() == [True, True, False, True]
    later = np.array([[7, 3], [7, 2], [7, 1], [7, 3]], dtype=np.uint64)
    assert seen.add_new(later).tolist() == [True, False, False, False]
    assert len(seen) == 4


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(min_value=0, max_value=300), max_size=40), max_size=30))
def test_agrees_with_a_python_set(batches: list[list[int]]) -> None:
    seen = DigestSet()
    oracle: set[tuple[int, int]] = set()
    for batch in batches:
        expected = []
        for item in (digest(value) for value in batch):
            expected.append(item not in oracle)
            oracle.add(item)
        assert seen.add_new(digests(batch)).tolist() == expected
    assert len(seen) == len(oracle)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=3)),
            max_size=12,
        ),
        max_size=12,
    )
)
def test_agrees_with_a_python_set_when_first_lanes_collide(
    batches: list[list[tuple[int, int]]],
) -> None:
    seen = DigestSet()
    oracle: set[tuple[int, int]] = set()
    for batch in batches:
        expected = []
        for item in batch:
            expected.append(item not in oracle)
            oracle.add(item)
        assert seen.add_new(np.array(batch, dtype=np.uint64).reshape(-1, 2)).tolist() == expected


def test_digests_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="uint64 lanes"):
        DigestSet().add_new(np.zeros(3, dtype=np.uint64))


def held_entries(held: HeldDigests, parts: list[int] | None = None) -> list[tuple[int, int, int]]:
    """(row, first lane, second lane) of every entry of ``parts`` (all ranges by
    default), range by range."""
    entries: list[tuple[int, int, int]] = []
    for part in range(RANGES) if parts is None else parts:
        keys, checks, rows = held.range(part)
        # Within a range, in the order they came.
        assert rows.tolist() == sorted(rows.tolist())
        assert ((keys >> np.uint64(60)) == part).all()
        entries += zip(rows.tolist(), keys.tolist(), checks.tolist(), strict=True)
    return entries


def test_a_full_set_refuses_more_and_once_taken_starts_over() -> None:
    seen = DigestSet(capacity=4)
    assert seen.add_new(digests([1, 2, 1])).tolist() == [True, True, False]
    assert seen.room == 2
    assert seen.add_new_if_it_fits(digests([3, 4, 5])) is None
    with pytest.raises(ValueError, match="do not fit"):
        seen.add_new(digests([3, 4, 5]))
    assert seen.add_new(digests([3, 4])).all()
    taken = seen.take()
    expected = [(row, *digest(value)) for row, value in enumerate([1, 2, 3, 4])]
    assert sorted(held_entries(taken)) == expected
    assert len(taken) == 4 and len(seen) == 0
    assert seen.add_new(digests([1, 2, 5])).all()
    # What was taken is not overwritten by the digests added since.
    assert sorted(held_entries(taken)) == expected


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(min_value=0, max_value=500), max_size=60), max_size=12))
def test_entries_are_numbered_in_the_order_they_are_new(batches: list[list[int]]) -> None:
    """Each new digest's row is how many new ones came before it, whichever range it
    lands in: the spill names kept rows by these numbers."""
    seen = DigestSet()
    new_values: list[int] = []
    for batch in batches:
        flags = seen.add_new(digests(batch))
        new_values += [value for value, new in zip(batch, flags.tolist(), strict=True) if new]
    expected = [(row, *digest(value)) for row, value in enumerate(new_values)]
    assert sorted(held_entries(seen.take())) == expected


def in_range_zero(count: int) -> np.ndarray:
    """``count`` distinct digests whose first lanes all have their top bits clear."""
    return np.array([[index << 8, index] for index in range(count)], np.uint64)


def test_a_full_range_ends_the_set_before_its_capacity() -> None:
    """16384 digests: a range's segment holds its share (1024), eight standard
    deviations more and the rest of a page: 2048 with 4 KiB pages. Digests all of one
    range fill it first: the set takes no more of that range though it has room."""
    seen = DigestSet(capacity=16384)
    segment = seen.segment
    assert segment >= 1024 + 8 * 32 + 64 and segment % (mmap.PAGESIZE // 4) == 0
    assert seen.add_new(in_range_zero(segment)).all()
    assert seen.room == 16384 - segment
    assert seen.add_new_if_it_fits(in_range_zero(segment + 1)[segment:]) is None
    with pytest.raises(ValueError, match="do not fit"):
        seen.add_new(in_range_zero(segment + 1)[segment:])
    room = seen.room
    other_range = np.array([[1 << 63, 1]], np.uint64)
    assert (seen.add_new_if_it_fits(other_range) is not None) == (room > 0)


def test_a_released_range_reads_as_zeros_and_the_others_stay() -> None:
    seen = DigestSet(capacity=1000)
    seen.add_new(digests(range(1000)))
    held = seen.take()
    others = [part for part in range(RANGES) if part != 3]
    before = held_entries(held, others)
    keys, checks, rows = held.range(3)
    assert len(keys)
    held.release(3)
    assert not keys.any() and not checks.any() and not rows.any()
    assert held_entries(held, others) == before


def test_probing_wraps_around_the_end_of_the_table() -> None:
    """Every first lane ends in 32 set bits, so each picks the last slot of the table:
    the probe chain continues at slot 0."""
    seen = DigestSet(capacity=16)
    crowded = np.array([[(index << 32) | 0xFFFFFFFF, index] for index in range(8)], np.uint64)
    assert seen.add_new(crowded[:5]).all()
    assert seen.add_new(crowded[::-1]).tolist() == [True] * 3 + [False] * 5
    assert len(seen) == 8


def test_repeats_in_one_batch_keep_the_first_even_when_others_share_the_slot() -> None:
    seen = DigestSet(capacity=16)
    batch = np.array([[3, 9], [3, 1], [3, 9], [19, 9], [3, 1], [3, 9]], dtype=np.uint64)
    assert seen.add_new(batch).tolist() == [True, True, False, True, False, False]


def test_a_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        DigestSet(capacity=0)
