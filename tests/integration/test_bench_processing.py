"""bench.processing: the generated files are what its docstring says (distinct rows,
learnable classes) and a quick run yields the whole document. Behaviour only: no
timing is asserted."""

from __future__ import annotations

import csv
from pathlib import Path

from bench.processing import FEATURES, write_csv
from tests.integration.harness import run_benchmark


def test_the_generated_file_holds_distinct_rows_whose_class_the_features_decide(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rows.csv"
    write_csv(path, 30_000)
    with path.open(newline="") as source:
        rows = list(csv.reader(source))
    assert rows[0] == [*FEATURES, "target"]
    body = rows[1:]
    assert len(body) == 30_000
    assert len({tuple(row) for row in body}) == len(body)
    for row in body:
        first, second = (int(cell.replace(".", "")) for cell in row[:2])
        assert all(len(cell.split(".")[1]) == 6 and 0 <= float(cell) < 10 for cell in row[:4])
        assert row[4] == str((first + second) * 3 // 20_000_000)
    assert {row[4] for row in body} == {"0", "1", "2"}


def test_a_quick_run_measures_ours_and_the_peer_on_every_size() -> None:
    document = run_benchmark("bench.processing", "--rows", "20000", "40000", "--repeats", "1")
    assert [result["rows"] for result in document["results"]] == [20_000, 40_000]
    for result in document["results"]:
        for variant in ("ours", "ours_local_disk", "pandas"):
            assert result[variant]["rows_out"] == result["rows"]  # distinct rows, all kept
            assert result[variant]["peak_rss_mb"]["max"] > document["baseline_rss_mb"] / 2
    # Below 1M rows and without a ~1 GB file, the rate, ratio and 1 GB targets do not
    # apply: the run cannot count as meeting them all.
    assert not document["all_targets_met"]
    assert {target["name"] for target in document["targets"]} == {
        "min_mb_per_second",
        "min_ratio_to_pandas",
        "max_peak_rss_mb_at_1gb",
        "max_peak_rss_growth_over_smallest",
    }
