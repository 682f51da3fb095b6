"""Cloud Monitoring of the pipeline: notification channels, alert policies, log-based
metrics and a dashboard, each part switched by ``MonitoringSettings``.

Cloud Functions 2nd gen run on Cloud Run: their requests, latencies and logs belong to
the monitored resource ``cloud_run_revision``, told apart by its ``service_name`` label
(the function's name). Every filter names the resource type and the exact service,
subscription or workflow of this stack, so two stacks in one project never mix.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_gcp as gcp

from components.config import MonitoringSettings
from pipeline_core.contract import LogEvent

RUN_REVISION = "cloud_run_revision"
REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"  # a distribution, in ms
LOG_ENTRY_COUNT = "logging.googleapis.com/log_entry_count"
SUBSCRIPTION_RESOURCE = "pubsub_subscription"
UNDELIVERED_MESSAGES = "pubsub.googleapis.com/subscription/num_undelivered_messages"
WORKFLOW_RESOURCE = "workflows.googleapis.com/Workflow"
FINISHED_EXECUTIONS = "workflows.googleapis.com/finished_execution_count"
USER_METRIC_PREFIX = "logging.googleapis.com/user/"
BY_SERVICE = ("resource.label.service_name",)
ERROR_SEVERITIES = ("ERROR", "CRITICAL", "ALERT", "EMERGENCY")
# Cloud Run writes a request log entry per request, at severity ERROR for a 5xx answer:
# error-log alerts and charts leave it out, they are about what the code logged (5xx
# answers have their own ratio alert and chart).
REQUEST_LOG = "run.googleapis.com/requests"
# A log-match incident closes this long after the last matching entry.
ERROR_LOG_AUTO_CLOSE = "1800s"
# Promotion metrics (accuracy, f1_macro) lie in [0, 1]: 100 buckets of 0.01.
METRIC_VALUE_BUCKETS = gcp.logging.MetricBucketOptionsLinearBucketsArgs(
    num_finite_buckets=100, width=0.01, offset=0.0
)

# Keys (and name suffixes) of the log-based metrics.
PROMOTIONS = "model_promotions"
PROMOTED_METRIC = "promoted_model_metric"
REJECTIONS = "rejected_uploads"


@dataclass(frozen=True)
class PipelineMonitoringArgs:
    project: str
    region: str
    name_prefix: str
    settings: MonitoringSettings
    service_names: Mapping[str, pulumi.Input[str]]  # function key -> Cloud Run service name
    predict: str  # function key of the prediction service
    promoting: tuple[str, ...]  # function keys that log model_promoted
    rejecting: tuple[str, ...]  # function keys that log upload_rejected
    dead_letter_subscription: pulumi.Input[str]  # subscription id (short name)
    workflow_name: pulumi.Input[str] | None = None  # workflow mode only
    labels: Mapping[str, str] = field(default_factory=dict)
    monitoring_apis: tuple[pulumi.Resource, ...] = ()
    logging_apis: tuple[pulumi.Resource, ...] = ()

    def __post_init__(self) -> None:
        if not self.settings.enabled:
            raise ValueError(
                "monitoring is disabled (ml-pipeline:monitoring.enabled false): create no "
                "PipelineMonitoring"
            )
        for role, keys in (
            ("predict", (self.predict,)),
            ("promoting", self.promoting),
            ("rejecting", self.rejecting),
        ):
            if not keys:
                raise ValueError(f"PipelineMonitoringArgs.{role} names no function")
            unknown = sorted(set(keys) - set(self.service_names))
            if unknown:
                raise ValueError(
                    f"PipelineMonitoringArgs.{role}: {unknown} are not among the functions "
                    f"{sorted(self.service_names)}"
                )


class PipelineMonitoring(pulumi.ComponentResource):
    channels: list[pulumi.Input[str]]
    alert_policies: dict[str, gcp.monitoring.AlertPolicy]
    log_metrics: dict[str, gcp.logging.Metric]
    dashboard: gcp.monitoring.Dashboard | None

    def __init__(
        self, name: str, args: PipelineMonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ml-pipeline:gcp:PipelineMonitoring", name, None, opts)
        self._name = name
        self._args = args
        self._on_monitoring = pulumi.ResourceOptions(
            parent=self, depends_on=list(args.monitoring_apis)
        )
        settings = args.settings
        self.channels = []
        self.alert_policies = {}
        if settings.alerts:
            self.channels = [*self._email_channels(), *settings.notification_channels]
            self._alert_policies()
        self.log_metrics = self._log_metrics() if settings.log_metrics else {}
        self.dashboard = self._dashboard() if settings.dashboard else None
        self.register_outputs(
            {
                "notification_channels": self.channels,
                "alert_policies": {key: p.name for key, p in self.alert_policies.items()},
                "log_metrics": {key: m.name for key, m in self.log_metrics.items()},
                "dashboard": self.dashboard.id if self.dashboard is not None else None,
            }
        )

    # Notification channels and alert policies.

    def _email_channels(self) -> list[pulumi.Output[str]]:
        args = self._args
        return [
            gcp.monitoring.NotificationChannel(
                f"{self._name}-email-{_channel_key(address)}",
                project=args.project,
                type="email",
                display_name=f"{args.name_prefix} alerts: {address}",
                labels={"email_address": address},
                user_labels=dict(args.labels),
                opts=self._on_monitoring,
            ).name
            for address in args.settings.notification_emails
        ]

    def _alert_policies(self) -> None:
        args = self._args
        settings = args.settings
        predict = args.service_names[args.predict]
        if settings.dead_letter_alert:
            self._any_occurrence_policy(
                "dead-letter",
                "messages in the dead-letter hold",
                filter=pulumi.Output.concat(
                    f'resource.type="{SUBSCRIPTION_RESOURCE}"'
                    ' AND resource.labels.subscription_id="',
                    args.dead_letter_subscription,
                    f'" AND metric.type="{UNDELIVERED_MESSAGES}"',
                ),
                aggregation=Aggregation("ALIGN_MAX", "REDUCE_MAX"),
                documentation=pulumi.Output.concat(
                    "Messages failed every delivery attempt and wait in `",
                    args.dead_letter_subscription,
                    "`. Read them with `gcloud pubsub subscriptions pull ",
                    args.dead_letter_subscription,
                    " --limit 10`; once fixed, acknowledge them (they stay retained).",
                ),
            )
        if settings.workflow_failure_alert and args.workflow_name is not None:
            self._any_occurrence_policy(
                "workflow-failures",
                "failed workflow executions",
                filter=pulumi.Output.concat(
                    f'resource.type="{WORKFLOW_RESOURCE}" AND resource.labels.workflow_id="',
                    args.workflow_name,
                    f'" AND resource.labels.location="{args.region}"'
                    f' AND metric.type="{FINISHED_EXECUTIONS}" AND metric.labels.status="FAILED"',
                ),
                aggregation=Aggregation("ALIGN_DELTA", "REDUCE_SUM"),
                documentation=pulumi.Output.concat(
                    "A run failed at some stage; its summary on the model-events topic names it. "
                    "`gcloud workflows executions list ",
                    args.workflow_name,
                    f" --location {args.region} --filter state=FAILED`.",
                ),
            )
        if settings.predict_5xx_alert:
            self._predict_request_policy(PREDICT_5XX_RATIO, predict, settings.predict_5xx_ratio)
        if settings.predict_latency_alert:
            self._predict_request_policy(
                PREDICT_P95_LATENCY, predict, settings.predict_latency_p95_ms
            )
        if settings.error_log_alerts:
            for key, service in args.service_names.items():
                self._error_log_policy(key, service)

    def _predict_request_policy(
        self, alert: RequestAlert, predict: pulumi.Input[str], threshold: float
    ) -> None:
        """``alert`` on predict's requests, per service, once it holds past ``threshold``
        for the configured alert duration."""
        requests = _run_filter(predict, alert.metric)
        if alert.of_requests is None:
            signal, denominator = requests, None
        else:
            signal, denominator = _run_filter(predict, alert.metric, alert.of_requests), requests
        self._threshold_policy(
            alert.key,
            alert.title.format(threshold=threshold),
            filter=signal,
            denominator_filter=denominator,
            aggregation=Aggregation(alert.aligner, alert.reducer, BY_SERVICE),
            threshold=threshold,
            duration_seconds=self._args.settings.alert_duration_seconds,
            severity=alert.severity,
            documentation=alert.documentation,
        )

    def _any_occurrence_policy(
        self,
        key: str,
        title: str,
        *,
        filter: pulumi.Input[str],
        aggregation: Aggregation,
        documentation: pulumi.Input[str],
    ) -> None:
        """A policy on something that should never happen: one occurrence opens it."""
        self._threshold_policy(
            key,
            title,
            filter=filter,
            aggregation=aggregation,
            threshold=0,
            duration_seconds=0,
            severity="ERROR",
            documentation=documentation,
        )

    def _threshold_policy(
        self,
        key: str,
        title: str,
        *,
        filter: pulumi.Input[str],
        aggregation: Aggregation,
        threshold: float,
        duration_seconds: int,
        severity: str,
        documentation: pulumi.Input[str],
        denominator_filter: pulumi.Input[str] | None = None,
    ) -> None:
        condition = gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
            filter=filter,
            aggregations=[
                gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                    **aggregation.fields()
                )
            ],
            denominator_filter=denominator_filter,
            # A ratio divides series aligned and reduced the same way.
            denominator_aggregations=(
                [
                    gcp.monitoring.AlertPolicyConditionConditionThresholdDenominatorAggregationArgs(
                        **aggregation.fields()
                    )
                ]
                if denominator_filter is not None
                else None
            ),
            comparison="COMPARISON_GT",
            threshold_value=threshold,
            duration=f"{duration_seconds}s",
            trigger=gcp.monitoring.AlertPolicyConditionConditionThresholdTriggerArgs(count=1),
        )
        self._policy(
            key,
            title,
            gcp.monitoring.AlertPolicyConditionArgs(
                display_name=title, condition_threshold=condition
            ),
            severity=severity,
            documentation=documentation,
        )

    def _error_log_policy(self, function_key: str, service: pulumi.Input[str]) -> None:
        settings = self._args.settings
        title = f"error logs of {function_key}"
        self._policy(
            f"errors-{function_key.replace('_', '-')}",
            title,
            gcp.monitoring.AlertPolicyConditionArgs(
                display_name=title,
                condition_matched_log=gcp.monitoring.AlertPolicyConditionConditionMatchedLogArgs(
                    filter=pulumi.Output.concat(
                        _log_resource(service),
                        " AND severity>=ERROR AND NOT logName="
                        f'"{_request_log_name(self._args.project)}"',
                    ),
                ),
            ),
            severity="WARNING",
            documentation=pulumi.Output.concat(
                "The function logged an error: `gcloud logging read 'resource.type=",
                RUN_REVISION,
                " AND resource.labels.service_name=",
                service,
                " AND severity>=ERROR' --limit 20`.",
            ),
            # Log-match policies require a rate limit: one notification per period.
            alert_strategy=gcp.monitoring.AlertPolicyAlertStrategyArgs(
                notification_rate_limit=gcp.monitoring.AlertPolicyAlertStrategyNotificationRateLimitArgs(
                    period=f"{settings.error_log_notify_every_seconds}s"
                ),
                auto_close=ERROR_LOG_AUTO_CLOSE,
            ),
        )

    def _policy(
        self,
        key: str,
        title: str,
        condition: gcp.monitoring.AlertPolicyConditionArgs,
        *,
        severity: str,
        documentation: pulumi.Input[str],
        alert_strategy: gcp.monitoring.AlertPolicyAlertStrategyArgs | None = None,
    ) -> None:
        args = self._args
        self.alert_policies[key] = gcp.monitoring.AlertPolicy(
            f"{self._name}-alert-{key}",
            project=args.project,
            display_name=f"{args.name_prefix}: {title}",
            combiner="OR",
            conditions=[condition],
            notification_channels=self.channels,
            severity=severity,
            documentation=gcp.monitoring.AlertPolicyDocumentationArgs(
                content=documentation, mime_type="text/markdown"
            ),
            alert_strategy=alert_strategy,
            user_labels=dict(args.labels),
            opts=self._on_monitoring,
        )

    # Log-based metrics.

    def _log_metrics(self) -> dict[str, gcp.logging.Metric]:
        args = self._args
        on_logging = pulumi.ResourceOptions(parent=self, depends_on=list(args.logging_apis))
        promoted = _event_filter(
            [args.service_names[key] for key in args.promoting], LogEvent.MODEL_PROMOTED
        )
        rejected = _event_filter(
            [args.service_names[key] for key in args.rejecting], LogEvent.UPLOAD_REJECTED
        )

        def metric(
            key: str,
            description: str,
            log_filter: pulumi.Input[str],
            value_type: str,
            labels: Mapping[str, str],
            **extra: Any,
        ) -> gcp.logging.Metric:
            return gcp.logging.Metric(
                f"{self._name}-{key.replace('_', '-')}",
                project=args.project,
                name=f"{args.name_prefix}/{key}",
                description=description,
                filter=log_filter,
                metric_descriptor=gcp.logging.MetricMetricDescriptorArgs(
                    metric_kind="DELTA",
                    value_type=value_type,
                    unit="1",
                    labels=[
                        gcp.logging.MetricMetricDescriptorLabelArgs(
                            key=label, value_type="STRING", description=about
                        )
                        for label, about in labels.items()
                    ],
                ),
                label_extractors={label: f"EXTRACT(jsonPayload.{label})" for label in labels},
                opts=on_logging,
                **extra,
            )

        return {
            PROMOTIONS: metric(
                PROMOTIONS,
                "Champion promotions, by the promoted model version",
                promoted,
                "INT64",
                {"model_version": "the promoted model version"},
            ),
            PROMOTED_METRIC: metric(
                PROMOTED_METRIC,
                "The promotion metric's value of each promoted model (quality over time)",
                promoted,
                "DISTRIBUTION",
                {"metric_name": "the promotion metric (promotion.metric)"},
                value_extractor="EXTRACT(jsonPayload.metric_value)",
                bucket_options=gcp.logging.MetricBucketOptionsArgs(
                    linear_buckets=METRIC_VALUE_BUCKETS
                ),
            ),
            REJECTIONS: metric(
                REJECTIONS,
                "Uploads rejected by processing, by rejection reason",
                rejected,
                "INT64",
                {"reason": "the rejection code"},
            ),
        }

    # The dashboard.

    def _dashboard(self) -> gcp.monitoring.Dashboard:
        args = self._args
        document = pulumi.Output.all(
            services=pulumi.Output.all(
                *(pulumi.Output.from_input(s) for s in args.service_names.values())
            ),
            dead_letter=args.dead_letter_subscription,
            workflow=args.workflow_name,
            metrics=pulumi.Output.all(*(m.name for m in self.log_metrics.values())),
        ).apply(
            lambda values: dashboard_json(
                f"{args.name_prefix} ML pipeline",
                services=dict(zip(args.service_names, values["services"], strict=True)),
                predict=args.predict,
                dead_letter_subscription=values["dead_letter"],
                workflow=values["workflow"],
                region=args.region,
                log_metrics=dict(zip(self.log_metrics, values["metrics"], strict=True)),
            )
        )
        return gcp.monitoring.Dashboard(
            f"{self._name}-dashboard",
            project=args.project,
            dashboard_json=document,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[*args.monitoring_apis, *self.log_metrics.values()],
            ),
        )


def dashboard_json(
    title: str,
    *,
    services: Mapping[str, str],
    predict: str,
    dead_letter_subscription: str,
    workflow: str | None,
    region: str,
    log_metrics: Mapping[str, str],
) -> str:
    """The dashboard document: request count and latency per function, predict's
    responses, error logs, the dead-letter backlog, workflow outcomes and, when the
    log-based metrics exist, promotions, the promoted metric and rejections."""
    per_function = (
        f"resource.label.service_name=one_of({', '.join(map(json.dumps, services.values()))})"
    )
    run = f'resource.type="{RUN_REVISION}" AND {per_function}'
    charts = [
        _chart(
            "Requests per function (per second)",
            f'{run} AND metric.type="{REQUEST_COUNT}"',
            "ALIGN_RATE",
            "REDUCE_SUM",
            BY_SERVICE,
        ),
        _chart(
            "p95 latency per function (ms)",
            f'{run} AND metric.type="{REQUEST_LATENCIES}"',
            "ALIGN_PERCENTILE_95",
            "REDUCE_MAX",
            BY_SERVICE,
        ),
        _chart(
            "predict responses by class (per second)",
            f'resource.type="{RUN_REVISION}" AND resource.label.service_name="{services[predict]}"'
            f' AND metric.type="{REQUEST_COUNT}"',
            "ALIGN_RATE",
            "REDUCE_SUM",
            ("metric.label.response_code_class",),
            plot="STACKED_BAR",
        ),
        _chart(
            "Error log entries per function",
            f'{run} AND metric.type="{LOG_ENTRY_COUNT}" AND metric.label.severity=one_of('
            + ", ".join(map(json.dumps, ERROR_SEVERITIES))
            + f') AND NOT metric.label.log="{REQUEST_LOG}"',
            "ALIGN_DELTA",
            "REDUCE_SUM",
            BY_SERVICE,
            plot="STACKED_BAR",
        ),
        _chart(
            "Dead-letter backlog (messages)",
            f'resource.type="{SUBSCRIPTION_RESOURCE}" AND resource.label.subscription_id='
            f'"{dead_letter_subscription}" AND metric.type="{UNDELIVERED_MESSAGES}"',
            "ALIGN_MAX",
            "REDUCE_MAX",
        ),
    ]
    if workflow is not None:
        charts.append(
            _chart(
                "Workflow executions by status",
                f'resource.type="{WORKFLOW_RESOURCE}" AND resource.label.workflow_id="{workflow}"'
                f' AND resource.label.location="{region}" AND metric.type="{FINISHED_EXECUTIONS}"',
                "ALIGN_DELTA",
                "REDUCE_SUM",
                ("metric.label.status",),
                plot="STACKED_BAR",
            )
        )
    user_metric = {
        key: f'metric.type="{USER_METRIC_PREFIX}{name}"' for key, name in log_metrics.items()
    }
    if PROMOTIONS in user_metric:
        charts.append(
            _chart(
                "Model promotions",
                f'resource.type="{RUN_REVISION}" AND {user_metric[PROMOTIONS]}',
                "ALIGN_DELTA",
                "REDUCE_SUM",
                ("metric.label.model_version",),
                plot="STACKED_BAR",
            )
        )
    if PROMOTED_METRIC in user_metric:
        charts.append(
            _chart(
                "Promoted model's metric value",
                f'resource.type="{RUN_REVISION}" AND {user_metric[PROMOTED_METRIC]}',
                "ALIGN_MEAN",
                "REDUCE_MEAN",
                ("metric.label.metric_name",),
            )
        )
    if REJECTIONS in user_metric:
        charts.append(
            _chart(
                "Rejected uploads by reason",
                f'resource.type="{RUN_REVISION}" AND {user_metric[REJECTIONS]}',
                "ALIGN_DELTA",
                "REDUCE_SUM",
                ("metric.label.reason",),
                plot="STACKED_BAR",
            )
        )
    tiles = [
        {
            "xPos": (index % 2) * 6,
            "yPos": (index // 2) * 4,
            "width": 6,
            "height": 4,
            "widget": chart,
        }
        for index, chart in enumerate(charts)
    ]
    return json.dumps(
        {"displayName": title, "mosaicLayout": {"columns": 12, "tiles": tiles}}, sort_keys=True
    )


def _chart(
    title: str,
    time_series_filter: str,
    aligner: str,
    reducer: str,
    group_by: Sequence[str] = (),
    *,
    plot: str = "LINE",
) -> dict[str, Any]:
    return {
        "title": title,
        "xyChart": {
            "dataSets": [
                {
                    "plotType": plot,
                    "minAlignmentPeriod": "60s",
                    "timeSeriesQuery": {
                        "timeSeriesFilter": {
                            "filter": time_series_filter,
                            # No empty lists: the service drops them, and the
                            # stored document would differ from ours on every preview.
                            "aggregation": {
                                "alignmentPeriod": "60s",
                                "perSeriesAligner": aligner,
                                "crossSeriesReducer": reducer,
                                **({"groupByFields": list(group_by)} if group_by else {}),
                            },
                        }
                    },
                }
            ]
        },
    }


@dataclass(frozen=True)
class RequestAlert:
    """An alert policy on a statistic of predict's Cloud Run request metrics."""

    key: str
    title: str  # formatted with the threshold
    metric: str
    aligner: str
    reducer: str
    severity: str
    documentation: str
    # A ratio: the requests that match this filter, of all requests.
    of_requests: str | None = None


PREDICT_5XX_RATIO = RequestAlert(
    key="predict-5xx",
    title="predict 5xx ratio above {threshold:g}",
    metric=REQUEST_COUNT,
    aligner="ALIGN_RATE",
    reducer="REDUCE_SUM",
    severity="CRITICAL",
    documentation=(
        "predict answers 5xx to too many requests: its log shows why (a champion "
        "that cannot load answers 503; see GET /health)."
    ),
    of_requests='metric.labels.response_code_class="5xx"',
)
PREDICT_P95_LATENCY = RequestAlert(
    key="predict-latency",
    title="predict p95 latency above {threshold} ms",
    metric=REQUEST_LATENCIES,
    aligner="ALIGN_PERCENTILE_95",
    reducer="REDUCE_MAX",
    severity="WARNING",
    documentation=(
        "predict is slow: check its instance count (maxInstances), cold starts "
        "(minInstances) and batch sizes."
    ),
)


@dataclass(frozen=True)
class Aggregation:
    """How a threshold condition aligns each series and reduces across them."""

    aligner: str
    reducer: str
    group_by: tuple[str, ...] = ()

    def fields(self) -> dict[str, Any]:
        return {
            "alignment_period": "60s",
            "per_series_aligner": self.aligner,
            "cross_series_reducer": self.reducer,
            "group_by_fields": list(self.group_by),
        }


def _run_filter(service: pulumi.Input[str], metric_type: str, *extra: str) -> pulumi.Output[str]:
    """A Cloud Monitoring filter on one Cloud Run service's metric."""
    return pulumi.Output.concat(
        f'resource.type="{RUN_REVISION}" AND resource.labels.service_name="',
        service,
        f'" AND metric.type="{metric_type}"',
        *(f" AND {condition}" for condition in extra),
    )


def _log_resource(service: pulumi.Input[str]) -> pulumi.Output[str]:
    """A Cloud Logging filter on one Cloud Run service's entries."""
    return pulumi.Output.concat(
        f'resource.type="{RUN_REVISION}" AND resource.labels.service_name="', service, '"'
    )


def _event_filter(services: Sequence[pulumi.Input[str]], event: str) -> pulumi.Output[str]:
    """Entries of ``event`` written by any of ``services``."""
    return pulumi.Output.all(*services).apply(
        lambda names: (
            f'resource.type="{RUN_REVISION}" AND ('
            + " OR ".join(f'resource.labels.service_name="{name}"' for name in names)
            + f') AND jsonPayload.event="{event}"'
        )
    )


def _request_log_name(project: str) -> str:
    return f"projects/{project}/logs/{REQUEST_LOG.replace('/', '%2F')}"


def _channel_key(address: str) -> str:
    """Readable and stable per address; the hash keeps a.b@x and a-b@x apart."""
    slug = re.sub(r"[^a-z0-9]+", "-", address.lower()).strip("-")
    return f"{slug}-{hashlib.sha256(address.encode()).hexdigest()[:6]}"
