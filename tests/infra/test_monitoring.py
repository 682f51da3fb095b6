"""Monitoring as code and the kept run summaries, under mocks in both modes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from components import topology
from components.config import MonitoringSettings, StackConfig
from components.monitoring import PipelineMonitoringArgs
from tests.infra.harness import (
    PROJECT,
    REGION,
    STACK,
    Deployment,
    Resource,
    Types,
    function_named,
)

COMPONENT = "ml-pipeline:gcp:PipelineMonitoring"
RUN = 'resource.type="cloud_run_revision"'
FUNCTIONS = {
    "workflow": ("process_data", "train_model", "predict", "trigger_workflow", "score_data"),
    "events": ("process_data_event", "train_model_event", "predict", "score_data"),
}
CONFIG = StackConfig.from_values(project=PROJECT, region=REGION, stack=STACK, values={})


def mode(stack: Deployment) -> str:
    return str(stack.exports["orchestration"])


def service(function_key: str) -> str:
    return topology.function_name(CONFIG, function_key)


def policies(stack: Deployment) -> dict[str, Resource]:
    prefix = "mlp-dev-pipeline-monitoring-alert-"
    return {p.name.removeprefix(prefix): p for p in stack.of_type(Types.ALERT_POLICY)}


def condition(policy: Resource) -> dict[str, Any]:
    (only,) = policy.inputs["conditions"]
    return dict(only)


def log_metrics(stack: Deployment) -> dict[str, Resource]:
    return {m.inputs["name"]: m for m in stack.of_type(Types.LOG_METRIC)}


def charts(stack: Deployment) -> dict[str, str]:
    """Dashboard chart title -> its time series filter."""
    (dashboard,) = stack.of_type(Types.DASHBOARD)
    document = json.loads(dashboard.inputs["dashboardJson"])
    return {
        tile["widget"]["title"]: tile["widget"]["xyChart"]["dataSets"][0]["timeSeriesQuery"][
            "timeSeriesFilter"
        ]["filter"]
        for tile in document["mosaicLayout"]["tiles"]
    }


def monitoring_resources(stack: Deployment) -> list[Resource]:
    return [r for r in stack.resources if r.type in Types.MONITORING]


def test_every_monitoring_part_exists_by_default(stack: Deployment) -> None:
    expected = {"dead-letter", "predict-5xx", "predict-latency"}
    expected |= {f"errors-{key.replace('_', '-')}" for key in FUNCTIONS[mode(stack)]}
    if mode(stack) == "workflow":
        expected.add("workflow-failures")
    assert set(policies(stack)) == expected
    assert set(log_metrics(stack)) == {
        "mlp-dev/model_promotions",
        "mlp-dev/promoted_model_metric",
        "mlp-dev/rejected_uploads",
    }
    assert len(stack.of_type(Types.DASHBOARD)) == 1
    # No address configured, no channel: incidents still open in the console.
    assert stack.of_type(Types.NOTIFICATION_CHANNEL) == []
    for policy in policies(stack).values():
        assert policy.inputs["notificationChannels"] == []
        assert policy.inputs["userLabels"] == {"app": "ml-pipeline", "stack": STACK}
        assert policy.inputs["documentation"]["content"]


def test_monitoring_resources_are_children_of_one_component_and_wait_for_their_api(
    stack: Deployment,
) -> None:
    (component,) = [r for r in stack.resources if r.type == COMPONENT]
    assert stack.by_urn(component.parent).type == "ml-pipeline:gcp:MlPipeline"
    apis = {
        s.inputs["service"]: s
        for s in stack.of_type(Types.API)
        if s.inputs["service"]
        in (
            "monitoring.googleapis.com",
            "logging.googleapis.com",
        )
    }
    assert set(apis) == {"monitoring.googleapis.com", "logging.googleapis.com"}
    for resource in monitoring_resources(stack):
        assert resource.parent == component.urn, resource.name
        api = "logging" if resource.type == Types.LOG_METRIC else "monitoring"
        assert stack.waits_for(resource, apis[f"{api}.googleapis.com"]), resource.name


def test_the_dead_letter_alert_watches_this_stacks_hold_from_the_first_message(
    stack: Deployment,
) -> None:
    (hold,) = [
        s for s in stack.of_type(Types.SUBSCRIPTION) if s.inputs["topic"].endswith("dead-letter")
    ]
    threshold = condition(policies(stack)["dead-letter"])["conditionThreshold"]
    assert threshold["filter"] == (
        'resource.type="pubsub_subscription" AND resource.labels.subscription_id='
        f'"{hold.inputs["name"]}" AND '
        'metric.type="pubsub.googleapis.com/subscription/num_undelivered_messages"'
    )
    assert (threshold["comparison"], threshold["thresholdValue"], threshold["duration"]) == (
        "COMPARISON_GT",
        0,
        "0s",
    )
    assert stack.waits_for(policies(stack)["dead-letter"], hold)


def test_the_workflow_alert_counts_failed_executions_of_this_workflow(
    workflow_stack: Deployment,
) -> None:
    (workflow,) = workflow_stack.of_type(Types.WORKFLOW)
    policy = policies(workflow_stack)["workflow-failures"]
    threshold = condition(policy)["conditionThreshold"]
    assert threshold["filter"] == (
        'resource.type="workflows.googleapis.com/Workflow" AND resource.labels.workflow_id='
        f'"mlp-dev-ml-pipeline" AND resource.labels.location="{REGION}" AND '
        'metric.type="workflows.googleapis.com/finished_execution_count" AND '
        'metric.labels.status="FAILED"'
    )
    assert threshold["thresholdValue"] == 0
    assert workflow_stack.waits_for(policy, workflow)


def test_predict_alerts_watch_the_predict_service_with_default_thresholds(
    stack: Deployment,
) -> None:
    predict = function_named(stack, "mlp-dev-predict")
    run_predict = f'{RUN} AND resource.labels.service_name="mlp-dev-predict"'
    errors = policies(stack)["predict-5xx"]
    ratio = condition(errors)["conditionThreshold"]
    assert ratio["filter"] == (
        f'{run_predict} AND metric.type="run.googleapis.com/request_count"'
        ' AND metric.labels.response_code_class="5xx"'
    )
    assert ratio["denominatorFilter"] == (
        f'{run_predict} AND metric.type="run.googleapis.com/request_count"'
    )
    assert ratio["aggregations"] == ratio["denominatorAggregations"]
    assert (ratio["thresholdValue"], ratio["duration"]) == (0.05, "300s")
    latency = policies(stack)["predict-latency"]
    p95 = condition(latency)["conditionThreshold"]
    assert p95["filter"] == f'{run_predict} AND metric.type="run.googleapis.com/request_latencies"'
    (aggregation,) = p95["aggregations"]
    assert aggregation["perSeriesAligner"] == "ALIGN_PERCENTILE_95"
    assert (p95["thresholdValue"], p95["duration"]) == (2000, "300s")
    assert stack.waits_for(errors, predict) and stack.waits_for(latency, predict)


def test_each_function_has_an_error_log_alert_on_its_own_service(stack: Deployment) -> None:
    for key in FUNCTIONS[mode(stack)]:
        policy = policies(stack)[f"errors-{key.replace('_', '-')}"]
        matched = condition(policy)["conditionMatchedLog"]
        assert matched["filter"] == (
            f'{RUN} AND resource.labels.service_name="{service(key)}" AND severity>=ERROR'
            f' AND NOT logName="projects/{PROJECT}/logs/run.googleapis.com%2Frequests"'
        )
        assert policy.inputs["alertStrategy"]["notificationRateLimit"] == {"period": "300s"}
        assert stack.waits_for(policy, function_named(stack, service(key)))


def test_log_metrics_filter_the_log_field_contract_of_the_right_functions(
    stack: Deployment,
) -> None:
    trainer, processor = (
        ("train_model", "process_data")
        if mode(stack) == "workflow"
        else ("train_model_event", "process_data_event")
    )
    promoted = (
        f'{RUN} AND (resource.labels.service_name="{service(trainer)}")'
        ' AND jsonPayload.event="model_promoted"'
    )
    metrics = log_metrics(stack)
    promotions = metrics["mlp-dev/model_promotions"]
    assert promotions.inputs["filter"] == promoted
    assert promotions.inputs["labelExtractors"] == {
        "model_version": "EXTRACT(jsonPayload.model_version)"
    }
    value = metrics["mlp-dev/promoted_model_metric"]
    assert value.inputs["filter"] == promoted
    assert value.get("metricDescriptor.valueType") == "DISTRIBUTION"
    assert value.inputs["valueExtractor"] == "EXTRACT(jsonPayload.metric_value)"
    assert value.inputs["labelExtractors"] == {"metric_name": "EXTRACT(jsonPayload.metric_name)"}
    assert value.get("bucketOptions.linearBuckets") == {
        "numFiniteBuckets": 100,
        "width": 0.01,
        "offset": 0,
    }
    rejections = metrics["mlp-dev/rejected_uploads"]
    assert rejections.inputs["filter"] == (
        f'{RUN} AND (resource.labels.service_name="{service(processor)}")'
        ' AND jsonPayload.event="upload_rejected"'
    )
    assert rejections.inputs["labelExtractors"] == {"reason": "EXTRACT(jsonPayload.reason)"}
    assert stack.waits_for(promotions, function_named(stack, service(trainer)))
    assert stack.waits_for(rejections, function_named(stack, service(processor)))


def test_the_dashboard_charts_every_function_and_every_signal(stack: Deployment) -> None:
    found = charts(stack)
    services = ", ".join(f'"{service(key)}"' for key in FUNCTIONS[mode(stack)])
    per_function = f"{RUN} AND resource.label.service_name=one_of({services})"
    assert found["Requests per function (per second)"] == (
        f'{per_function} AND metric.type="run.googleapis.com/request_count"'
    )
    assert found["p95 latency per function (ms)"] == (
        f'{per_function} AND metric.type="run.googleapis.com/request_latencies"'
    )
    assert found["Error log entries per function"] == (
        f'{per_function} AND metric.type="logging.googleapis.com/log_entry_count"'
        ' AND metric.label.severity=one_of("ERROR", "CRITICAL", "ALERT", "EMERGENCY")'
        ' AND NOT metric.label.log="run.googleapis.com/requests"'
    )
    assert "mlp-dev-dead-letter-hold" in found["Dead-letter backlog (messages)"]
    user = "logging.googleapis.com/user/mlp-dev/"
    assert found["Model promotions"].endswith(f'metric.type="{user}model_promotions"')
    assert found["Promoted model's metric value"].endswith(f'"{user}promoted_model_metric"')
    assert found["Rejected uploads by reason"].endswith(f'"{user}rejected_uploads"')
    assert ("Workflow executions by status" in found) == (mode(stack) == "workflow")
    (dashboard,) = stack.of_type(Types.DASHBOARD)
    for metric in stack.of_type(Types.LOG_METRIC):
        assert stack.waits_for(dashboard, metric)
    # The service drops empty lists; one in ours would show a diff on every preview.
    assert "[]" not in dashboard.inputs["dashboardJson"]
    document = json.loads(dashboard.inputs["dashboardJson"])
    cells = [
        (tile["xPos"] + dx, tile["yPos"] + dy)
        for tile in document["mosaicLayout"]["tiles"]
        for dx in range(tile["width"])
        for dy in range(tile["height"])
    ]
    assert len(cells) == len(set(cells)), "dashboard tiles overlap"
    assert all(x < 12 for x, _ in cells)


def test_channels_come_from_emails_and_existing_ids_and_reach_every_policy(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(
        monitoring={
            "notificationEmails": ["oncall@example.com", "m.l@example.com", "m-l@example.com"],
            "notificationChannels": ["4242", "projects/other-proj/notificationChannels/7"],
        }
    )
    channels = deployment.of_type(Types.NOTIFICATION_CHANNEL)
    assert sorted(c.inputs["labels"]["email_address"] for c in channels) == [
        "m-l@example.com",
        "m.l@example.com",
        "oncall@example.com",
    ]
    assert {c.inputs["type"] for c in channels} == {"email"}
    expected = sorted(
        [c.outputs["name"] for c in channels]
        + [
            f"projects/{PROJECT}/notificationChannels/4242",
            "projects/other-proj/notificationChannels/7",
        ]
    )
    for policy in deployment.of_type(Types.ALERT_POLICY):
        assert sorted(policy.inputs["notificationChannels"]) == expected
        for channel in channels:
            assert deployment.waits_for(policy, channel)


def test_thresholds_follow_config(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(
        monitoring={
            "predict5xxRatio": 0.2,
            "predictLatencyP95Ms": 750,
            "alertDurationSeconds": 600,
            "errorLogNotifyEverySeconds": 3600,
        }
    )
    found = policies(deployment)
    ratio = condition(found["predict-5xx"])["conditionThreshold"]
    assert (ratio["thresholdValue"], ratio["duration"]) == (0.2, "600s")
    p95 = condition(found["predict-latency"])["conditionThreshold"]
    assert (p95["thresholdValue"], p95["duration"]) == (750, "600s")
    assert found["errors-predict"].get("alertStrategy.notificationRateLimit.period") == "3600s"


def test_disabled_monitoring_creates_nothing_but_keeps_the_summaries(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(monitoring={"enabled": False, "notificationEmails": ["a@example.com"]})
    assert monitoring_resources(deployment) == []
    assert not [r for r in deployment.resources if r.type == COMPONENT]
    assert deployment.exports["summary_subscription"] == "mlp-dev-run-summaries"


def test_each_switch_removes_its_part_only(deploy: Callable[..., Deployment]) -> None:
    no_alerts = deploy(
        monitoring={
            "notificationEmails": ["a@example.com"],
            "deadLetterAlert": False,
            "workflowFailureAlert": False,
            "predict5xxAlert": False,
            "predictLatencyAlert": False,
            "errorLogAlerts": "false",
            "logMetrics": False,
        }
    )
    # No alert policy, so the address gets no channel either; the dashboard stays.
    assert {r.type for r in monitoring_resources(no_alerts)} == {Types.DASHBOARD}
    assert "Model promotions" not in charts(no_alerts)
    assert "Requests per function (per second)" in charts(no_alerts)
    only_alerts = deploy(monitoring={"dashboard": False, "predictLatencyAlert": False})
    assert only_alerts.of_type(Types.DASHBOARD) == []
    assert "predict-latency" not in policies(only_alerts)
    assert {"dead-letter", "predict-5xx", "workflow-failures"} <= set(policies(only_alerts))
    assert len(only_alerts.of_type(Types.LOG_METRIC)) == 3


def test_run_summaries_are_kept_in_a_pull_subscription_named_in_the_outputs(
    stack: Deployment,
) -> None:
    (kept,) = [
        s
        for s in stack.of_type(Types.SUBSCRIPTION)
        if s.inputs["topic"].endswith("/mlp-dev-model-events")
    ]
    assert "pushConfig" not in kept.inputs
    assert kept.inputs["name"] == topology.summary_subscription_name(CONFIG)
    assert kept.inputs["messageRetentionDuration"] == "604800s"
    assert kept.inputs["retainAckedMessages"] is True
    assert kept.inputs["expirationPolicy"] == {"ttl": ""}
    assert stack.exports["summary_subscription"] == "mlp-dev-run-summaries"
    (topic,) = [t for t in stack.of_type(Types.TOPIC) if t.inputs["name"] == "mlp-dev-model-events"]
    assert stack.waits_for(kept, topic)


def test_the_component_refuses_inconsistent_arguments() -> None:
    base: dict[str, Any] = {
        "project": PROJECT,
        "region": REGION,
        "name_prefix": "mlp-dev",
        "settings": MonitoringSettings(),
        "service_names": {"predict": "mlp-dev-predict", "train_model": "t", "process_data": "p"},
        "predict": "predict",
        "promoting": ("train_model",),
        "rejecting": ("process_data",),
        "dead_letter_subscription": "hold",
    }
    PipelineMonitoringArgs(**base)
    with pytest.raises(ValueError, match="monitoring is disabled"):
        PipelineMonitoringArgs(**{**base, "settings": MonitoringSettings(enabled=False)})
    with pytest.raises(ValueError, match=r"promoting: \['train_model_event'\] are not among"):
        PipelineMonitoringArgs(**{**base, "promoting": ("train_model_event",)})
    with pytest.raises(ValueError, match="rejecting names no function"):
        PipelineMonitoringArgs(**{**base, "rejecting": ()})


def test_the_log_events_the_metrics_count_are_the_ones_the_functions_write() -> None:
    # The names are written once, in the deployed package's contract, which the
    # functions log with and the log-based metrics count; no copy may stand in for it.
    from components import monitoring
    from pipeline_core import contract

    # The modules import the contract's class (mypy keeps an imported name private, so
    # it is looked up in their namespaces).
    assert vars(monitoring)["LogEvent"] is contract.LogEvent
    assert vars(topology)["LogEvent"] is contract.LogEvent
