"""Project APIs and the Google-managed service agents the pipeline relies on.

APIs are enabled here once and never disabled on destroy (pitfall 5): another stack or a
person may still use them. Service agents are materialised only after their API is on,
because a fresh project has none yet (pitfall 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

# Every API a resource of this stack calls, keyed by a short name the components use.
APIS: dict[str, str] = {
    "artifactregistry": "artifactregistry.googleapis.com",
    "cloudbuild": "cloudbuild.googleapis.com",
    "cloudfunctions": "cloudfunctions.googleapis.com",
    "eventarc": "eventarc.googleapis.com",
    "iam": "iam.googleapis.com",
    "logging": "logging.googleapis.com",
    "monitoring": "monitoring.googleapis.com",
    "pubsub": "pubsub.googleapis.com",
    "run": "run.googleapis.com",
    "storage": "storage.googleapis.com",
    "workflows": "workflows.googleapis.com",
    "cloudresourcemanager": "cloudresourcemanager.googleapis.com",
}


@dataclass(frozen=True)
class ProjectServicesArgs:
    project: str

    def __post_init__(self) -> None:
        if not self.project:
            raise ValueError("ProjectServicesArgs.project is empty: pass the GCP project id")


class ProjectServices(pulumi.ComponentResource):
    """Enabled APIs plus the Pub/Sub, Eventarc and Cloud Storage service agents."""

    pubsub_agent: pulumi.Output[str]
    eventarc_agent: pulumi.Output[str]
    storage_agent: pulumi.Output[str]

    def __init__(
        self, name: str, args: ProjectServicesArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ml-pipeline:gcp:ProjectServices", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self._apis = {
            key: gcp.projects.Service(
                f"{name}-{key}",
                project=args.project,
                service=api,
                disable_on_destroy=False,
                disable_dependent_services=False,
                opts=child,
            )
            for key, api in APIS.items()
        }
        pubsub_identity = gcp.projects.ServiceIdentity(
            f"{name}-pubsub-agent",
            project=args.project,
            service=APIS["pubsub"],
            opts=self.needs("pubsub"),
        )
        eventarc_identity = gcp.projects.ServiceIdentity(
            f"{name}-eventarc-agent",
            project=args.project,
            service=APIS["eventarc"],
            opts=self.needs("eventarc"),
        )
        self.pubsub_agent = pubsub_identity.member
        self.eventarc_agent = eventarc_identity.member
        # The lookup also creates the Cloud Storage agent, so it must wait for the API.
        storage_account = gcp.storage.get_project_service_account_output(
            project=args.project,
            opts=pulumi.InvokeOutputOptions(parent=self, depends_on=[self._apis["storage"]]),
        )
        self.storage_agent = storage_account.member
        self.register_outputs(
            {
                "apis": sorted(APIS.values()),
                "pubsub_agent": self.pubsub_agent,
                "eventarc_agent": self.eventarc_agent,
                "storage_agent": self.storage_agent,
            }
        )

    def api(self, key: str) -> gcp.projects.Service:
        try:
            return self._apis[key]
        except KeyError:
            raise KeyError(f"API '{key}' is not enabled by this stack; add it to APIS") from None

    def apis_for(self, *keys: str) -> tuple[pulumi.Resource, ...]:
        """The API resources a child must wait for (the API-enable race)."""
        return tuple(self.api(key) for key in keys)

    def needs(self, *keys: str) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, depends_on=list(self.apis_for(*keys)))
