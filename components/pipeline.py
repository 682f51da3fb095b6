"""The whole pipeline, composed from ``components.topology``.

Which functions, topics, deliveries and workflow exist comes from the topology; this
module only decides how each maps onto GCP and who may do what.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_gcp as gcp

from components import topology
from components.config import StackConfig
from components.data_bucket import BucketGrant, DataBucket, DataBucketArgs, UploadNotification
from components.function import CloudFunction, CloudFunctionArgs, EventTrigger, Invoker
from components.identities import WorkloadIdentities, WorkloadIdentitiesArgs
from components.messaging import Messaging, MessagingArgs, TopicPublisher
from components.monitoring import PipelineMonitoring, PipelineMonitoringArgs
from components.packaging import package_source
from components.push_subscription import PushSubscription, PushSubscriptionArgs
from components.services import ProjectServices, ProjectServicesArgs
from components.workflow import PipelineWorkflow, PipelineWorkflowArgs
from pipeline_core.contract import (
    MODELS_PREFIX,
    PREDICTIONS_PREFIX,
    PROCESSED_PREFIX,
    RAW_PREFIX,
    REJECTED_PREFIX,
    RUNS_PREFIX,
    LogEvent,
)

PREDICT_FUNCTION = "predict"
FUNCTION_SOURCE_DIR = "function_src"
REQUIRED_SOURCE_FILES = ("main.py", "requirements.txt")
_READ = "roles/storage.objectViewer"
# objectUser can also overwrite and delete, so it is only ever granted under a prefix:
# no workload can touch raw/ uploads beyond reading them.
_WRITE = "roles/storage.objectUser"


# Data-bucket access per workload: (role, object prefix). Every grant is narrowed to a
# prefix: the handlers get objects by name (and raw/ at a given generation, which
# objectViewer's storage.objects.get covers) and never list, so no workload needs the
# whole bucket. objectUser includes reading, so a written prefix is also readable.
def data_bucket_access(config: StackConfig) -> Mapping[str, tuple[tuple[str, str], ...]]:
    return {
        "processing": (
            (_READ, RAW_PREFIX),
            (_WRITE, PROCESSED_PREFIX),
            (_WRITE, REJECTED_PREFIX),
        ),
        "training": ((_READ, PROCESSED_PREFIX), (_WRITE, MODELS_PREFIX)),
        "prediction": ((_READ, MODELS_PREFIX),),
        "workflow_trigger": ((_WRITE, RUNS_PREFIX),),
        # The registry (champion pointer, manifests, artifacts) lies under models/.
        "scoring": (
            (_READ, config.score_prefix),
            (_READ, MODELS_PREFIX),
            (_WRITE, PREDICTIONS_PREFIX),
        ),
    }


@dataclass(frozen=True)
class MlPipelineArgs:
    config: StackConfig
    repository_root: Path
    build_dir: Path
    deployer: pulumi.Input[str]

    def __post_init__(self) -> None:
        if not (self.repository_root / FUNCTION_SOURCE_DIR).is_dir():
            raise ValueError(
                f"{self.repository_root} has no {FUNCTION_SOURCE_DIR}/: run the program "
                "from the repository root"
            )


def workloads_of(plan: topology.Topology) -> tuple[str, ...]:
    """The service accounts this topology uses; unused ones are not created."""
    used = {spec.workload for spec in plan.functions} | {"event_trigger", "build"}
    if plan.workflow is not None:
        used.add("workflow")
    return tuple(workload for workload in topology.WORKLOADS if workload in used)


@dataclass(frozen=True)
class _Foundation:
    """What every part of the stack is built from or attached to."""

    name: str
    config: StackConfig
    plan: topology.Topology
    child: pulumi.ResourceOptions  # parents a resource on the pipeline
    labels: Mapping[str, str]
    services: ProjectServices
    identities: WorkloadIdentities
    messaging: Messaging

    @property
    def topic_names(self) -> dict[str, pulumi.Output[str]]:
        return {key: topic.name for key, topic in self.messaging.topics.items()}


class MlPipeline(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: MlPipelineArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ml-pipeline:gcp:MlPipeline", name, None, opts)
        base = self._foundation(name, args)
        data = self._data_bucket(base)
        source = self._source_bucket(base)
        archive = package_source(
            args.repository_root / FUNCTION_SOURCE_DIR, required=REQUIRED_SOURCE_FILES
        )
        self.source_object = gcp.storage.BucketObject(
            f"{name}-function-source",
            bucket=source.name,
            name=archive.object_name(),
            source=pulumi.FileAsset(str(archive.write_to(args.build_dir))),
            content_type="application/zip",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[base.services.api("storage")]),
        )
        self.functions = self._cloud_functions(base, data, source)
        for delivery in base.plan.deliveries:
            if delivery.mechanism == "push":
                self._push(base, delivery)
        self.workflow = self._workflow(base, args.repository_root)
        self.monitoring = self._monitoring(base)

        self.data_bucket = data.name
        self.summary_subscription = base.messaging.summary_subscription.name
        self.source_bucket = source.name
        self.topic_names = base.topic_names
        self.account_emails = {
            workload: account.email for workload, account in base.identities.accounts.items()
        }
        self.predict_url = self.functions[PREDICT_FUNCTION].url
        self.function_urls = {key: function.url for key, function in self.functions.items()}
        self.source_sha256 = archive.sha256
        self.register_outputs(
            {
                "data_bucket": self.data_bucket,
                "function_urls": self.function_urls,
                "topics": self.topic_names,
                "service_accounts": self.account_emails,
                "source_sha256": self.source_sha256,
                "workflow": self.workflow.name if self.workflow is not None else None,
                "summary_subscription": self.summary_subscription,
            }
        )

    def _foundation(self, name: str, args: MlPipelineArgs) -> _Foundation:
        """The project's APIs, the workloads' service accounts and the topics."""
        config = args.config
        plan = topology.topology_for(config)
        child = pulumi.ResourceOptions(parent=self)
        labels = {"app": "ml-pipeline", "stack": _label_value(config.stack), **config.labels}
        services = ProjectServices(f"{name}-apis", ProjectServicesArgs(config.project), child)
        identities = WorkloadIdentities(
            f"{name}-sa",
            WorkloadIdentitiesArgs(
                project=config.project,
                name_prefix=config.name_prefix,
                deployer=args.deployer,
                workloads=workloads_of(plan),
                apis=services.apis_for("iam", "cloudresourcemanager"),
            ),
            child,
        )
        messaging = Messaging(
            f"{name}-messaging",
            MessagingArgs(
                project=config.project,
                name_prefix=config.name_prefix,
                topics=plan.topics,
                dead_letter_topic=topology.DEAD_LETTER_TOPIC,
                notifications=plan.notifications,
                summary_topic=topology.SUMMARY_TOPIC,
                summary_subscription_name=topology.summary_subscription_name(config),
                dead_letter_subscription_name=topology.dead_letter_subscription_name(config),
                storage_agent=services.storage_agent,
                pubsub_agent=services.pubsub_agent,
                push_identity=identities.account("event_trigger").name,
                publishers=_publishers(plan, identities),
                labels=labels,
                apis=services.apis_for("pubsub", "iam"),
            ),
            child,
        )
        return _Foundation(name, config, plan, child, labels, services, identities, messaging)

    def _data_bucket(self, base: _Foundation) -> DataBucket:
        """The bucket of uploads, processed data, models and runs, with its notifications
        and the workloads' prefix-scoped grants."""
        config, messaging = base.config, base.messaging
        return DataBucket(
            f"{base.name}-data",
            DataBucketArgs(
                name=topology.data_bucket_name(config),
                project=config.project,
                location=config.bucket_location,
                labels=base.labels,
                force_destroy=config.force_destroy,
                grants=_data_grants(base.identities, data_bucket_access(config)),
                notifications=[
                    UploadNotification(
                        key=notification.key,
                        topic=messaging.topic(notification.topic).id,
                        object_prefix=notification.prefix,
                        publisher_grant=messaging.notification_grants[notification.key],
                    )
                    for notification in base.plan.notifications
                ],
                apis=base.services.apis_for("storage", "pubsub"),
            ),
            base.child,
        )

    def _source_bucket(self, base: _Foundation) -> DataBucket:
        """The bucket of function source archives, read by the build account only."""
        return DataBucket(
            f"{base.name}-source",
            DataBucketArgs(
                name=topology.bucket_name(base.config, "src"),
                project=base.config.project,
                location=base.config.region,
                labels=base.labels,
                # Old archives are only build inputs; deleting them with the stack is safe.
                force_destroy=True,
                grants=(BucketGrant("build-read", _READ, base.identities.member("build")),),
                apis=base.services.apis_for("storage"),
            ),
            base.child,
        )

    def _cloud_functions(
        self, base: _Foundation, data: DataBucket, source: DataBucket
    ) -> dict[str, CloudFunction]:
        """One function per topology entry, all running the one source archive."""
        topic_names = base.topic_names
        apis = base.services.apis_for(
            "cloudfunctions", "run", "cloudbuild", "artifactregistry", "eventarc"
        )
        return {
            spec.key: CloudFunction(
                f"{base.name}-{spec.key.replace('_', '-')}",
                _function_args(
                    base.config,
                    base.plan,
                    spec,
                    identities=base.identities,
                    messaging=base.messaging,
                    labels=base.labels,
                    data_bucket=data.name,
                    source_bucket=source.name,
                    source_object=self.source_object.output_name,
                    topic_names=topic_names,
                    apis=apis,
                    # The runtime and build accounts, their roles and the deployer's actAs
                    # must exist before the first deploy uses them.
                    grants=(base.identities, data, source),
                ),
                base.child,
            )
            for spec in base.plan.functions
        }

    def _push(self, base: _Foundation, delivery: topology.Delivery) -> None:
        """A push subscription, with a dead-letter queue, from a topic to a function."""
        config, messaging, identities = base.config, base.messaging, base.identities
        target = self.functions[delivery.function]
        topic = messaging.topic(delivery.topic)
        settings = config.function(base.plan.function(delivery.function).settings_key)
        PushSubscription(
            f"{base.name}-{delivery.key.replace('_', '-')}",
            PushSubscriptionArgs(
                project=config.project,
                subscription_name=topology.push_subscription_name(config, delivery),
                topic=topic.id,
                push_endpoint=pulumi.Output.all(target.url, topic.name).apply(
                    lambda parts: parts[0] + delivery.push_path(config.project, parts[1])
                ),
                audience=target.url,
                push_identity_email=identities.email("event_trigger"),
                dead_letter_topic=messaging.topic(topology.DEAD_LETTER_TOPIC).id,
                max_delivery_attempts=config.dead_letter_max_attempts,
                pubsub_agent=base.services.pubsub_agent,
                # The subscription waits at most as long as the function may run.
                ack_deadline_seconds=max(10, min(600, settings.timeout_seconds)),
                labels=base.labels,
                grants=(
                    messaging.token_creator_grant,
                    messaging.dead_letter_grant,
                    identities,
                ),
                apis=base.services.apis_for("pubsub"),
            ),
            base.child,
        )

    def _workflow(self, base: _Foundation, repository_root: Path) -> PipelineWorkflow | None:
        """Workflow mode's orchestration over the stage functions' URLs."""
        workflow = base.plan.workflow
        if workflow is None:
            return None
        config = base.config
        return PipelineWorkflow(
            f"{base.name}-workflow",
            PipelineWorkflowArgs(
                workflow_name=topology.workflow_name(config),
                project=config.project,
                region=config.region,
                source_path=repository_root / workflow.source,
                service_account_email=base.identities.email("workflow"),
                user_env_vars=topology.workflow_environment(
                    function_urls={key: self.functions[key].url for key in workflow.calls},
                    topic_names=base.topic_names,
                ),
                call_log_level=config.workflow_call_log_level,
                deletion_protection=config.workflow_deletion_protection,
                labels=base.labels,
                apis=base.services.apis_for("workflows", "logging"),
                grants=(base.identities,),
            ),
            base.child,
        )

    def _monitoring(self, base: _Foundation) -> PipelineMonitoring | None:
        """Alerts, log-based metrics and the dashboard, unless monitoring is disabled."""
        config, plan = base.config, base.plan
        if not config.monitoring.enabled:
            return None
        return PipelineMonitoring(
            f"{base.name}-monitoring",
            PipelineMonitoringArgs(
                project=config.project,
                region=config.region,
                name_prefix=config.name_prefix,
                settings=config.monitoring,
                service_names={
                    key: function.service_name for key, function in self.functions.items()
                },
                predict=PREDICT_FUNCTION,
                promoting=plan.functions_logging(LogEvent.MODEL_PROMOTED),
                rejecting=plan.functions_logging(LogEvent.UPLOAD_REJECTED),
                dead_letter_subscription=base.messaging.dead_letter_subscription.name,
                workflow_name=self.workflow.name if self.workflow is not None else None,
                labels=base.labels,
                monitoring_apis=base.services.apis_for("monitoring"),
                logging_apis=base.services.apis_for("logging"),
            ),
            base.child,
        )


def _function_args(
    config: StackConfig,
    plan: topology.Topology,
    spec: topology.FunctionSpec,
    *,
    identities: WorkloadIdentities,
    messaging: Messaging,
    labels: Mapping[str, str],
    data_bucket: pulumi.Output[str],
    source_bucket: pulumi.Output[str],
    source_object: pulumi.Output[str],
    topic_names: Mapping[str, pulumi.Output[str]],
    apis: tuple[pulumi.Resource, ...],
    grants: tuple[pulumi.Resource, ...],
) -> CloudFunctionArgs:
    deliveries = plan.deliveries_to(spec.key)
    invokers: list[Invoker] = []
    if plan.workflow is not None and spec.key in plan.workflow.calls:
        invokers.append(Invoker("workflow", identities.member("workflow")))
    if deliveries:
        invokers.append(Invoker("event-trigger", identities.member("event_trigger")))
    if spec.key == PREDICT_FUNCTION:
        invokers.extend(
            Invoker(f"member-{index}", member)
            for index, member in enumerate(config.predict_invokers)
        )
        if config.public_predict:
            invokers.append(Invoker("public", "allUsers"))
    eventarc = [delivery for delivery in deliveries if delivery.mechanism == "eventarc"]
    return CloudFunctionArgs(
        function_name=topology.function_name(config, spec.key),
        project=config.project,
        region=config.region,
        entry_point=spec.entry_point,
        source_bucket=source_bucket,
        source_object=source_object,
        runtime_account_email=identities.email(spec.workload),
        build_account_id=identities.account("build").id,
        settings=config.function(spec.settings_key),
        environment=topology.function_environment(
            config,
            spec,
            bucket=data_bucket,
            topic_names=topic_names,
            workflow_name=(topology.workflow_name(config) if plan.workflow is not None else None),
        ),
        invokers=invokers,
        event_trigger=(
            EventTrigger(
                topic=messaging.topic(eventarc[0].topic).id,
                trigger_region=config.trigger_region,
                service_account_email=identities.email("event_trigger"),
            )
            if eventarc
            else None
        ),
        allow_public=config.public_predict,
        labels=labels,
        apis=apis,
        grants=grants,
    )


def _publishers(
    plan: topology.Topology, identities: WorkloadIdentities
) -> tuple[TopicPublisher, ...]:
    publishers = [
        TopicPublisher(
            f"{spec.workload}-publishes-{topic}", topic, identities.member(spec.workload)
        )
        for spec in plan.functions
        for topic in spec.publishes_to
    ]
    if plan.workflow is not None:
        publishers.extend(
            TopicPublisher(f"workflow-publishes-{topic}", topic, identities.member("workflow"))
            for topic in plan.workflow.publishes_to
        )
    return tuple(publishers)


def _data_grants(
    identities: WorkloadIdentities, access_by_workload: Mapping[str, tuple[tuple[str, str], ...]]
) -> tuple[BucketGrant, ...]:
    return tuple(
        BucketGrant(
            f"{workload}-{role.rsplit('.', 1)[1]}-{prefix.rstrip('/').replace('/', '-')}",
            role,
            identities.member(workload),
            prefix,
        )
        for workload, access in access_by_workload.items()
        if workload in identities.accounts
        for role, prefix in access
    )


def _label_value(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in value.lower())[:63]
