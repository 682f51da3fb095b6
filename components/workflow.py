"""The Workflows definition that orchestrates the stages (pitfall 12).

Its source is read from the repository, so the cloud runs exactly the YAML that the
local stack interprets; the stage URLs and topic arrive as user environment variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_gcp as gcp

from components.config import CALL_LOG_LEVELS


@dataclass(frozen=True)
class PipelineWorkflowArgs:
    workflow_name: str
    project: str
    region: str
    source_path: Path
    service_account_email: pulumi.Input[str]
    user_env_vars: Mapping[str, pulumi.Input[str]]
    call_log_level: str = "LOG_ERRORS_ONLY"
    deletion_protection: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    apis: tuple[pulumi.Resource, ...] = ()
    grants: tuple[pulumi.Resource, ...] = ()  # e.g. the deployer's actAs on its account

    def __post_init__(self) -> None:
        if not self.source_path.is_file():
            raise ValueError(f"workflow source {self.source_path} does not exist")
        if self.call_log_level not in CALL_LOG_LEVELS:
            raise ValueError(
                f"call log level '{self.call_log_level}' is not one of {CALL_LOG_LEVELS}"
            )

    def source_contents(self) -> str:
        text = self.source_path.read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError(f"workflow source {self.source_path} is empty")
        return text


class PipelineWorkflow(pulumi.ComponentResource):
    workflow: gcp.workflows.Workflow
    name: pulumi.Output[str]

    def __init__(
        self, name: str, args: PipelineWorkflowArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ml-pipeline:gcp:PipelineWorkflow", name, None, opts)
        self.workflow = gcp.workflows.Workflow(
            name,
            name=args.workflow_name,
            project=args.project,
            region=args.region,
            description="Processes an upload, trains, promotes and smoke-tests a model",
            source_contents=args.source_contents(),
            service_account=args.service_account_email,
            user_env_vars=dict(args.user_env_vars),
            call_log_level=args.call_log_level,
            # The provider defaults to true, which blocks `pulumi destroy` of dev stacks.
            deletion_protection=args.deletion_protection,
            labels=dict(args.labels),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*args.apis, *args.grants]),
        )
        self.name = self.workflow.name
        self.register_outputs({"name": self.name, "region": args.region})
