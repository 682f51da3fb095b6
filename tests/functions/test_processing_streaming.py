"""process_data's streaming: block size changes nothing but speed, progress is logged,
and a record no block can hold is refused with a reason."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_core import csv_source
from pipeline_core.cleaning import MISSING_TARGET
from pipeline_core.contract import part_object, processed_data, stats_object
from pipeline_core.errors import DataRejectedError, TransientError
from pipeline_core.processing import DatasetSchema, process
from tests.functions.conftest import (
    BUCKET,
    IRIS,
    log_lines,
    read_processed,
    reading_threads,
    upload,
)
from tests.functions.fakes import InMemoryStorage, InterleavedStorage

SCHEMA = DatasetSchema(min_rows=3)


def outcome(block_bytes: int) -> tuple[pa.Table, dict[str, object]]:
    storage = InMemoryStorage(BUCKET)
    ref = upload(storage, "raw/iris.csv", IRIS)
    result = process(storage, ref, SCHEMA, block_bytes=block_bytes)
    table = read_processed(storage, result.stats)
    return table, json.loads(storage.read(stats_object(ref)).data)


def test_tiny_blocks_give_the_same_rows_and_stats_as_one_block() -> None:
    whole_table, whole_stats = outcome(block_bytes=1 << 20)
    tiny_table, tiny_stats = outcome(block_bytes=64)  # a row or two a block
    assert tiny_table.equals(whole_table)
    assert tiny_stats["rows_in"] == whole_stats["rows_in"] == 150
    assert tiny_stats["rejections"] == whole_stats["rejections"] == {"duplicate": 1}
    for name, values in whole_stats["feature_stats"].items():  # type: ignore[attr-defined]
        assert tiny_stats["feature_stats"][name] == pytest.approx(values)  # type: ignore[index]


def test_logs_progress_with_rows_megabytes_and_rate(
    storage: InMemoryStorage, captured_logs: io.StringIO
) -> None:
    ref = upload(storage, "raw/iris.csv", IRIS)
    process(storage, ref, SCHEMA, block_bytes=512, progress_seconds=0.0)
    progress = [
        line for line in log_lines(captured_logs) if line["message"] == "processing progress"
    ]
    assert len(progress) >= 5
    assert [line["rows_in"] for line in progress] == sorted(line["rows_in"] for line in progress)
    last = progress[-1]
    assert last["object"] == "raw/iris.csv"
    assert last["mb_read"] == pytest.approx(len(IRIS) / 2**20, abs=0.1)
    # A few KB read on busy cores can round to 0.0 MB/s: the rate is reported, not timed.
    assert isinstance(last["mb_per_second"], float) and last["mb_per_second"] >= 0
    finished = [
        line for line in log_lines(captured_logs) if "read the whole upload" in line["message"]
    ]
    assert finished[0]["rows_in"] == 150


def test_a_short_upload_logs_no_progress(
    storage: InMemoryStorage, captured_logs: io.StringIO
) -> None:
    ref = upload(storage, "raw/iris.csv", IRIS)
    process(storage, ref, SCHEMA)
    assert not [line for line in log_lines(captured_logs) if "progress" in line["message"]]


def test_a_line_longer_than_any_block_is_refused(storage: InMemoryStorage) -> None:
    data = b"a,b,target\n" + b"1" * 2000 + b",2,x\n"
    ref = upload(storage, "raw/long.csv", data)
    with pytest.raises(DataRejectedError) as caught:
        process(storage, ref, SCHEMA, block_bytes=64)
    assert caught.value.reason_code == "not_csv"
    assert "a line is longer than" in caught.value.detail


def test_a_record_longer_than_the_parsers_chunk_is_read_whole(storage: InMemoryStorage) -> None:
    long_label = "y" * 1_500_000
    rows = [f"{index},{index},{'xz'[index % 2]}" for index in range(10)]
    data = ("a,b,target\n" + "\n".join([*rows, f'1,2,"{long_label}\n!"']) + "\n").encode()
    ref = upload(storage, "raw/long-label.csv", data)
    result = process(storage, ref, SCHEMA).to_json()
    assert result["rows_in"] == result["rows_out"] == 11
    classes = json.loads(storage.read(stats_object(ref)).data)["class_counts"]
    assert classes[f"{long_label}\n!"] == 1


@pytest.mark.parametrize(
    "lead",
    [
        pytest.param("\n" * 70_000, id="blank-lines-past-the-header-scan"),
        pytest.param("", id="header-at-the-start"),
    ],
)
def test_the_header_is_found_wherever_it_starts_in_the_first_block(
    storage: InMemoryStorage, lead: str
) -> None:
    rows = "".join(f"{index},{index % 7},{'xyz'[index % 3]}\n" for index in range(20_000))
    ref = upload(storage, "raw/late-header.csv", f"{lead}a,b,target\n{rows}".encode())
    stats = process(storage, ref, SCHEMA).to_json()
    assert stats["rows_in"] == 20_000
    assert stats["features"] == ["a", "b"]


def test_a_quoted_header_cell_longer_than_the_header_scan_is_read_whole(
    storage: InMemoryStorage,
) -> None:
    # The scanned prefix ends inside the quoted name, where the record looks complete.
    long_name = "line\n" * 20_000
    rows = "".join(f"{index},{'xyz'[index % 3]}\n" for index in range(30))
    ref = upload(storage, "raw/long-name.csv", f'"{long_name}",target\n{rows}'.encode())
    stats = process(storage, ref, SCHEMA).to_json()
    assert stats["features"] == [long_name.strip()]
    assert stats["rows_in"] == stats["rows_out"] == 30


@pytest.mark.parametrize("compressed", [False, True])
def test_decoded_hands_over_every_byte_whatever_the_read_sizes(compressed: bool) -> None:
    text = b"a,b,target\n" + b"".join(b"%d,%d,x\n" % (row, row * 7) for row in range(5000))
    raw = gzip.compress(text) if compressed else text
    stream = csv_source.decoded(io.BytesIO(raw))
    pieces = [stream.read(1), stream.read(3), stream.read(4096)]
    pieces.append(stream.read())
    assert pieces[0] == b"a" and pieces[1] == b",b,"
    assert b"".join(pieces) == text
    assert stream.read(10) == b""


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["1", "2.5", '"q"', '"a\nb"', '"x,""y"""', "", "7"]),
            st.sampled_from(["\n", "\r\n"]),
        ),
        min_size=1,
        max_size=60,
    ),
    st.integers(min_value=8, max_value=64),
)
def test_blocks_end_at_record_boundaries_and_add_up_to_the_text(
    records: list[tuple[str, str]], block_bytes: int
) -> None:
    """Cut on a line feed outside quotes, quoted line breaks or not, every byte once."""
    text = "".join(f"{cell},z{end}" for cell, end in records).encode()
    with csv_source.Ahead("test-read-ahead") as reader:
        cut = list(csv_source.blocks(io.BytesIO(text), reader, block_bytes))
    assert b"".join(block.data for block in cut) == text
    for block in cut[:-1]:
        assert block.data.endswith(b"\n")
        assert block.data.count(b'"') % 2 == 0
    lines = [block.first_line for block in cut]
    assert lines == [1 + sum(b.line_breaks() for b in cut[:index]) for index in range(len(cut))]


def unavailable() -> None:
    raise TransientError("storage unavailable (fake)")


@pytest.mark.parametrize("failure", ["refused after the header", "storage fails mid-file"])
def test_a_run_ended_early_leaves_no_reading_thread_behind(failure: str) -> None:
    """The threads that read and parse ahead are done when processing returns, even with
    blocks still unread and the error (and with it every frame it passed through) still
    held: nothing is left for the garbage collector to stop on whichever thread it runs."""
    storage = InterleavedStorage()
    rows = b"".join(
        b"%d,%d,%s\n" % (row, row % 7, b"xy"[row % 2 : row % 2 + 1]) for row in range(20000)
    )
    target = b"label" if failure == "refused after the header" else b"target"
    ref = upload(storage, "raw/ended.csv", b"a,b," + target + b"\n" + rows)
    storage.before("write", part_object(processed_data(ref), 1), unavailable)
    before = reading_threads()
    with pytest.raises((DataRejectedError, TransientError)) as caught:
        process(storage, ref, SCHEMA, block_bytes=4096, chunk_rows=100, part_rows=200)
    error = caught.value
    if failure == "refused after the header":
        assert isinstance(error, DataRejectedError) and error.reason_code == MISSING_TARGET
    else:
        assert isinstance(error, TransientError) and "storage unavailable" in str(error)
    assert reading_threads() - before == set()


# An abandoned block stream in a reference cycle, collected on a thread that holds
# threading's _shutdown_locks_lock, as a thread that is starting holds it: the
# collector's finalizer must not join a thread (``join`` takes that same lock).
ABANDONED_STREAM_COLLECTED = """
import gc, io, sys, threading
from pipeline_core import csv_source

class Cycle:
    pass

with csv_source.Ahead("csv-read-ahead") as reader:
    stream = csv_source.blocks(io.BytesIO(b"a,b\\n" + b"1,2\\n" * 100000), reader, 4096)
    next(stream)
    cycle = Cycle()
    cycle.itself, cycle.stream = cycle, stream
    del stream, cycle

    def collect_holding_the_lock():
        with threading._shutdown_locks_lock:
            gc.collect()

    collector = threading.Thread(target=collect_holding_the_lock, daemon=True)
    collector.start()
    collector.join(10)
    if collector.is_alive():
        print("the collector is stuck finalizing the stream", flush=True)
        import os
        os._exit(3)
print("collected")
"""


def test_an_abandoned_block_stream_is_collected_on_any_thread_without_a_hang() -> None:
    """The CI hang: the garbage collector finalized an abandoned stream of blocks
    inside ``threading``'s bookkeeping, and the stream's cleanup joined its thread.
    A process of its own: a regression would leave a thread stuck holding that lock."""
    completed = subprocess.run(
        [sys.executable, "-c", ABANDONED_STREAM_COLLECTED],
        check=False,
        cwd=Path(csv_source.__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (completed.returncode, completed.stdout.strip()) == (0, "collected"), completed.stderr
