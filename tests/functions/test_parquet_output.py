"""ParquetOutput: row groups of a fixed size, parts of whole row groups, stored in order
on a thread of their own, one at a time."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_core.contract import PROCESSED_PART_BYTES
from pipeline_core.errors import TransientError
from pipeline_core.parquet_output import ParquetOutput, rows_per_part

SCHEMA = pa.schema([("a", pa.float64()), ("target", pa.string())])


def rows(start: int, count: int) -> pa.Table:
    numbers = [float(n) for n in range(start, start + count)]
    return pa.table({"a": numbers, "target": [str(int(n) % 3) for n in numbers]}, schema=SCHEMA)


def write(tables: list[pa.Table], row_group_rows: int, part_rows: int) -> list[bytes]:
    parts: list[bytes] = []
    with ParquetOutput(parts.append, SCHEMA, row_group_rows, part_rows) as output:
        for table in tables:
            output.add(table)
        output.finish()
        assert output.parts == len(parts)
    return parts


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), max_size=8),
    row_group_rows=st.integers(1, 9),
    part_rows=st.integers(1, 30),
)
def test_parts_hold_whole_row_groups_and_every_row_in_order(
    sizes: list[int], row_group_rows: int, part_rows: int
) -> None:
    starts = [sum(sizes[:index]) for index in range(len(sizes))]
    parts = write(
        [rows(start, size) for start, size in zip(starts, sizes, strict=True)],
        row_group_rows,
        part_rows,
    )
    total = sum(sizes)
    per_part = max(1, part_rows // row_group_rows) * row_group_rows
    files = [pq.ParquetFile(pa.BufferReader(part)) for part in parts]
    assert [file.metadata.num_rows for file in files] == [
        min(per_part, total - start) for start in range(0, total, per_part)
    ]
    for file in files:
        groups = [file.metadata.row_group(n).num_rows for n in range(file.num_row_groups)]
        assert groups[:-1] == [row_group_rows] * (len(groups) - 1)
        assert 0 < groups[-1] <= row_group_rows
        assert file.schema_arrow == SCHEMA
    table = pa.concat_tables([file.read() for file in files]) if files else rows(0, 0)
    assert table.equals(rows(0, total))


def test_no_rows_make_no_part() -> None:
    assert write([rows(0, 0)], 5, 10) == []


def test_a_failed_store_fails_the_output_and_stores_nothing_after_it() -> None:
    stored: list[bytes] = []

    def store(part: bytes) -> None:
        if len(stored) == 1:
            raise TransientError("storage unavailable (fake)")
        stored.append(part)

    with (
        pytest.raises(TransientError, match="storage unavailable"),
        ParquetOutput(store, SCHEMA, 2, 4) as output,
    ):
        for start in range(0, 40, 4):
            output.add(rows(start, 4))
        output.finish()
    assert len(stored) == 1


def test_one_part_is_stored_at_a_time_while_the_next_one_fills() -> None:
    """Memory holds the part being stored and the one filling: the third part is not
    filling before the first one is stored."""
    release = threading.Event()
    first_held = threading.Event()
    storing = threading.Lock()
    order: list[float] = []

    def store(part: bytes) -> None:
        assert storing.acquire(blocking=False), "two parts stored at once"
        try:
            order.append(pq.read_table(pa.BufferReader(part)).column("a")[0].as_py())
            if len(order) == 1:
                first_held.set()
                assert release.wait(10)
        finally:
            storing.release()

    with ParquetOutput(store, SCHEMA, 2, 2) as output:

        def fill() -> None:
            for start in range(0, 6, 2):
                output.add(rows(start, 2))
            output.finish()

        filling = threading.Thread(target=fill)
        filling.start()
        assert first_held.wait(10)
        filling.join(0.3)  # time enough for a wrong implementation to fill the third part
        # The first part is held in store; the second is full and waits for it.
        assert filling.is_alive()
        assert output.parts == 1
        release.set()
        filling.join(10)
    assert not filling.is_alive()
    assert order == [0.0, 2.0, 4.0]  # each part's first row: stored in order


@pytest.mark.parametrize("features", [1, 5, 8])
def test_a_part_of_distinct_floats_fits_part_bytes_whatever_the_features(features: int) -> None:
    """Random doubles do not compress: the worst case of the estimate."""
    generator = np.random.default_rng(features)
    schema = pa.schema([*((f"f{n}", pa.float64()) for n in range(features)), ("t", pa.string())])
    part_rows = rows_per_part(PROCESSED_PART_BYTES, features)
    rows = 2 * part_rows + 7
    table = pa.table(
        [
            *(generator.random(rows) for _ in range(features)),
            pa.array(["x", "y"] * (rows // 2) + ["x"]),
        ],
        schema=schema,
    )
    parts: list[bytes] = []
    with ParquetOutput(parts.append, schema, 10_000, part_rows) as output:
        output.add(table)
        output.finish()
    assert len(parts) == 3
    assert all(len(part) <= PROCESSED_PART_BYTES for part in parts)
    assert len(parts[0]) > PROCESSED_PART_BYTES * 0.8  # and not far below it
