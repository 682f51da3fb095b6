"""Contention and faults on the real local stack: uploads racing for the champion (both
modes), and processes killed or restarted while runs are under way.

The stack runs with 15 s stage timeouts, so the lease of an attempt that was killed
expires in seconds. Tests of one mode share one stack and run in file order; a fault
that takes the same path in both modes is staged in one of them only.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import requests

from devstack import runs
from devstack.runs import RunKey
from pipeline_core import contract
from tests.integration.conftest import LocalStack
from tests.integration.harness import (
    FEATURES,
    champion_version,
    devstack,
    freeze,
    kill,
    log_count,
    model_versions,
    object_exists,
    overlapping_csv,
    random_labels_csv,
    read_object,
    separable_csv,
    wait_for,
    write_test_stack_file,
)

STAGE_TIMEOUT_SECONDS = 15
# Enough trees that training one overlapping upload holds its lease for about two
# seconds (10 trees hold it for a quarter of a second), so a test polling for the lease
# sees it while the attempt is still training, and can kill that attempt.
TREES = 100
RUN_TIMEOUT = 240.0
TRAINER = {"workflow": "train_model", "events": "train_model_event"}


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("stack-file")
    return write_test_stack_file(
        directory, stage_timeout_seconds=STAGE_TIMEOUT_SECONDS, trees=TREES
    )


def no_progress(_line: str) -> None:
    return None


def recorded_outcome(local_stack: LocalStack, summary: dict[str, Any]) -> dict[str, Any]:
    key = RunKey(summary["bucket"], summary["object"], summary["generation"])
    data = read_object(local_stack.state, contract.lineage_object(key))
    assert data is not None, f"no recorded outcome for {summary['object']}"
    outcome: dict[str, Any] = json.loads(data)
    return outcome


def restart(local_stack: LocalStack, service: str) -> None:
    restarted = devstack(local_stack.state_dir, "restart", service)
    assert restarted.returncode == 0, restarted.stderr
    local_stack.refresh()


def test_six_concurrent_uploads_all_finish_and_the_best_becomes_champion(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    champion_data = overlapping_csv(tmp_path / "champion.csv", rows=600)
    (first,) = runs.upload_all_and_follow(
        local_stack.state,
        {"race/champion.csv": champion_data},
        timeout=RUN_TIMEOUT,
        progress=no_progress,
    )
    assert first["status"] == "succeeded", first
    uploads = {
        # Beat the champion, and tie with one another (every forest scores 1.0 on them).
        **{
            f"race/separable-{seed}.csv": separable_csv(tmp_path / f"s{seed}.csv", seed=seed)
            for seed in (21, 22, 23)
        },
        # Ties the first champion (the same rows give the same metrics).
        "race/same-as-champion.csv": champion_data,
        # Below the minimum.
        **{
            f"race/random-{seed}.csv": random_labels_csv(tmp_path / f"r{seed}.csv", seed=seed)
            for seed in (24, 25)
        },
    }

    summaries = runs.upload_all_and_follow(
        local_stack.state, uploads, timeout=RUN_TIMEOUT, progress=no_progress
    )

    assert [summary["status"] for summary in summaries] == ["succeeded"] * len(uploads), summaries
    for summary in summaries:
        outcome = recorded_outcome(local_stack, summary)
        assert outcome["decided"] is True
        assert outcome["model_version"] == summary["model_version"]
        assert outcome["promoted"] == summary["promoted"]
    by_name = {summary["object"].removeprefix("raw/"): summary for summary in summaries}
    assert not any(by_name[f"race/random-{seed}.csv"]["promoted"] for seed in (24, 25))
    champion = champion_version(local_stack.state)
    promoted = {summary["model_version"]: summary for summary in summaries if summary["promoted"]}
    assert champion in promoted, "the champion is the last promoted candidate of the burst"
    best = max(summary["metrics"]["f1_macro"] for summary in [first, *summaries])
    assert promoted[champion]["metrics"]["f1_macro"] == best == 1.0
    served = runs.predict(local_stack.state, {"instances": [dict.fromkeys(FEATURES, 10.0)]})
    assert served["model_version"] == champion


def test_a_trainer_killed_mid_training_is_redelivered_and_the_run_completes_once(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    state = local_stack.state
    trainer = state.service(TRAINER[local_stack.config.orchestration])
    champion_before = champion_version(state)
    versions_before = model_versions(state)
    takeovers_before = log_count(trainer.log, "taking over an expired lease")
    data = overlapping_csv(tmp_path / "killed.csv", seed=9)
    with runs.summary_watch(state) as watch:
        key = runs.upload(state, data, name="killed.csv")
        lease = f"models/by-source/{key.object}/{key.generation}.lease.json"
        wait_for(
            lambda: object_exists(state, lease) or None,
            timeout=120,
            what="training",
            interval=0.05,
        )
        kill(trainer)
        restart(local_stack, trainer.name)
        summary = runs.follow(
            local_stack.state, key, watch=watch, timeout=RUN_TIMEOUT, progress=no_progress
        )

    assert summary["status"] == "succeeded"
    # The redelivery found the killed attempt's lease, waited out its expiry, took it over.
    assert log_count(trainer.log, "taking over an expired lease") > takeovers_before
    outcome = recorded_outcome(local_stack, summary)
    assert outcome["decided"] is True
    assert outcome["model_version"] == summary["model_version"]
    # The killed attempt may have saved a candidate before dying: it is never decided,
    # and the champion is the one the recorded decision says.
    assert len(model_versions(state) - versions_before) in (1, 2)
    expected = summary["model_version"] if summary["promoted"] else champion_before
    assert champion_version(state) == expected


@pytest.mark.parametrize("local_stack", ["workflow"], indirect=True)
def test_predict_killed_mid_load_fails_requests_only_while_it_is_down(
    local_stack: LocalStack,
) -> None:
    url = local_stack.state.service("predict").url
    champion = champion_version(local_stack.state)
    body = {"instances": [dict.fromkeys(FEATURES, 10.0)]}
    answers: list[tuple[float, float, str | None]] = []  # sent, answered, version served
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    response = session.post(url, json=body, timeout=10)
                    version = response.json()["model_version"] if response.ok else None
                except (requests.RequestException, ValueError, KeyError):
                    version = None
                answers.append((sent, time.monotonic(), version))

    def served_since(moment: float) -> int:
        return sum(1 for sent, _, version in answers if sent > moment and version)

    clients = [threading.Thread(target=load) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        wait_for(lambda: served_since(0) >= 20 or None, timeout=60, what="predictions")
        killed_at = time.monotonic()
        kill(local_stack.state.service("predict"))
        restart(local_stack, "predict")
        back_at = time.monotonic()
        wait_for(lambda: served_since(back_at) >= 20 or None, timeout=60, what="predictions")
    finally:
        stop.set()
        for client in clients:
            client.join()

    failed = [(sent, answered) for sent, answered, version in answers if version is None]
    assert failed, "no request saw the outage"
    assert all(sent <= back_at and answered >= killed_at for sent, answered in failed)
    assert {version for _, _, version in answers if version} == {champion}


@pytest.mark.parametrize("local_stack", ["workflow"], indirect=True)
def test_storage_unresponsive_during_processing_is_survived_with_raw_data_intact(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    state = local_stack.state
    data = separable_csv(tmp_path / "outage.csv", rows_per_class=60_000, seed=41)
    with runs.summary_watch(state) as watch:
        key = runs.upload(state, data, name="outage.csv")
        lease = f"processed/{key.object}/{key.generation}/lease.json"
        # The lease lives only while processing runs (about a second on an idle
        # machine), so it is polled far more often than the harness's default.
        wait_for(
            lambda: object_exists(state, lease) or None,
            timeout=120,
            what="processing",
            interval=0.02,
        )
        # Killing it would lose the bucket (fake-gcs-server keeps objects in memory).
        freeze(state.service("storage"), seconds=5)
        summary = runs.follow(state, key, watch=watch, timeout=RUN_TIMEOUT, progress=no_progress)

    assert summary["status"] == "succeeded", summary
    assert read_object(state, key.object) == data.read_bytes()
    stats_data = read_object(state, contract.stats_object(key))
    assert stats_data is not None
    stats = json.loads(stats_data)
    parts = [
        read_object(state, name)
        for name in contract.part_objects(stats["processed_data"], stats["processed_parts"])
    ]
    assert all(part is not None for part in parts)
    rows = sum(pq.read_table(io.BytesIO(part)).num_rows for part in parts if part)
    assert rows == stats["rows_out"] == 180_000


@pytest.mark.parametrize("local_stack", ["events"], indirect=True)
def test_an_upload_after_the_pubsub_emulator_restarted_runs(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    """Between the uploads of the tests before and this one, the emulator (which keeps
    nothing) is restarted; the topics and subscriptions come back with it."""
    restart(local_stack, "pubsub")
    (summary,) = runs.upload_all_and_follow(
        local_stack.state,
        {"after-pubsub-restart.csv": separable_csv(tmp_path / "after.csv", seed=51)},
        timeout=RUN_TIMEOUT,
        progress=no_progress,
    )
    assert summary["status"] == "succeeded", summary
