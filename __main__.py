"""The Pulumi program: read the stack config once, build the pipeline, export outputs."""

from pathlib import Path

import pulumi
import pulumi_gcp as gcp

from components import topology
from components.config import load_stack_config
from components.identities import member_for_email
from components.pipeline import MlPipeline, MlPipelineArgs
from pipeline_core.contract import PREDICTIONS_PREFIX, RAW_PREFIX

REPOSITORY_ROOT = Path(__file__).resolve().parent

config = load_stack_config()
deployer: pulumi.Input[str] = (
    config.deployer
    if config.deployer is not None
    else gcp.organizations.get_client_open_id_user_info_output().email.apply(member_for_email)
)
pipeline = MlPipeline(
    topology.resource_name(config, "pipeline"),
    MlPipelineArgs(
        config=config,
        repository_root=REPOSITORY_ROOT,
        build_dir=REPOSITORY_ROOT / "build",
        deployer=deployer,
    ),
)

pulumi.export("orchestration", config.orchestration)
pulumi.export("data_bucket", pipeline.data_bucket)
pulumi.export("upload_prefix", RAW_PREFIX)
pulumi.export(
    "upload_uri", pipeline.data_bucket.apply(lambda bucket: f"gs://{bucket}/{RAW_PREFIX}")
)
pulumi.export("scoring_prefix", config.score_prefix)
pulumi.export(
    "scoring_uri", pipeline.data_bucket.apply(lambda bucket: f"gs://{bucket}/{config.score_prefix}")
)
pulumi.export("predictions_prefix", PREDICTIONS_PREFIX)
pulumi.export("predict_url", pipeline.predict_url)
pulumi.export("function_urls", pipeline.function_urls)
pulumi.export("workflow_name", pipeline.workflow.name if pipeline.workflow else None)
pulumi.export("topics", pipeline.topic_names)
pulumi.export("summary_subscription", pipeline.summary_subscription)
pulumi.export("service_accounts", pipeline.account_emails)
pulumi.export("source_sha256", pipeline.source_sha256)
