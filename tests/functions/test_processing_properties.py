"""process_data against a reference written here with Python's csv module, on messy
generated CSVs cut into many tiny blocks: the counts, the named first rows, the kept
rows in order, the statistics and the classes all agree."""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import math
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_core import csv_source
from pipeline_core.cleaning import Layout, clean
from pipeline_core.contract import part_objects, rejection_object, stats_object
from pipeline_core.digest_set import DEFAULT_CAPACITY
from pipeline_core.errors import DataRejectedError
from pipeline_core.processing import DatasetSchema, process
from tests.functions.conftest import BUCKET, upload
from tests.functions.fakes import InMemoryStorage

HEADER = ("a", "b c", "target")
# Parts of a few row groups, so that generated files span several parts.
ROW_GROUPS_PER_PART = 3
FEATURE_CELLS = (
    "1", "2", "-0", "0", "2.50", " 3 ", "+4", ".5", "6.", "1e1", "", " ", "abc", "1_000",
    "\u0661", "inf", "-Infinity", "nan", "1e400", "1,5", "7\n8", '9"', "0x1A",
)  # fmt: skip
# How each label spelling reads; None: no label.
LABEL_CLASSES = {
    "x": "x", "y": "y", "1": "1", "1.0": "1", "+1e0": "1", "0": "0", "0.00": "0",
    " y ": "y", "a,b": "a,b", "p\nq": "p\nq", "": None, " ": None,
}  # fmt: skip
# Plain decimal notation, infinities and nan: the reference's own reading of the rule.
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", re.I)


def quoted(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


def as_field(cell: str, quote: bool) -> str:
    return quoted(cell) if quote or any(char in cell for char in ',"\n\r') else cell


@st.composite
def messy_csv(draw: st.DrawFn) -> tuple[bytes, str]:
    """A CSV text and its line ending: valid rows mixed with blanks, junk, duplicates
    (small pools repeat), quoted fields and ragged rows."""
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    lines = ["" for _ in range(draw(st.integers(0, 2)))]  # blank lines before the header
    lines.append(",".join(as_field(name, draw(st.booleans())) for name in HEADER))
    for _ in range(draw(st.integers(0, 60))):
        kind = draw(st.sampled_from(["row"] * 6 + ["blank", "ragged"]))
        if kind == "blank":
            lines.append("")
            continue
        cells = [
            draw(st.sampled_from(FEATURE_CELLS)),
            draw(st.sampled_from(FEATURE_CELLS[:8])),
            draw(st.sampled_from(sorted(LABEL_CLASSES))),
        ]
        if kind == "ragged":
            cells = cells[: draw(st.integers(1, 2))] if draw(st.booleans()) else [*cells, "9"]
        lines.append(",".join(as_field(cell, draw(st.booleans())) for cell in cells))
    text = newline.join(lines) + (newline if draw(st.booleans()) else "")
    return text.encode(), newline


@dataclass
class Reference:
    rows_in: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    rows: list[tuple[float, float, str]] = field(default_factory=list)


def reference(data: bytes) -> Reference:
    """The rules, one row at a time, as the documentation states them."""
    reader = csv.reader(io.StringIO(data.decode(), newline=""))
    header = next(row for row in reader if row)
    assert tuple(cell.strip() for cell in header) == HEADER
    expected = Reference()
    seen: set[bytes] = set()
    for row in reader:
        if not row:
            continue
        expected.rows_in += 1
        problem, values, label = judge(row)
        if problem is not None:
            reason, detail = problem
            expected.rejections[reason] += 1
            expected.examples.setdefault(reason, f"line {reader.line_num}: {detail}")
            continue
        key = struct.pack("<2d", *values) + label.encode()
        if key in seen:
            expected.rejections["duplicate"] += 1
            continue
        seen.add(key)
        expected.rows.append((values[0], values[1], label))
    return expected


def judge(row: list[str]) -> tuple[tuple[str, str] | None, list[float], str]:
    if len(row) != len(HEADER):
        return ("wrong_field_count", f"{len(row)} fields where the header has 3"), [], ""
    label = LABEL_CLASSES[row[2]]
    if label is None:
        return ("missing_target", "no value for 'target'"), [], ""
    values = []
    for name, raw in zip(HEADER[:2], row[:2], strict=True):
        cell = raw.strip()
        if not cell:
            return ("missing_feature", f"no value for feature {name!r}"), [], ""
        if not NUMBER.fullmatch(cell) or not cell.isascii():
            return ("non_numeric_feature", f"feature {name!r} is {cell!r}, not a number"), [], ""
        if not math.isfinite(float(cell)):
            return ("non_finite_feature", f"feature {name!r} is {cell!r}"), [], ""
        values.append(float(cell))
    return None, values, label


PROPERTY_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@PROPERTY_SETTINGS
@given(
    messy_csv(),
    st.integers(min_value=48, max_value=400),
    st.integers(min_value=1, max_value=9),
    st.booleans(),
    st.booleans(),
)
def test_agrees_with_a_row_by_row_reference(
    generated: tuple[bytes, str], block_bytes: int, chunk_rows: int, gzipped: bool, bom: bool
) -> None:
    data, _ = generated
    raw = (b"\xef\xbb\xbf" if bom else b"") + data
    check_against_reference(data, gzip.compress(raw) if gzipped else raw, block_bytes, chunk_rows)


@PROPERTY_SETTINGS
@given(
    messy_csv(),
    st.integers(min_value=48, max_value=400),
    st.integers(min_value=1, max_value=9),
    st.integers(min_value=1, max_value=8),
)
def test_a_window_smaller_than_the_upload_changes_nothing(
    generated: tuple[bytes, str], block_bytes: int, chunk_rows: int, window_rows: int
) -> None:
    """Digests spilled to the bucket a few rows at a time, far repeats dropped in a
    second pass: the same rows, counts and statistics as the reference."""
    data, _ = generated
    check_against_reference(data, data, block_bytes, chunk_rows, window_rows)


def check_against_reference(
    data: bytes, raw: bytes, block_bytes: int, chunk_rows: int, window_rows: int = DEFAULT_CAPACITY
) -> None:
    expected = reference(data)
    storage = InMemoryStorage(BUCKET)
    ref = upload(storage, "raw/messy.csv", raw)
    classes = Counter(label for _, _, label in expected.rows)
    schema = DatasetSchema(min_rows=1)
    run = functools.partial(
        process,
        storage,
        ref,
        schema,
        chunk_rows=chunk_rows,
        part_rows=chunk_rows * ROW_GROUPS_PER_PART,
        block_bytes=block_bytes,
        window_rows=window_rows,
    )
    if not expected.rows or len(classes) < 2:
        with pytest.raises(DataRejectedError) as caught:
            run()
        record = json.loads(storage.read(rejection_object(ref)).data)
        assert caught.value.reason_code == ("too_few_classes" if expected.rows else "no_valid_rows")
        assert record["rows_in"] == expected.rows_in
        assert record["row_rejections"] == dict(expected.rejections)
        assert record["row_rejection_examples"] == expected.examples
        assert storage.names("processed/") == []  # no Parquet, no spilled digests
        return
    result = run()
    stats = json.loads(storage.read(stats_object(ref)).data)
    assert stats["rows_in"] == expected.rows_in
    assert stats["rows_out"] == len(expected.rows)
    assert stats["rejections"] == dict(expected.rejections)
    assert stats["rejection_examples"] == expected.examples
    assert stats["class_counts"] == dict(classes)
    names = part_objects(result.stats["processed_data"], result.stats["processed_parts"])
    assert storage.names("processed/") == sorted([*names, stats_object(ref)])
    parts = [pq.ParquetFile(pa.BufferReader(storage.read(name).data)) for name in names]
    table = pa.concat_tables(part.read() for part in parts)
    assert list(zip(*table.to_pydict().values(), strict=True)) == expected.rows
    assert len(parts) == math.ceil(len(expected.rows) / (chunk_rows * ROW_GROUPS_PER_PART))
    assert [part.metadata.num_rows for part in parts[:-1]] == [chunk_rows * ROW_GROUPS_PER_PART] * (
        len(parts) - 1
    )
    assert sum(part.num_row_groups for part in parts) == sum(
        math.ceil(part.metadata.num_rows / chunk_rows) for part in parts
    )
    for name, values in zip(
        HEADER[:2],
        ([row[0] for row in expected.rows], [row[1] for row in expected.rows]),
        strict=True,
    ):
        mean = sum(values) / len(values)
        assert stats["feature_stats"][name] == {
            "min": min(values),
            "max": max(values),
            "mean": pytest.approx(mean),
            "std": pytest.approx(
                math.sqrt(sum((value - mean) ** 2 for value in values) / len(values)), abs=1e-9
            ),
        }


def test_a_stray_quote_inside_a_field_is_a_character_in_any_block(
    storage: InMemoryStorage,
) -> None:
    """'5"' opens no quoted field, for the csv module or for Arrow: the block cut still
    finds the record ends, the cell is one non-numeric value, and the rows after it stay."""
    rows = [f"{index},{index},{'xy'[index % 2]}" for index in range(40)]
    rows[3] = '5",1,x'
    data = ("a,b,target\n" + "\n".join(rows) + "\n").encode()
    ref = upload(storage, "raw/stray.csv", data)
    result = process(storage, ref, DatasetSchema(min_rows=1), block_bytes=32).to_json()
    assert result["rows_in"] == 40
    assert result["rejections"] == {"non_numeric_feature": 1}
    stats: dict[str, Any] = json.loads(storage.read(stats_object(ref)).data)
    assert stats["rejection_examples"] == {
        "non_numeric_feature": "line 5: feature 'a' is '5\"', not a number"
    }


# Spellings around the edges of Arrow's float parser: padding it trims, null markers it
# would read as missing by default, and numbers it reads but the rules call non-finite.
READER_CELLS = (
    *FEATURE_CELLS, "1e-400", "\t5", "5\t", "NaN", "NA", "null", "N/A", "-", "+", "1.5e+3",
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(READER_CELLS), st.sampled_from(sorted(LABEL_CLASSES))),
        min_size=1,
        max_size=12,
    ),
    st.booleans(),
)
def test_numbers_read_by_the_csv_reader_clean_as_the_strings_would(
    rows: list[tuple[str, str]], quote: bool
) -> None:
    """A block whose feature cells the reader converts itself (``numbers``) gives the
    same kept values (bit for bit), labels, counts and first rejections as the same
    block read as strings."""
    text = "".join(f"{as_field(cell, quote)},{as_field(label, quote)}\n" for cell, label in rows)
    block = csv_source.Block(text.encode(), first_line=2)
    columns = Layout(names=("x", "target"), features=("x",), target="target")
    as_numbers = csv_source.parse(block, 2, columns.positions, numbers=1)
    as_strings = csv_source.parse(block, 2, columns.positions)
    assert as_strings.columns.column(0).type == pa.string()
    every_finite = all(
        cell.isascii() and NUMBER.fullmatch(cell.strip()) and math.isfinite(float(cell))
        for cell, _ in rows
    )
    assert (as_numbers.columns.column(0).type == pa.float64()) == bool(every_finite)
    fast, reference_block = clean(as_numbers.columns, columns), clean(as_strings.columns, columns)
    assert fast.features.tobytes() == reference_block.features.tobytes()
    assert fast.labels.equals(reference_block.labels)
    assert fast.rejections == reference_block.rejections
    assert fast.first_rejected == reference_block.first_rejected
    assert as_numbers.wrong_field_count == as_strings.wrong_field_count
