"""process_data core: cleaning, statistics, every rejection reason, streaming, idempotency."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_core import cleaning
from pipeline_core.contract import part_object, part_objects, rejection_object, stats_object
from pipeline_core.errors import (
    BadRequestError,
    DataRejectedError,
    ObjectNotFoundError,
    PermanentError,
    TransientError,
)
from pipeline_core.events import ObjectRef
from pipeline_core.parquet_dataset import DatasetWriter
from pipeline_core.processing import DatasetSchema, process
from tests.functions.conftest import IRIS, read_processed, upload
from tests.functions.fakes import InMemoryStorage, InterleavedStorage

SCHEMA = DatasetSchema(min_rows=3)


def rows_csv(header: str, *rows: str) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def test_cleans_counts_every_row_reason_and_writes_stats(storage: InMemoryStorage) -> None:
    data = rows_csv(
        "a/b,c d,target",
        "1,2,x",
        "1,2,x",  # exact duplicate
        "3,4,y",
        "5,,y",  # missing feature
        "5,abc,y",  # non-numeric
        "5,inf,y",  # non-finite
        "nan,1,y",  # non-finite
        "6,7,",  # missing target
        "6,7",  # wrong field count
        "",  # blank line, not a row
        "8,9,x",
        "10,11,y",
    )
    ref = upload(storage, "raw/mixed.csv", data)
    result = process(storage, ref, SCHEMA).to_json()
    assert result["rows_in"] == 11
    assert result["rows_out"] == 4
    assert result["features"] == ["a/b", "c d"]
    assert result["rejections"] == {
        "duplicate": 1,
        "missing_feature": 1,
        "non_numeric_feature": 1,
        "non_finite_feature": 2,
        "missing_target": 1,
        "wrong_field_count": 1,
    }
    table = read_processed(storage, result)
    assert table.column_names == ["a/b", "c d", "target"]
    assert table.column("a/b").to_pylist() == [1.0, 3.0, 8.0, 10.0]
    assert table.column("target").to_pylist() == ["x", "y", "x", "y"]
    stats = json.loads(storage.read(stats_object(ref)).data)
    assert stats["class_counts"] == {"x": 2, "y": 2}
    assert stats["feature_stats"]["a/b"] == {
        "min": 1.0,
        "max": 10.0,
        "mean": 5.5,
        "std": pytest.approx(3.6401, abs=1e-4),
    }
    assert stats["source"] == ref.to_json()
    assert stats["rejection_examples"] == {
        "missing_feature": "line 5: no value for feature 'c d'",
        "non_numeric_feature": "line 6: feature 'c d' is 'abc', not a number",
        "non_finite_feature": "line 7: feature 'c d' is 'inf'",
        "missing_target": "line 9: no value for 'target'",
        "wrong_field_count": "line 10: 2 fields where the header has 3",
    }


def test_streams_in_chunks_with_the_same_result_as_one_chunk(storage: InMemoryStorage) -> None:
    ref = upload(storage, "raw/iris.csv", IRIS)
    chunked = InMemoryStorage(storage.bucket)
    chunked_ref = upload(chunked, "raw/iris.csv", IRIS)
    whole = process(storage, ref, SCHEMA, chunk_rows=1_000).to_json()
    small = process(chunked, chunked_ref, SCHEMA, chunk_rows=7).to_json()
    assert small["rows_out"] == whole["rows_out"] == 149  # iris holds one duplicate row
    assert read_processed(chunked, small).equals(read_processed(storage, whole))
    assert small["processed_parts"] == 1
    part = chunked.read(part_object(small["processed_data"], 0)).data
    assert pq.ParquetFile(pa.BufferReader(part)).num_row_groups == 22
    first = json.loads(storage.read(stats_object(ref)).data)["feature_stats"]
    second = json.loads(chunked.read(stats_object(chunked_ref)).data)["feature_stats"]
    for name, values in first.items():
        assert second[name] == pytest.approx(values)


def test_reads_gzip_and_a_byte_order_mark(storage: InMemoryStorage) -> None:
    plain = upload(storage, "raw/plain.csv", IRIS)
    gzipped = upload(storage, "raw/iris.csv.gz", gzip.compress(b"\xef\xbb\xbf" + IRIS))
    expected = process(storage, plain, SCHEMA).to_json()
    result = process(storage, gzipped, SCHEMA).to_json()
    assert result["features"] == expected["features"]
    assert result["rows_out"] == expected["rows_out"]


def test_uses_configured_features_and_target(storage: InMemoryStorage) -> None:
    ref = upload(
        storage,
        "raw/x.csv",
        rows_csv("label,f1,skip,f2", *[f"c{i % 2},{i},z,{i * 2}" for i in range(6)]),
    )
    schema = DatasetSchema(target_column="label", feature_columns=("f2", "f1"), min_rows=3)
    result = process(storage, ref, schema).to_json()
    assert result["features"] == ["f2", "f1"]
    assert read_processed(storage, result).column_names == ["f2", "f1", "label"]


def test_numeric_labels_spelled_differently_are_one_class(storage: InMemoryStorage) -> None:
    ref = upload(
        storage,
        "raw/labels.csv",
        rows_csv(
            "a,target",
            "1,1",
            "2,1.0",
            "3,+1.00",
            "4,0",
            "5,0.0",
            "6,-2.50",
            "7,-2.5",
            "7,-2.50",
            "8,A1.0",
        ),
    )
    result = process(storage, ref, SCHEMA)
    assert result.stats["class_counts"] == {"-2.5": 2, "0": 2, "1": 3, "A1.0": 1}
    assert result.stats["rejections"] == {"duplicate": 1}
    table = read_processed(storage, result.stats)
    assert table.column("target").to_pylist() == ["1", "1", "1", "0", "0", "-2.5", "-2.5", "A1.0"]


@pytest.mark.parametrize(
    ("data", "schema", "reason", "words"),
    [
        (b"", SCHEMA, "empty", "empty"),
        (b"\n\n", SCHEMA, "empty", "empty"),
        (b"\xff\xfe\x00\x01garbage", SCHEMA, "not_csv", "UTF-8"),
        (
            "a,b,target\n1,2,x\n".encode("utf-16"),
            SCHEMA,
            "not_csv",
            "UTF-16 text; save it as UTF-8",
        ),
        (b"\x80a,b,target\n", SCHEMA, "not_csv", "not UTF-8"),
        (rows_csv("a;b;target", "1;2;x"), SCHEMA, "missing_target", "separated by semicolons"),
        (rows_csv("a\tb\ttarget", "1\t2\tx"), SCHEMA, "missing_target", "separated by tabs"),
        (b"a,b\x00,target\n1,2,3\n", SCHEMA, "not_csv", "NUL"),
        (b"\x1f\x8b\x08\x00broken", SCHEMA, "not_csv", "gzip"),
        (rows_csv("1,2,3", "4,5,6"), SCHEMA, "no_header", "header"),
        (rows_csv("a,a,target", "1,2,x"), SCHEMA, "bad_header", "repeats"),
        (rows_csv("a,,target", "1,2,x"), SCHEMA, "bad_header", "empty column"),
        (rows_csv("a,b,label", "1,2,x"), SCHEMA, "missing_target", "'target'"),
        (
            rows_csv("a,target", "1,x"),
            DatasetSchema(feature_columns=("a", "b")),
            "missing_features",
            "'b'",
        ),
        (rows_csv("target", "x", "y"), SCHEMA, "no_features", "no feature"),
        (rows_csv("a,target", "x,1", "y,2"), SCHEMA, "no_valid_rows", "no row survived"),
        (rows_csv("a,target", "1,x", "2,y"), SCHEMA, "too_few_rows", "at least 3"),
        (rows_csv("a,target", "1,x", "2,x", "3,x"), SCHEMA, "too_few_classes", "at least 2"),
        (rows_csv("a,target", "1,1", "2,1.0", "3,1e0"), SCHEMA, "too_few_classes", "['1']"),
    ],
)
def test_rejects_a_whole_file_with_a_recorded_reason(
    storage: InMemoryStorage, data: bytes, schema: DatasetSchema, reason: str, words: str
) -> None:
    ref = upload(storage, "raw/bad.csv", data)
    with pytest.raises(DataRejectedError) as caught:
        process(storage, ref, schema)
    assert caught.value.reason_code == reason
    assert words in caught.value.detail
    assert caught.value.http_status == 422
    record = json.loads(storage.read(rejection_object(ref)).data)
    assert record["reason"] == reason
    assert record["source"] == ref.to_json()
    assert storage.names("processed/") == []  # nothing half-written
    assert storage.read("raw/bad.csv").data == data  # raw data untouched


def test_a_file_without_usable_rows_names_the_first_bad_row_of_each_reason(
    storage: InMemoryStorage,
) -> None:
    long_cell = "y" * 100
    ref = upload(
        storage,
        "raw/bad.csv",
        rows_csv("a,b,target", f"1,{long_cell},x", '"1,000",2,x', "1,2,x,,", "3,4,y,,"),
    )
    with pytest.raises(DataRejectedError) as caught:
        process(storage, ref, SCHEMA)
    detail = caught.value.detail
    assert detail.startswith("no row survived cleaning (4 rows in;")
    shortened = f"line 2: feature 'b' is '{long_cell[:40]}...', not a number"
    assert shortened in detail
    assert "line 4: 5 fields where the header has 3" in detail
    record = json.loads(storage.read(rejection_object(ref)).data)
    assert record["row_rejection_examples"] == {
        "non_numeric_feature": shortened,
        "wrong_field_count": "line 4: 5 fields where the header has 3",
    }


def test_a_header_without_rows_says_so(storage: InMemoryStorage) -> None:
    ref = upload(storage, "raw/header.csv", b"a,b,target\r\n\r\n")
    with pytest.raises(DataRejectedError, match="a header and no data rows"):
        process(storage, ref, SCHEMA)


def test_writes_parts_of_whole_row_groups_that_together_hold_every_kept_row(
    storage: InMemoryStorage,
) -> None:
    ref = upload(storage, "raw/iris.csv", IRIS)
    whole = process(storage, ref, SCHEMA, chunk_rows=1_000).to_json()
    parted = InMemoryStorage(storage.bucket)
    parted_ref = upload(parted, "raw/iris.csv", IRIS)
    # 30 rows a part round down to 4 row groups of 7: 5 parts of 28 rows, then 9 rows.
    result = process(parted, parted_ref, SCHEMA, chunk_rows=7, part_rows=30).to_json()
    assert result["processed_parts"] == 6
    assert result["processed_data"] == f"processed/raw/iris.csv/{parted_ref.generation}/data/"
    parts = [
        pq.ParquetFile(pa.BufferReader(parted.read(part_object(result["processed_data"], n)).data))
        for n in range(6)
    ]
    assert [part.metadata.num_rows for part in parts] == [28, 28, 28, 28, 28, 9]
    assert [part.num_row_groups for part in parts] == [4, 4, 4, 4, 4, 2]
    assert read_processed(parted, result).equals(read_processed(storage, whole))
    assert parted.names(result["processed_data"]) == part_objects(result["processed_data"], 6)


def test_a_run_rejected_after_writing_parts_deletes_them(storage: InMemoryStorage) -> None:
    # Every row is valid and the parts are written, but the file has a single class.
    rows = "\n".join(f"{n},{n * 2},only" for n in range(40))
    ref = upload(storage, "raw/one-class.csv", f"a,b,target\n{rows}\n".encode())
    with pytest.raises(DataRejectedError, match="only one class"):
        process(storage, ref, SCHEMA, chunk_rows=5, part_rows=10)
    assert storage.names("processed/") == []
    assert storage.names("rejected/") == [rejection_object(ref)]


def test_a_run_that_fails_while_storing_parts_deletes_them_and_a_retry_completes() -> None:
    storage = InterleavedStorage()
    ref = upload(storage, "raw/iris.csv", IRIS)
    dataset = f"processed/raw/iris.csv/{ref.generation}/data/"

    def unavailable() -> None:
        raise TransientError("storage unavailable (fake)")

    storage.before("write", part_object(dataset, 2), unavailable)
    with pytest.raises(TransientError, match="storage unavailable"):
        process(storage, ref, SCHEMA, chunk_rows=10, part_rows=20)
    assert storage.names("processed/") == []  # parts 0 and 1 deleted, the lease released
    result = process(storage, ref, SCHEMA, chunk_rows=10, part_rows=20).to_json()
    assert result["processed_parts"] == 8
    assert read_processed(storage, result).num_rows == 149


def test_an_outcome_recorded_by_an_earlier_version_is_refused_with_advice(
    storage: InMemoryStorage,
) -> None:
    ref = upload(storage, "raw/iris.csv", IRIS)
    legacy = {"processed_object": f"processed/raw/iris.csv/{ref.generation}/data.parquet"}
    storage.write(stats_object(ref), json.dumps(legacy).encode(), content_type="x")
    with pytest.raises(PermanentError, match=r"earlier version .* upload the file again"):
        process(storage, ref, SCHEMA)


def test_a_second_call_returns_the_recorded_outcome_without_reprocessing(
    storage: InMemoryStorage,
) -> None:
    ref = upload(storage, "raw/iris.csv", IRIS)
    first = process(storage, ref, SCHEMA).to_json()
    generation = storage.stat(part_object(first["processed_data"], 0)).generation  # type: ignore[union-attr]
    assert process(storage, ref, SCHEMA).to_json() == first
    assert storage.stat(part_object(first["processed_data"], 0)).generation == generation  # type: ignore[union-attr]

    bad = upload(storage, "raw/bad.csv", b"")
    with pytest.raises(DataRejectedError):
        process(storage, bad, SCHEMA)
    rejected_generation = storage.stat(rejection_object(bad)).generation  # type: ignore[union-attr]
    with pytest.raises(DataRejectedError) as again:
        process(storage, bad, SCHEMA)
    assert again.value.reason_code == "empty"
    assert storage.stat(rejection_object(bad)).generation == rejected_generation  # type: ignore[union-attr]


def test_a_replaced_generation_is_gone_and_a_permanent_error(storage: InMemoryStorage) -> None:
    old = upload(storage, "raw/iris.csv", IRIS)
    new = upload(storage, "raw/iris.csv", IRIS)
    with pytest.raises(ObjectNotFoundError, match=f"generation {old.generation}"):
        process(storage, old, SCHEMA)
    assert process(storage, new, SCHEMA).to_json()["rows_out"] == 149


def test_refuses_other_buckets_prefixes_and_missing_generations(storage: InMemoryStorage) -> None:
    with pytest.raises(BadRequestError, match="data bucket"):
        process(storage, ObjectRef("elsewhere", "raw/a.csv", 1), SCHEMA)
    with pytest.raises(BadRequestError, match="outside raw/"):
        process(storage, ObjectRef(storage.bucket, "models/champion.json", 1), SCHEMA)
    with pytest.raises(ObjectNotFoundError, match="generation 5"):
        process(storage, ObjectRef(storage.bucket, "raw/none.csv", 5), SCHEMA)


@pytest.mark.parametrize(
    "cell",
    ["1_000", "\u0661\u0662", "\uff15", "0x1A", "1,5", "1e", "--1", "five"],
)
def test_only_plain_decimal_notation_counts_as_a_number(
    storage: InMemoryStorage, cell: str
) -> None:
    """float() takes "1_000" and non-ASCII digits; in a data file they are not numbers."""
    rows = [f"{index},{index + 1},{'xy'[index % 2]}" for index in range(30)]
    data = rows_csv("a,b,target", *rows, f'"{cell}",1,x')
    ref = upload(storage, "raw/numbers.csv", data)
    result = process(storage, ref, SCHEMA).to_json()
    assert result["rejections"] == {"non_numeric_feature": 1}
    assert result["rows_out"] == 30


@pytest.mark.parametrize(
    ("cell", "value"),
    [("+1.5", 1.5), ("-.5", -0.5), ("3.", 3.0), ("1E3", 1000.0), ("2e-2", 0.02)],
)
def test_decimal_and_scientific_notation_are_numbers(
    storage: InMemoryStorage, cell: str, value: float
) -> None:
    rows = [f"{index},{index + 1},{'xy'[index % 2]}" for index in range(30)]
    ref = upload(storage, "raw/numbers.csv", rows_csv("a,b,target", f"{cell},1,x", *rows))
    result = process(storage, ref, SCHEMA).to_json()
    assert result["rejections"] == {}
    assert read_processed(storage, result).column("a").to_pylist()[0] == value


def test_the_trimmed_whitespace_is_exactly_what_str_strip_removes() -> None:
    every_space = {chr(code) for code in range(0x110000) if chr(code).isspace()}

    assert set(cleaning.WHITESPACE) == every_space
    assert len(cleaning.WHITESPACE) == len(every_space)


def test_a_failed_runs_parts_go_but_a_newer_generation_of_one_stays(
    storage: InMemoryStorage,
) -> None:
    writer = DatasetWriter(storage, "processed/raw/a.csv/1/data/")
    writer.store(b"part 0")
    writer.store(b"part 1")
    # Another attempt wrote part 1 again since.
    storage.write(part_object(writer.dataset, 1), b"newer", content_type="x")
    writer.discard()
    assert storage.names("processed/") == [part_object(writer.dataset, 1)]
    assert storage.read(part_object(writer.dataset, 1)).data == b"newer"
    assert writer.written == []
