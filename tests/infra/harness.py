"""Run the real Pulumi program under mocks and record what it registers.

The mock monitor sees every RegisterResource request exactly as the engine would:
type, name, parent and the dependency URNs the SDK computed (explicit ``depends_on``,
component children, and Outputs passed as inputs). Outputs are realistic enough for
dependent wiring (emails, URLs, ids) to be checked.
"""

from __future__ import annotations

import json
import runpy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor, MockResourceArgs
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
PROGRAM = REPOSITORY_ROOT / "__main__.py"
PROJECT = "proj-test-123"
PROJECT_NUMBER = "123456789012"
REGION = "europe-west1"
STACK = "dev"
DEPLOYER_EMAIL = "deployer@example.com"
STORAGE_AGENT = f"service-{PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com"

BASE_CONFIG: dict[str, Any] = {"gcp:project": PROJECT, "gcp:region": REGION}


@dataclass
class Resource:
    urn: str
    type: str
    name: str
    parent: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    dependencies: tuple[str, ...]
    custom: bool

    def get(self, path: str) -> Any:
        """A nested input by dotted camelCase path, e.g. ``serviceConfig.timeoutSeconds``."""
        value: Any = self.inputs
        for part in path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise KeyError(f"{self.type} {self.name} has no input {path}")
            value = value[part]
        return value


@dataclass
class Deployment:
    resources: list[Resource]
    exports: dict[str, Any]
    invokes: list[str] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def named(self, name: str) -> Resource:
        matches = [r for r in self.resources if r.name == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources named {name}")
        return matches[0]

    def by_urn(self, urn: str) -> Resource:
        for resource in self.resources:
            if resource.urn == urn:
                return resource
        raise KeyError(urn)

    def ancestors(self, resource: Resource) -> Iterator[Resource]:
        while resource.parent:
            try:
                resource = self.by_urn(resource.parent)
            except KeyError:  # the stack itself
                return
            yield resource

    def waits_for(self, resource: Resource, dependency: Resource) -> bool:
        """Whether the engine would create ``dependency`` before ``resource``."""
        return dependency.urn in resource.dependencies


class RecordingMonitor(MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.requests: dict[str, tuple[str, tuple[str, ...], bool]] = {}
        self.invokes: list[str] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - the gRPC method name
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        self.requests[response.urn] = (
            request.parent,
            tuple(request.dependencies),
            bool(request.custom),
        )
        return response

    def Invoke(self, request: Any) -> Any:  # noqa: N802 - the gRPC method name
        self.invokes.append(request.tok)
        return super().Invoke(request)  # type: ignore[no-untyped-call]


class GcpMocks(pulumi.runtime.Mocks):
    """Outputs shaped like the provider's, derived from the inputs."""

    def new_resource(self, args: MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        outputs = dict(inputs)
        resource_id = f"{args.name}-id"
        if args.typ == "gcp:serviceaccount/account:Account":
            email = f"{inputs['accountId']}@{PROJECT}.iam.gserviceaccount.com"
            resource_id = f"projects/{PROJECT}/serviceAccounts/{email}"
            outputs |= {"email": email, "member": f"serviceAccount:{email}", "name": resource_id}
        elif args.typ == "gcp:projects/serviceIdentity:ServiceIdentity":
            agent = inputs["service"].split(".")[0]
            email = f"service-{PROJECT_NUMBER}@gcp-sa-{agent}.iam.gserviceaccount.com"
            outputs |= {"email": email, "member": f"serviceAccount:{email}"}
        elif args.typ == "gcp:pubsub/topic:Topic":
            resource_id = f"projects/{PROJECT}/topics/{inputs['name']}"
        elif args.typ == "gcp:storage/bucket:Bucket":
            resource_id = inputs["name"]
            outputs["url"] = f"gs://{inputs['name']}"
        elif args.typ == "gcp:storage/bucketObject:BucketObject":
            outputs["outputName"] = inputs["name"]
        elif args.typ == "gcp:cloudfunctionsv2/function:Function":
            uri = f"https://{inputs['name']}-xyz-ew.a.run.app"
            outputs["serviceConfig"] = {
                **inputs.get("serviceConfig", {}),
                "uri": uri,
                "service": f"projects/{PROJECT}/locations/{REGION}/services/{inputs['name']}",
            }
            outputs["url"] = f"https://{REGION}-{PROJECT}.cloudfunctions.net/{inputs['name']}"
        elif args.typ == "gcp:monitoring/notificationChannel:NotificationChannel":
            resource_id = f"projects/{PROJECT}/notificationChannels/{args.name}"
            outputs["name"] = resource_id
        elif args.typ == "gcp:monitoring/alertPolicy:AlertPolicy":
            resource_id = f"projects/{PROJECT}/alertPolicies/{args.name}"
            outputs["name"] = resource_id
        outputs["id"] = resource_id
        return resource_id, outputs

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        if args.token == "gcp:storage/getProjectServiceAccount:getProjectServiceAccount":
            return {
                "emailAddress": STORAGE_AGENT,
                "member": f"serviceAccount:{STORAGE_AGENT}",
            }, []
        if args.token == "gcp:organizations/getClientOpenIdUserInfo:getClientOpenIdUserInfo":
            return {"email": DEPLOYER_EMAIL}, []
        raise NotImplementedError(f"the program made an unexpected call: {args.token}")


def config_values(**values: Any) -> dict[str, str]:
    """``ml-pipeline:<key>`` entries as the CLI passes them: scalars raw, the rest JSON."""
    config = dict(BASE_CONFIG)
    for key, value in values.items():
        if isinstance(value, str):
            config[f"ml-pipeline:{key}"] = value
        elif isinstance(value, bool):
            config[f"ml-pipeline:{key}"] = "true" if value else "false"
        else:
            config[f"ml-pipeline:{key}"] = json.dumps(value)
    return config


def run_program(config: Mapping[str, str], monkeypatch: Any) -> Deployment:
    """Run ``__main__.py`` with ``preview=False`` and return everything it registered."""
    monitor = RecordingMonitor(GcpMocks())
    pulumi.runtime.set_mocks(
        GcpMocks(), project="ml-pipeline", stack=STACK, preview=False, monitor=monitor
    )
    pulumi.runtime.set_all_config(dict(config))
    exported: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", exported.__setitem__)

    def program() -> None:
        runpy.run_path(str(PROGRAM), run_name="__main__")

    _sync_await(run_pulumi_func(program))
    exports = _sync_await(pulumi.Output.from_input(exported).future())
    resources = []
    for urn, registration in monitor.resources.items():
        parent, dependencies, custom = monitor.requests[urn]
        resources.append(
            Resource(
                urn=urn,
                type=urn.split("::")[2].split("$")[-1],
                name=urn.split("::")[3],
                parent=parent,
                inputs=dict(registration.state),
                outputs=registration.state,
                dependencies=dependencies,
                custom=custom,
            )
        )
    return Deployment(resources, exports or {}, monitor.invokes)


class Types:
    ACCOUNT = "gcp:serviceaccount/account:Account"
    ACCOUNT_IAM = "gcp:serviceaccount/iAMMember:IAMMember"
    API = "gcp:projects/service:Service"
    BUCKET = "gcp:storage/bucket:Bucket"
    BUCKET_IAM = "gcp:storage/bucketIAMMember:BucketIAMMember"
    BUCKET_OBJECT = "gcp:storage/bucketObject:BucketObject"
    FUNCTION = "gcp:cloudfunctionsv2/function:Function"
    NOTIFICATION = "gcp:storage/notification:Notification"
    PROJECT_IAM = "gcp:projects/iAMMember:IAMMember"
    RUN_INVOKER = "gcp:cloudrunv2/serviceIamMember:ServiceIamMember"
    SERVICE_IDENTITY = "gcp:projects/serviceIdentity:ServiceIdentity"
    SUBSCRIPTION = "gcp:pubsub/subscription:Subscription"
    SUBSCRIPTION_IAM = "gcp:pubsub/subscriptionIAMMember:SubscriptionIAMMember"
    TOPIC = "gcp:pubsub/topic:Topic"
    TOPIC_IAM = "gcp:pubsub/topicIAMMember:TopicIAMMember"
    WORKFLOW = "gcp:workflows/workflow:Workflow"
    ALERT_POLICY = "gcp:monitoring/alertPolicy:AlertPolicy"
    NOTIFICATION_CHANNEL = "gcp:monitoring/notificationChannel:NotificationChannel"
    DASHBOARD = "gcp:monitoring/dashboard:Dashboard"
    LOG_METRIC = "gcp:logging/metric:Metric"

    MONITORING = (ALERT_POLICY, NOTIFICATION_CHANNEL, DASHBOARD, LOG_METRIC)

    IAM = (ACCOUNT_IAM, BUCKET_IAM, PROJECT_IAM, RUN_INVOKER, SUBSCRIPTION_IAM, TOPIC_IAM)


def account_member(deployment: Deployment, workload_suffix: str) -> str:
    """``serviceAccount:<email>`` of the account whose id ends with ``-<suffix>``."""
    matches = [
        a.outputs["member"]
        for a in deployment.of_type(Types.ACCOUNT)
        if a.inputs["accountId"].endswith(f"-{workload_suffix}")
    ]
    if len(matches) != 1:
        raise KeyError(f"{len(matches)} accounts end with -{workload_suffix}")
    return str(matches[0])


def function_named(deployment: Deployment, function_name: str) -> Resource:
    for function in deployment.of_type(Types.FUNCTION):
        if function.inputs["name"] == function_name:
            return function
    raise KeyError(f"no function {function_name}")
