"""One service account per workload, with the few project-level roles that have no
narrower scope, and the deployer's right to attach each account (pitfall 13).

Grants on buckets, topics and Cloud Run services are made by the components that own
those resources; this component holds only what cannot be scoped lower than the project.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

from components.topology import WORKLOADS

# Short account-id suffixes: account ids are at most 30 characters, the prefix up to 20.
ACCOUNT_SUFFIXES: Mapping[str, str] = {
    "processing": "proc",
    "training": "train",
    "prediction": "pred",
    "workflow_trigger": "wftrig",
    "scoring": "score",
    "workflow": "wf",
    "event_trigger": "evtrig",
    "build": "build",
}

# Roles that only exist at project scope (no bucket, topic or service resource to bind to).
PROJECT_ROLES: Mapping[str, tuple[str, ...]] = {
    # Workflows has no per-workflow IAM resource; executions are started project-wide.
    "workflow_trigger": ("roles/workflows.invoker",),
    # Call logs (workflowCallLogLevel) are written with the workflow's identity.
    "workflow": ("roles/logging.logWriter",),
    # Eventarc delivers to the function only if the trigger identity may receive events.
    "event_trigger": ("roles/eventarc.eventReceiver",),
    # Cloud Build with a user-managed account: write logs and push the image it builds.
    "build": ("roles/logging.logWriter", "roles/artifactregistry.writer"),
}


@dataclass(frozen=True)
class WorkloadIdentitiesArgs:
    project: str
    name_prefix: str
    deployer: pulumi.Input[str]
    workloads: tuple[str, ...] = tuple(WORKLOADS)
    apis: tuple[pulumi.Resource, ...] = field(default=())

    def __post_init__(self) -> None:
        unknown = sorted(set(self.workloads) - set(ACCOUNT_SUFFIXES))
        if unknown:
            raise ValueError(f"workloads {unknown} have no account suffix in ACCOUNT_SUFFIXES")
        longest = max(len(suffix) for suffix in ACCOUNT_SUFFIXES.values())
        if len(self.name_prefix) + 1 + longest > 30:
            raise ValueError(
                f"name prefix '{self.name_prefix}' makes service account ids longer than 30 "
                "characters: shorten ml-pipeline:namePrefix"
            )


class WorkloadIdentities(pulumi.ComponentResource):
    """The runtime, trigger and build service accounts of the pipeline."""

    def __init__(
        self, name: str, args: WorkloadIdentitiesArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ml-pipeline:gcp:WorkloadIdentities", name, None, opts)
        needs_apis = pulumi.ResourceOptions(parent=self, depends_on=list(args.apis))
        self.accounts: dict[str, gcp.serviceaccount.Account] = {}
        for workload in args.workloads:
            purpose = WORKLOADS[workload]
            label = workload.replace("_", "-")
            account = gcp.serviceaccount.Account(
                f"{name}-{label}",
                project=args.project,
                account_id=f"{args.name_prefix}-{ACCOUNT_SUFFIXES[workload]}",
                display_name=f"{args.name_prefix} {workload}",
                description=purpose,
                opts=needs_apis,
            )
            self.accounts[workload] = account
            # Attaching an account to a function, trigger, subscription or workflow
            # requires actAs on it (pitfall 13).
            gcp.serviceaccount.IAMMember(
                f"{name}-{label}-deployer-user",
                service_account_id=account.name,
                role="roles/iam.serviceAccountUser",
                member=args.deployer,
                opts=needs_apis,
            )
            for role in PROJECT_ROLES.get(workload, ()):
                gcp.projects.IAMMember(
                    f"{name}-{label}-{role.removeprefix('roles/').replace('.', '-')}",
                    project=args.project,
                    role=role,
                    member=account.member,
                    opts=needs_apis,
                )
        self.register_outputs(
            {"emails": {workload: account.email for workload, account in self.accounts.items()}}
        )

    def email(self, workload: str) -> pulumi.Output[str]:
        return self.account(workload).email

    def member(self, workload: str) -> pulumi.Output[str]:
        return self.account(workload).member

    def account(self, workload: str) -> gcp.serviceaccount.Account:
        try:
            return self.accounts[workload]
        except KeyError:
            raise KeyError(f"no service account for workload '{workload}'") from None


def member_for_email(email: str) -> str:
    """The IAM member of the identity that runs ``pulumi up``, from its email."""
    if not email or "@" not in email:
        raise ValueError(
            f"cannot tell who runs the deployment (credentials email {email!r}): set "
            "ml-pipeline:deployer to user:EMAIL or serviceAccount:EMAIL"
        )
    kind = "serviceAccount" if email.endswith(".gserviceaccount.com") else "user"
    return f"{kind}:{email}"
