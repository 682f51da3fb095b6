"""A Cloud Functions (2nd gen) function with its own runtime account, the dedicated
build account (pitfall 8), an optional Eventarc trigger (pitfalls 2 and 4) and
``roles/run.invoker`` granted on its Cloud Run service (pitfall 7)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

from components.config import FunctionSettings

RUNTIME = "python311"
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
PUBLIC_MEMBERS = frozenset({"allUsers", "allAuthenticatedUsers"})


@dataclass(frozen=True)
class EventTrigger:
    """Eventarc delivery of a topic's messages; the region must be the bucket's."""

    topic: pulumi.Input[str]  # topic id
    trigger_region: str
    service_account_email: pulumi.Input[str]
    retry: bool = True


@dataclass(frozen=True)
class Invoker:
    key: str
    member: pulumi.Input[str]


@dataclass(frozen=True)
class CloudFunctionArgs:
    function_name: str
    project: str
    region: str
    entry_point: str
    source_bucket: pulumi.Input[str]
    source_object: pulumi.Input[str]
    runtime_account_email: pulumi.Input[str]
    build_account_id: pulumi.Input[str]  # projects/<p>/serviceAccounts/<email>
    settings: FunctionSettings
    environment: Mapping[str, pulumi.Input[str]]
    invokers: Sequence[Invoker] = ()
    event_trigger: EventTrigger | None = None
    allow_public: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    apis: tuple[pulumi.Resource, ...] = ()
    # Accounts, their roles and the deployer's actAs, which the first deploy needs.
    grants: tuple[pulumi.Resource, ...] = ()

    def __post_init__(self) -> None:
        if not self.entry_point.isidentifier():
            raise ValueError(f"entry point '{self.entry_point}' is not a Python identifier")
        public = [i.key for i in self.invokers if isinstance(i.member, str) and _is_public(i)]
        if public and not self.allow_public:
            raise ValueError(
                f"function {self.function_name}: invokers {public} make it public; "
                "only publicPredict: true may do that"
            )
        keys = [invoker.key for invoker in self.invokers]
        if len(set(keys)) != len(keys):
            raise ValueError(f"function {self.function_name}: invoker keys repeat: {keys}")


def _is_public(invoker: Invoker) -> bool:
    return invoker.member in PUBLIC_MEMBERS


class CloudFunction(pulumi.ComponentResource):
    function: gcp.cloudfunctionsv2.Function
    url: pulumi.Output[str]
    service: pulumi.Output[str]
    service_name: pulumi.Output[str]  # the Cloud Run service's short name (monitoring labels)

    def __init__(
        self, name: str, args: CloudFunctionArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ml-pipeline:gcp:CloudFunction", name, None, opts)
        needs_apis = pulumi.ResourceOptions(parent=self, depends_on=list(args.apis))
        trigger = args.event_trigger
        self.function = gcp.cloudfunctionsv2.Function(
            name,
            name=args.function_name,
            project=args.project,
            location=args.region,
            labels=dict(args.labels),
            build_config=gcp.cloudfunctionsv2.FunctionBuildConfigArgs(
                runtime=RUNTIME,
                entry_point=args.entry_point,
                service_account=args.build_account_id,
                source=gcp.cloudfunctionsv2.FunctionBuildConfigSourceArgs(
                    storage_source=gcp.cloudfunctionsv2.FunctionBuildConfigSourceStorageSourceArgs(
                        bucket=args.source_bucket, object=args.source_object
                    )
                ),
            ),
            service_config=gcp.cloudfunctionsv2.FunctionServiceConfigArgs(
                service_account_email=args.runtime_account_email,
                available_memory=args.settings.memory,
                timeout_seconds=args.settings.timeout_seconds,
                min_instance_count=args.settings.min_instances,
                max_instance_count=args.settings.max_instances,
                environment_variables=dict(args.environment),
                ingress_settings="ALLOW_ALL",
                all_traffic_on_latest_revision=True,
            ),
            event_trigger=(
                gcp.cloudfunctionsv2.FunctionEventTriggerArgs(
                    event_type=PUBSUB_PUBLISHED,
                    pubsub_topic=trigger.topic,
                    trigger_region=trigger.trigger_region,
                    service_account_email=trigger.service_account_email,
                    retry_policy="RETRY_POLICY_RETRY"
                    if trigger.retry
                    else "RETRY_POLICY_DO_NOT_RETRY",
                )
                if trigger is not None
                else None
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*args.apis, *args.grants]),
        )
        self.url = self.function.service_config.apply(_service_uri)
        self.service = self.function.service_config.apply(_service_name)
        self.service_name = self.service.apply(lambda service: service.rsplit("/", 1)[-1])
        for invoker in args.invokers:
            # 2nd-gen functions are Cloud Run services: the cloudfunctions IAM API does
            # not govern who may call them.
            gcp.cloudrunv2.ServiceIamMember(
                f"{name}-invoker-{invoker.key}",
                project=args.project,
                location=args.region,
                name=self.service,
                role="roles/run.invoker",
                member=invoker.member,
                opts=needs_apis,
            )
        self.register_outputs({"url": self.url, "service": self.service})


def _service_uri(config: gcp.cloudfunctionsv2.outputs.FunctionServiceConfig | None) -> str:
    if config is None or not config.uri:
        raise ValueError("the function has no service URI")
    return config.uri


def _service_name(config: gcp.cloudfunctionsv2.outputs.FunctionServiceConfig | None) -> str:
    if config is None or not config.service:
        raise ValueError("the function has no Cloud Run service")
    return config.service
