"""Duplicate detection with a window smaller than the upload: spilled to the bucket,
resolved exactly, cleaned up."""

from __future__ import annotations

import json
import mmap
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_core import deduplication
from pipeline_core.contract import deduplicated_data, part_object, processed_data, stats_object
from pipeline_core.deduplication import SPILL_OBJECTS, SPILL_RANGES, Deduplicator
from pipeline_core.digest_set import DigestSet
from pipeline_core.errors import DataRejectedError, TransientError
from pipeline_core.processing import DatasetSchema, process
from tests.functions.conftest import BUCKET, read_processed, upload
from tests.functions.fakes import InMemoryStorage
from tests.functions.test_digest_set import digest, digests


def far_duplicates_of(batches: list[list[int]], window_rows: int) -> tuple[list[int], list[int]]:
    """(rows the window kept, numbered in kept order; the far duplicates among them)."""
    storage = InMemoryStorage(BUCKET)
    deduplicator = Deduplicator(storage, "processed/x/1/digests/", window_rows)
    kept: list[int] = []
    for batch in batches:
        flags = deduplicator.new_rows(digests(batch))
        kept += [value for value, new in zip(batch, flags.tolist(), strict=True) if new]
    far = deduplicator.far_duplicates().tolist()
    deduplicator.close()
    assert storage.names() == []
    return kept, far


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(min_value=0, max_value=40), max_size=20), max_size=12),
    st.integers(min_value=1, max_value=16),
)
def test_the_window_and_the_spill_together_keep_each_value_once(
    batches: list[list[int]], window_rows: int
) -> None:
    kept, far = far_duplicates_of(batches, window_rows)
    first_seen: dict[int, int] = {}
    expected_far = []
    for position, value in enumerate(kept):
        if value in first_seen:
            expected_far.append(position)
        first_seen.setdefault(value, position)
    assert far == expected_far
    distinct = list(dict.fromkeys(value for batch in batches for value in batch))
    assert [value for position, value in enumerate(kept) if position not in set(far)] == distinct


def test_nothing_is_spilled_while_the_window_holds_everything() -> None:
    storage = InMemoryStorage(BUCKET)
    deduplicator = Deduplicator(storage, "processed/x/1/digests/", window_rows=10)
    assert deduplicator.new_rows(digests([1, 2, 1])).tolist() == [True, True, False]
    assert storage.names() == []
    assert deduplicator.far_duplicates().tolist() == []
    deduplicator.close()


class RecordedWrites(InMemoryStorage):
    """Remembers every object written and every version deleted."""

    def __init__(self, bucket: str) -> None:
        super().__init__(bucket)
        self.written: list[tuple[str, int]] = []
        self.deleted_versions: list[tuple[str, int]] = []

    def write(self, name: str, data: bytes, **options: Any) -> int:
        generation = super().write(name, data, **options)
        self.written.append((name, generation))
        return generation

    def delete_version(self, name: str, generation: int) -> None:
        self.deleted_versions.append((name, generation))
        super().delete_version(name, generation)


def test_a_full_window_is_spilled_in_ranges_and_deleted_for_good() -> None:
    storage = RecordedWrites(BUCKET)
    deduplicator = Deduplicator(storage, "processed/x/1/digests/", window_rows=4)
    deduplicator.new_rows(digests(range(6)))  # one full window spilled, two rows held
    assert deduplicator.new_rows(digests([0, 9])).tolist() == [True, True]  # 0: too far
    assert deduplicator.far_duplicates().tolist() == [6]
    # The window held last took part from memory: only the full one was written, its
    # ranges a few to an object.
    assert sorted(name for name, _ in storage.written) == [
        f"processed/x/1/digests/000000-{number:02d}.digests" for number in range(SPILL_OBJECTS)
    ]
    deduplicator.close()
    deduplicator.close()
    assert storage.names() == []
    assert sorted(storage.deleted_versions) == sorted(storage.written)


class FailingSpill(InMemoryStorage):
    def write(self, name: str, data: bytes, **options: Any) -> int:
        if name.endswith("-03.digests"):
            raise TransientError("the bucket is unavailable")
        return super().write(name, data, **options)


def test_a_failed_spill_is_raised_by_the_next_step_and_what_it_wrote_is_deleted() -> None:
    storage = FailingSpill(BUCKET)
    deduplicator = Deduplicator(storage, "processed/x/1/digests/", window_rows=4)
    deduplicator.new_rows(digests(range(6)))  # spills the first window in the background
    with pytest.raises(TransientError, match="unavailable"):
        deduplicator.far_duplicates()
    deduplicator.close()
    assert storage.names() == []


def test_close_after_a_failed_spill_waits_for_it_and_does_not_raise_it() -> None:
    storage = FailingSpill(BUCKET)
    deduplicator = Deduplicator(storage, "processed/x/1/digests/", window_rows=4)
    deduplicator.new_rows(digests(range(6)))
    deduplicator.close()  # the caller's own error is the one to report
    assert storage.names() == []


def test_digests_sharing_a_first_lane_across_windows_stay_distinct() -> None:
    storage = InMemoryStorage(BUCKET)
    deduplicator = Deduplicator(storage, "processed/x/1/digests/", window_rows=2)
    first, second = digest(1), digest(2)
    shared = np.array([[first[0], first[1]], [first[0], second[1]]], dtype=np.uint64)
    deduplicator.new_rows(shared[:1])
    deduplicator.new_rows(np.array([[5, 5], [6, 6]], dtype=np.uint64))
    deduplicator.new_rows(shared)
    assert deduplicator.far_duplicates().tolist() == [3]
    deduplicator.close()


# A window of 16 pages of row numbers: a range's share is a page, its segment two.
SMALL_WINDOW_ROWS = 16 * (mmap.PAGESIZE // 4)


def test_digests_all_in_one_range_spill_before_the_window_is_full_and_stay_exact() -> None:
    """A range's segment holds its share of a window and a margin: digests that all
    fall in one range (first lanes with their top bits zero) fill it long before the
    window is full, so the window spills early and a batch larger than the segment is
    taken in pieces; the far repeats are still found exactly."""
    storage = RecordedWrites(BUCKET)
    deduplicator = Deduplicator(storage, "processed/x/1/digests/", SMALL_WINDOW_ROWS)
    first = DigestSet(SMALL_WINDOW_ROWS).segment * 3 // 2
    batches = [list(range(first)), [*range(100), *range(first, first + 100)]]
    kept_flags = [
        deduplicator.new_rows(
            np.array([[value, 3 * value + 1] for value in batch], dtype=np.uint64)
        )
        for batch in batches
    ]
    assert all(flags.all() for flags in kept_flags)  # no window held a repeat's first
    assert deduplicator.far_duplicates().tolist() == list(range(first, first + 100))
    # Spilled (the spill thread is done once the far repeats are known), though the
    # digests are far fewer than a window.
    assert storage.written
    deduplicator.close()
    assert storage.names() == []


def test_batches_mostly_of_one_repeated_row_do_not_spill_the_window() -> None:
    """A segment counts every row of a batch, repeats too, but keeps only the new ones:
    batches whose copies of one row alone outnumber a segment go in by halves, and the
    window never spills while their distinct rows fit in it."""
    storage = RecordedWrites(BUCKET)
    deduplicator = Deduplicator(storage, "processed/x/1/digests/", SMALL_WINDOW_ROWS)
    copies = DigestSet(SMALL_WINDOW_ROWS).segment + 1
    for batch in range(5):
        values = [0] * copies + list(range(1 + 100 * batch, 101 + 100 * batch))
        flags = deduplicator.new_rows(digests(values)).tolist()
        assert flags == [batch == 0] + [False] * (copies - 1) + [True] * 100
    assert deduplicator.far_duplicates().tolist() == []
    assert storage.written == []
    deduplicator.close()


def test_repeats_further_apart_than_the_window_are_dropped_in_a_second_pass() -> None:
    rows = [f"{index % 7},{index % 5},{'xy'[index % 2]}" for index in range(200)]
    data = ("a,b,target\n" + "\n".join(rows) + "\n").encode()  # 70 distinct rows
    storage = InMemoryStorage(BUCKET)
    ref = upload(storage, "raw/repeats.csv", data)
    result = process(
        storage, ref, DatasetSchema(min_rows=1), chunk_rows=16, block_bytes=64, window_rows=8
    ).to_json()
    assert result["processed_data"] == deduplicated_data(ref)
    assert result["processed_parts"] == 1
    assert result["rows_out"] == 70
    assert result["rejections"] == {"duplicate": 130}
    assert storage.names("processed/") == [
        part_object(deduplicated_data(ref), 0),
        stats_object(ref),
    ]
    assert storage.names(processed_data(ref)) == []
    table = read_processed(storage, result)
    assert table.to_pydict()["a"] == [float(index % 7) for index in range(70)]
    stats = json.loads(storage.read(stats_object(ref)).data)
    assert stats["class_counts"] == {"x": 35, "y": 35}
    assert stats["feature_stats"]["a"]["max"] == 6.0


def test_an_upload_too_small_without_its_far_repeats_is_rejected_and_leaves_no_parquet() -> None:
    rows = [f"{index % 7},{index % 5},{'xy'[index % 2]}" for index in range(200)]
    data = ("a,b,target\n" + "\n".join(rows) + "\n").encode()
    storage = InMemoryStorage(BUCKET)
    ref = upload(storage, "raw/repeats.csv", data)
    with pytest.raises(DataRejectedError) as caught:
        process(storage, ref, DatasetSchema(min_rows=100), block_bytes=64, window_rows=8)
    assert caught.value.reason_code == "too_few_rows"
    assert "70 valid rows" in caught.value.detail
    assert storage.names("processed/") == []


class CountedReads(InMemoryStorage):
    """Counts the bytes every kind of read hands out."""

    def __init__(self, bucket: str) -> None:
        super().__init__(bucket)
        self.bytes_read = {"read": 0, "read_range": 0}

    def read(self, name: str, generation: int | None = None) -> Any:
        stored = super().read(name, generation)
        self.bytes_read["read"] += len(stored.data)
        return stored

    def read_range(self, name: str, start: int, size: int) -> bytes:
        data = super().read(name).data[start : start + max(size, 0)]
        self.bytes_read["read_range"] += len(data)
        return data


def test_without_far_repeats_only_the_first_lanes_of_the_spill_are_read_back() -> None:
    storage = CountedReads(BUCKET)
    deduplicator = Deduplicator(storage, "processed/x/1/digests/", window_rows=100)
    for start in range(0, 1000, 50):  # 1,000 distinct digests: 10 windows of 100
        assert deduplicator.new_rows(digests(range(start, start + 50))).all()
    assert deduplicator.far_duplicates().tolist() == []
    deduplicator.close()
    # Every window but the last was spilled, and 8 of each spilled digest's 20 bytes
    # were read back; the last one took part from memory.
    assert storage.bytes_read == {"read": 0, "read_range": 8 * 900}


def test_a_far_repeat_is_found_from_the_spilled_columns() -> None:
    storage = CountedReads(BUCKET)
    deduplicator = Deduplicator(storage, "processed/x/1/digests/", window_rows=100)
    for start in range(0, 300, 50):
        deduplicator.new_rows(digests(range(start, start + 50)))
    # The window of 200..299 is spilled to make room: 7 and 250 are repeats of spilled
    # windows, so the window takes them for new and the spill finds them.
    assert deduplicator.new_rows(digests([7, 1000, 250])).all()
    assert deduplicator.far_duplicates().tolist() == [300, 302]  # kept rows 7 and 250
    deduplicator.close()
    assert storage.bytes_read["read"] > 0  # the ranges holding them were read whole


@pytest.mark.parametrize(("read_bytes", "ranges_a_read"), [(8, 1), (8 * 60, 2)])
def test_far_repeats_are_found_whatever_the_ranges_read_back_at_once(
    monkeypatch: pytest.MonkeyPatch, read_bytes: int, ranges_a_read: int
) -> None:
    """One range a read, or both of an object's, by the budget: the same answer."""
    reads: list[int] = []
    original = InMemoryStorage.read_range

    def counted(storage: InMemoryStorage, name: str, start: int, size: int) -> bytes:
        reads.append(size)
        return original(storage, name, start, size)

    monkeypatch.setattr(InMemoryStorage, "read_range", counted)
    monkeypatch.setattr(deduplication, "END_READ_BYTES", read_bytes)
    batches = [list(range(start, start + 40)) for start in range(0, 400, 40)]
    # Windows of 40 rows (a batch that does not fit spills the window): 3, 77 and 205
    # repeat spilled windows, 391 the one held, 5000 is new.
    batches.append([3, 77, 391, 5000, 205])
    kept, far = far_duplicates_of(batches, window_rows=50)
    assert 391 not in kept[400:]
    assert [kept[row] for row in far] == [3, 77, 205]
    # Each spilled window's first lanes, once a group of ranges: 9 windows spilled.
    assert len(reads) == 9 * SPILL_RANGES // ranges_a_read
