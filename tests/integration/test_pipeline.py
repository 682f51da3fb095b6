"""The event-driven chain on the real local stack, in both orchestration modes.

Tests of one mode share one stack (module-scoped fixture) and run in file order; each
uploads under its own object name, so they do not depend on one another's data.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from components.topology import build_topology, push_subscription_name, workflow_name
from devstack import runs
from devstack.demo import write_iris_csv
from devstack.errors import RunFailedError
from devstack.processes import group_alive, stop_group
from devstack.stack import load_state
from tests.integration.conftest import LocalStack
from tests.integration.harness import (
    FEATURES,
    champion_version,
    devstack,
    log_count,
    model_versions,
    object_resource,
    pull_matching,
    random_labels_csv,
    read_object,
    separable_csv,
    unavailable_service,
    wait_for,
)

RUN_TIMEOUT = 180.0


def no_progress(_line: str) -> None:
    return None


def run(local_stack: LocalStack, file: Path, name: str) -> dict[str, Any]:
    return runs.upload_and_follow(
        local_stack.state, file, name=name, timeout=RUN_TIMEOUT, progress=no_progress
    )


def test_upload_trains_a_champion_that_serves_predictions(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    data = tmp_path / "iris.csv"
    sample = write_iris_csv(data, "target")

    uploaded = devstack(local_stack.state_dir, "upload", str(data), "--wait")

    assert uploaded.returncode == 0, uploaded.stderr
    summary = json.loads(uploaded.stdout.strip().splitlines()[-1])
    assert summary["status"] == "succeeded"
    assert summary["object"] == "raw/iris.csv"
    assert summary["promoted"] is True
    assert summary["champion_version"] == summary["model_version"]
    assert summary["metrics"]["f1_macro"] > 0.7
    progress = uploaded.stderr
    # Stage by stage, in the order they happen.
    stages = ("uploaded gs://", "processed: 150 rows in", "decided: model", "champion is now")
    positions = [progress.find(stage) for stage in stages]
    assert -1 not in positions, progress
    assert positions == sorted(positions), progress
    assert champion_version(local_stack.state) == summary["model_version"]
    predicted = devstack(local_stack.state_dir, "predict", json.dumps({"instances": [sample]}))
    assert predicted.returncode == 0, predicted.stderr
    answer = json.loads(predicted.stdout)
    assert answer["model_version"] == summary["model_version"]
    assert answer["predictions"][0]["label"] == "setosa"  # the first iris row


def test_better_data_is_promoted_and_worse_data_is_not(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    better = run(local_stack, separable_csv(tmp_path / "better.csv"), "better.csv")
    assert better["promoted"] is True
    assert better["metrics"]["f1_macro"] == 1.0

    worse = run(local_stack, random_labels_csv(tmp_path / "worse.csv"), "worse.csv")

    assert worse["status"] == "succeeded"
    assert worse["promoted"] is False
    assert worse["champion_version"] == better["model_version"]
    assert champion_version(local_stack.state) == better["model_version"]
    served = runs.predict(local_stack.state, {"instances": [dict.fromkeys(FEATURES, 10.0)]})
    assert served["model_version"] == better["model_version"]


def test_an_upload_with_other_columns_smokes_its_own_candidate_and_the_policy_decides(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    """The smoke prediction goes to the candidate (pinned by version), so new columns
    are not sent to the old champion: the run succeeds and the policy decides."""
    run(local_stack, separable_csv(tmp_path / "before.csv"), "before.csv")
    renamed = tmp_path / "renamed.csv"
    original = separable_csv(tmp_path / "original.csv").read_text(encoding="utf-8")
    header, _, rows = original.partition("\n")
    renamed.write_text(header.replace("sepal_length_cm", "sepal_len") + "\n" + rows)

    summary = run(local_stack, renamed, "renamed.csv")

    assert summary["status"] == "succeeded"
    smoke = summary["smoke_prediction"]
    assert smoke["model_version"] == summary["model_version"]
    assert smoke["predictions"]
    assert summary["promoted"] is True  # equal f1 (1.0) is not worse than the champion
    assert champion_version(local_stack.state) == summary["model_version"]
    served = runs.predict(
        local_stack.state,
        {"instances": [dict.fromkeys(["sepal_len", *FEATURES[1:]], 1.0)]},
    )
    assert served["model_version"] == summary["model_version"]
    # The version before it stays reachable by pinning it, with its own columns.
    versions = sorted(model_versions(local_stack.state))
    earlier = versions[-2]
    pinned = runs.predict(
        local_stack.state,
        {
            "instances": [dict.fromkeys(FEATURES, 1.0)],
            "parameters": {"model_version": earlier},
        },
    )
    assert pinned["model_version"] == earlier


def test_corrupt_file_is_rejected_and_the_champion_untouched(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    before = read_object(local_stack.state, "models/champion.json")
    corrupt = tmp_path / "corrupt.csv"
    corrupt.write_bytes(b"\x00\xff\x13 not, a\ncsv\x00" * 40)

    uploaded = devstack(local_stack.state_dir, "upload", str(corrupt), "--wait")

    assert uploaded.returncode == 1
    summary = json.loads(uploaded.stdout.strip().splitlines()[-1])
    assert summary["status"] == "rejected"
    assert summary["stage"] == "process_data"
    assert summary["reason"]
    assert f"error: run rejected at process_data: {summary['reason']}" in uploaded.stderr
    assert "rejected: " in uploaded.stderr  # the progress line of the rejection record
    rejection = read_object(local_stack.state, summary["rejection_object"])
    assert rejection is not None
    assert read_object(local_stack.state, "models/champion.json") == before
    assert read_object(local_stack.state, "raw/corrupt.csv") == corrupt.read_bytes()


def test_an_empty_file_is_refused_before_upload_and_an_empty_object_is_listed_as_ignored(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")

    uploaded = devstack(local_stack.state_dir, "upload", str(empty), "--wait", "--timeout", "60")

    assert uploaded.returncode == 1
    assert f"error: {empty} is empty; the pipeline ignores empty objects" in uploaded.stderr
    assert read_object(local_stack.state, "raw/empty.csv") is None
    # Placed by another tool (a console "folder"): no run starts, and 'runs' says why.
    bucket = local_stack.state.storage_client().bucket(local_stack.state.bucket)
    bucket.blob("raw/placeholder/").upload_from_string(b"")
    listed = devstack(local_stack.state_dir, "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    row = next(row for row in json.loads(listed.stdout) if row["object"] == "raw/placeholder/")
    assert row["state"] == "ignored"
    assert row["detail"] == "the pipeline ignores empty objects under raw/"


def test_a_notification_delivered_three_times_makes_one_run(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    state = local_stack.state
    wiring = build_topology(local_stack.config.orchestration)
    versions_before = model_versions(state)
    data = separable_csv(tmp_path / "twice.csv", seed=7)

    with runs.summary_watch(state) as watch:
        key = runs.upload(state, data, name="thrice.csv")
        resource = object_resource(state, key.object)
        attributes = {
            "eventType": "OBJECT_FINALIZE",
            "payloadFormat": "JSON_API_V1",
            "bucketId": key.bucket,
            "objectId": key.object,
            "objectGeneration": key.generation,
        }
        topic = state.topics[wiring.notification_topic]
        for _ in range(2):  # the bucket's own notification is the first delivery
            state.pubsub().publish(topic, json.dumps(resource).encode(), attributes)
        summary = runs.follow(state, key, watch=watch, timeout=RUN_TIMEOUT, progress=no_progress)
        # Let the duplicates play out before counting what they produced.
        time.sleep(8)

    assert summary["status"] == "succeeded"
    assert model_versions(state) - versions_before == {summary["model_version"]}
    if wiring.workflow is not None:
        executions = [
            execution
            for execution in runs.list_executions(state)
            if json.loads(execution["argument"]).get("object") == key.object
        ]
        assert len(executions) == 1


# The process whose absence makes a stage fail: in workflow mode the Executions API
# (trigger_workflow cannot start the run), in events mode the training function (a
# stand-in answers its pushes with 503 until it is back).
TRANSIENT_BREAK = {"workflow": "workflows", "events": "train_model_event"}
TRIGGER_FAILURE_LOG = "could not start the workflow"


def test_a_stage_failing_transiently_is_retried_to_success(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    state = local_stack.state
    broken = state.service(TRANSIENT_BREAK[local_stack.config.orchestration])
    stop_group(broken)
    data = separable_csv(tmp_path / "retry.csv", seed=11)
    try:
        with runs.summary_watch(state) as watch:
            if broken.name == "workflows":
                trigger_log = state.service("trigger_workflow").log
                failures_before = log_count(trigger_log, TRIGGER_FAILURE_LOG)
                key = runs.upload(state, data, name="retry.csv")
                wait_for(
                    lambda: log_count(trigger_log, TRIGGER_FAILURE_LOG) > failures_before or None,
                    timeout=60,
                    what="trigger_workflow failing to start the execution",
                )
            else:
                with unavailable_service(broken.port) as refused:
                    key = runs.upload(state, data, name="retry.csv")
                    wait_for(lambda: refused or None, timeout=60, what=f"a push to {broken.name}")
            restarted = devstack(local_stack.state_dir, "restart", broken.name)
            assert restarted.returncode == 0, restarted.stderr
            local_stack.refresh()
            summary = runs.follow(
                local_stack.state,
                key,
                watch=watch,
                timeout=RUN_TIMEOUT,
                progress=no_progress,
            )
    finally:
        # The later tests of this mode need the stage back even when this one failed.
        if not group_alive(load_state(local_stack.state_dir).service(broken.name).pid):
            devstack(local_stack.state_dir, "restart", broken.name)
        local_stack.refresh()
    assert summary["status"] == "succeeded"
    assert summary["object"] == "raw/retry.csv"


# The process whose absence makes the dead-lettered delivery fail every time.
PERMANENT_BREAK = {"workflow": "workflows", "events": "predict"}


def test_a_message_that_keeps_failing_lands_on_the_dead_letter_topic(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    config = local_stack.config
    wiring = build_topology(config.orchestration)
    (delivery,) = [
        item for item in wiring.deliveries if item.dead_letter and item.function != "score_data"
    ]
    source_subscription = push_subscription_name(config, delivery)
    broken = local_stack.state.service(PERMANENT_BREAK[config.orchestration])
    stop_group(broken)
    name = f"dead-{uuid.uuid4().hex[:6]}.csv"
    followed: RunFailedError | None = None
    try:
        data = separable_csv(tmp_path / name, seed=5)
        if wiring.workflow is not None:
            # The upload's own notification is what gets dead-lettered: following the
            # run fails on it rather than waiting for a summary that cannot come.
            with pytest.raises(RunFailedError) as raised:
                run(local_stack, data, name)
            followed = raised.value
        else:
            runs.upload(local_stack.state, data, name=name)
        dead = wait_for(
            lambda: pull_matching(
                local_stack.state,
                local_stack.state.dead_letter_subscription,
                lambda message: (
                    message.attributes.get("CloudPubSubDeadLetterSourceSubscription")
                    == source_subscription
                ),
            ),
            timeout=120,
            what=f"a dead-lettered message from {source_subscription}",
        )
    finally:
        restarted = devstack(local_stack.state_dir, "restart", broken.name)
        local_stack.refresh()
    assert restarted.returncode == 0, restarted.stderr
    assert dead.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == str(
        config.dead_letter_max_attempts
    )
    if followed is not None:
        assert followed.summary["stage"] == "delivery"
        assert f"dead-lettered by {source_subscription}" in str(followed)
        assert f"after {config.dead_letter_max_attempts} delivery attempts" in str(followed)


def test_events_prints_every_summary_oldest_first_and_keeps_them(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    name = f"events-{uuid.uuid4().hex[:6]}.csv"
    tiny = tmp_path / name
    tiny.write_text("sepal_length_cm,target\n1.0,0\n", encoding="utf-8")  # rejected at once
    with pytest.raises(RunFailedError):
        run(local_stack, tiny, name)

    listed = devstack(local_stack.state_dir, "events")

    assert listed.returncode == 0, listed.stderr
    summaries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert summaries[-1]["object"] == f"raw/{name}"
    assert summaries[-1]["status"] == "rejected"
    published = [datetime.fromisoformat(summary["published_at"]) for summary in summaries]
    assert published == sorted(published)
    # Reading gives the messages back: the next call lists the same history.
    again = devstack(local_stack.state_dir, "events")
    assert [json.loads(line) for line in again.stdout.splitlines()] == summaries


def test_health_probes_leave_no_warning_in_the_functions_logs(local_stack: LocalStack) -> None:
    # Every function was probed at 'up' (and the restarted ones again).
    for function in build_topology(local_stack.config.orchestration).functions:
        log = local_stack.state.service(function.key).log
        assert log_count(log, "method_not_allowed") == 0, function.key


def test_the_workflow_log_holds_its_executions_steps(local_stack: LocalStack) -> None:
    workflow = local_stack.state.workflow_name
    if workflow is None:  # events mode: no workflow, and 'logs' says so
        shown = devstack(local_stack.state_dir, "logs", workflow_name(local_stack.config))
        assert shown.returncode == 1
        assert "no service" in shown.stderr
        return
    shown = devstack(local_stack.state_dir, "logs", workflow, "--lines", "100000")
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines() if line.startswith("{")]
    steps = {line["step"] for line in lines if line.get("workflow") == workflow and "step" in line}
    # Steps every run takes, rejected or trained (the events test made a rejected one).
    assert {"init", "process", "post", "publish"} <= steps, steps
    messages = {line.get("message") for line in lines if line.get("workflow") == workflow}
    assert {"execution started", "execution succeeded"} <= messages


def test_report_shows_the_local_stacks_history(local_stack: LocalStack, tmp_path: Path) -> None:
    out = tmp_path / "history.html"

    written = devstack(local_stack.state_dir, "report", "--out", str(out))

    assert written.returncode == 0, written.stderr
    summary = json.loads(written.stdout)
    assert summary["report"] == str(out)
    assert summary["versions"] == len(model_versions(local_stack.state))
    assert summary["champion_version"] == champion_version(local_stack.state)
    page = out.read_text(encoding="utf-8")
    # Earlier tests of the module uploaded, trained and promoted; each chart shows what
    # exists (run alone, a fresh stack has no data and the page says so).
    charts = {
        "rows-per-upload": summary["uploads"] > 0,
        "metric-over-time": summary["versions"] > 0,
        "confusion-matrix": summary["champion_version"] is not None,
        "per-class": summary["champion_version"] is not None,
    }
    for chart, shown in charts.items():
        assert (f"<svg id='{chart}'" in page) is shown, chart
