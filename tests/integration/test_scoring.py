"""Batch scoring on the real local stack, in both orchestration modes: an upload under
score/ is scored by the champion, and the predictions are read back from the bucket.

The module's stacks start empty, so the first test scores before any champion exists.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from devstack import runs
from tests.integration.conftest import LocalStack
from tests.integration.harness import devstack, read_object, separable_csv

RUN_TIMEOUT = 180.0


def held_out(path: Path, *, seed: int) -> tuple[Path, list[str]]:
    """An unlabelled file of the separable data set, and the labels it hides."""
    frame = pd.read_csv(separable_csv(path.with_suffix(".labelled.csv"), seed=seed))
    frame.drop(columns=["target"]).to_csv(path, index=False)
    return path, [str(label) for label in frame["target"]]


def last_json(output: str) -> dict[str, object]:
    document: dict[str, object] = json.loads(output.strip().splitlines()[-1])
    return document


def test_scoring_before_any_champion_fails_saying_to_train_first(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    data, _ = held_out(tmp_path / "early.csv", seed=3)

    scored = devstack(local_stack.state_dir, "score", str(data), "--wait", "--timeout", "120")

    assert scored.returncode == 1
    summary = last_json(scored.stdout)
    assert summary["status"] == "failed"
    assert summary["stage"] == "score_data"
    assert "train one first" in str(summary["reason"])
    assert read_object(local_stack.state, "score/early.csv") == data.read_bytes()


def test_a_trained_champion_scores_an_unlabelled_file(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    trained = runs.upload_and_follow(
        local_stack.state,
        separable_csv(tmp_path / "train.csv"),
        name="train.csv",
        timeout=RUN_TIMEOUT,
        progress=lambda _line: None,
    )
    assert trained["promoted"] is True
    data, labels = held_out(tmp_path / "new.csv", seed=9)
    out = tmp_path / "predictions.csv"

    scored = devstack(local_stack.state_dir, "score", str(data), "--wait", "--out", str(out))

    assert scored.returncode == 0, scored.stderr
    summary = last_json(scored.stdout)
    assert summary["status"] == "scored"
    assert summary["model_version"] == trained["model_version"]
    assert summary["rows_scored"] == len(labels)
    assert "scored: " in scored.stderr  # the progress line of the recorded summary
    with out.open(newline="") as predictions_file:
        rows = list(csv.DictReader(predictions_file))
    assert [row["row"] for row in rows] == [str(number) for number in range(1, len(labels) + 1)]
    assert [row["label"] for row in rows] == labels
    assert {row["model_version"] for row in rows} == {trained["model_version"]}
    assert read_object(local_stack.state, str(summary["predictions_object"])) is not None
    listed = devstack(local_stack.state_dir, "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    row = next(row for row in json.loads(listed.stdout) if row["object"] == "score/new.csv")
    assert row["state"] == "scored"


def test_a_file_with_other_columns_is_rejected_naming_them(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    data, _ = held_out(tmp_path / "renamed.csv", seed=4)
    header, _, rows = data.read_text(encoding="utf-8").partition("\n")
    data.write_text(header.replace("petal_width_cm", "petal_w") + "\n" + rows, encoding="utf-8")

    scored = devstack(local_stack.state_dir, "score", str(data), "--wait", "--timeout", "120")

    assert scored.returncode == 1
    summary = last_json(scored.stdout)
    assert summary["status"] == "rejected"
    assert "missing columns ['petal_width_cm']" in str(summary["reason"])
    assert "unknown columns ['petal_w']" in str(summary["reason"])
    record = read_object(local_stack.state, str(summary["rejection_object"]))
    assert record is not None
    assert json.loads(record)["reason"] == "mismatched_columns"
