"""The whole program under mocks: every property of issue 2, in both orchestration modes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from components import topology
from components.config import StackConfig
from components.packaging import package_source
from components.pipeline import FUNCTION_SOURCE_DIR, data_bucket_access
from pipeline_core.contract import STREAMING_ALLOCATOR
from policy.guardrails import check_resource
from tests.infra.harness import (
    DEPLOYER_EMAIL,
    PROJECT,
    REGION,
    REPOSITORY_ROOT,
    STACK,
    Deployment,
    Types,
    account_member,
    function_named,
)

DATA_BUCKET = f"mlp-dev-data-{PROJECT}"
DATA_BUCKET_ACCESS = data_bucket_access(
    StackConfig.from_values(project=PROJECT, region=REGION, stack=STACK, values={})
)
DEPLOYER = f"user:{DEPLOYER_EMAIL}"
OBJECTS = f"projects/_/buckets/{DATA_BUCKET}/objects/"


def grants_by_member(deployment: Deployment) -> dict[str, set[tuple[str, str, str]]]:
    """member -> {(resource type of the scope, scope, role)}, for every IAM grant."""
    grants: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for grant in (r for r in deployment.resources if r.type in Types.IAM):
        scope = str(
            grant.inputs.get("bucket")
            or grant.inputs.get("topic")
            or grant.inputs.get("subscription")
            or grant.inputs.get("serviceAccountId")
            or grant.inputs.get("name")
            or grant.inputs.get("project")
        )
        condition = grant.inputs.get("condition", {}).get("expression", "")
        if condition:
            scope += " if " + condition.removeprefix("resource.name.startsWith(").rstrip(")")
        grants[grant.inputs["member"]].add((grant.type.split(":")[1], scope, grant.inputs["role"]))
    return grants


def test_workflow_mode_declares_the_documented_functions_topics_and_workflow(
    workflow_stack: Deployment,
) -> None:
    functions = {
        f.inputs["name"]: f.get("buildConfig.entryPoint")
        for f in workflow_stack.of_type(Types.FUNCTION)
    }
    assert functions == {
        "mlp-dev-process-data": "process_data",
        "mlp-dev-train-model": "train_model",
        "mlp-dev-predict": "predict",
        "mlp-dev-trigger-workflow": "trigger_workflow",
        "mlp-dev-score-data": "score_data",
    }
    topics = {t.inputs["name"] for t in workflow_stack.of_type(Types.TOPIC)}
    assert topics == {
        "mlp-dev-data-uploaded",
        "mlp-dev-model-events",
        "mlp-dev-dead-letter",
        "mlp-dev-score-uploaded",
    }
    assert [w.inputs["name"] for w in workflow_stack.of_type(Types.WORKFLOW)] == [
        "mlp-dev-ml-pipeline"
    ]


def test_events_mode_declares_the_trigger_topics_and_event_functions(
    events_stack: Deployment,
) -> None:
    functions = {
        f.inputs["name"]: f.get("buildConfig.entryPoint")
        for f in events_stack.of_type(Types.FUNCTION)
    }
    assert functions == {
        "mlp-dev-process-data-event": "process_data_event",
        "mlp-dev-train-model-event": "train_model_event",
        "mlp-dev-predict": "predict",
        "mlp-dev-score-data": "score_data",
    }
    topics = {t.inputs["name"] for t in events_stack.of_type(Types.TOPIC)}
    assert topics == {
        "mlp-dev-score-uploaded",
        "mlp-dev-data-processing-trigger",
        "mlp-dev-model-training-trigger",
        "mlp-dev-model-serving-trigger",
        "mlp-dev-model-events",
        "mlp-dev-dead-letter",
    }
    assert events_stack.of_type(Types.WORKFLOW) == []


def test_events_mode_training_smokes_with_the_runtime_predict_serves_with(
    deploy: Callable[..., Deployment],
) -> None:
    """Events mode smokes the candidate inside train_model_event, so it needs predict's
    runtime setting; workflow mode's training does not (predict itself smokes it)."""
    deployment = deploy(orchestration="events", predictRuntime="joblib")
    train = function_named(deployment, "mlp-dev-train-model-event")
    assert train.get("serviceConfig.environmentVariables")["PREDICT_RUNTIME"] == "joblib"
    predict = function_named(deployment, "mlp-dev-predict")
    assert predict.get("serviceConfig.environmentVariables")["PREDICT_RUNTIME"] == "joblib"


def test_every_entry_point_exists_in_the_deployed_main_module() -> None:
    main_source = (REPOSITORY_ROOT / FUNCTION_SOURCE_DIR / "main.py").read_text(encoding="utf-8")
    for mode in ("workflow", "events"):
        for spec in topology.build_topology(mode).functions:
            assert f"def {spec.entry_point}(" in main_source, spec.entry_point


def test_buckets_are_private_versioned_and_bounded(stack: Deployment) -> None:
    buckets = stack.of_type(Types.BUCKET)
    assert len(buckets) == 2
    for bucket in buckets:
        assert bucket.inputs["publicAccessPrevention"] == "enforced"
        assert bucket.inputs["uniformBucketLevelAccess"] is True
        assert bucket.inputs["versioning"] == {"enabled": True}
        conditions = [rule["condition"] for rule in bucket.inputs["lifecycleRules"]]
        assert all(c["withState"] == "ARCHIVED" for c in conditions)
        assert {"daysSinceNoncurrentTime", "numNewerVersions"} <= {k for c in conditions for k in c}
        assert bucket.inputs["labels"] == {"app": "ml-pipeline", "stack": STACK}
    data = next(b for b in buckets if b.inputs["name"] == DATA_BUCKET)
    assert data.inputs["forceDestroy"] is False
    assert data.inputs["location"] == REGION.upper()


def test_bucket_force_destroy_location_and_labels_follow_config(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(forceDestroy=True, bucketLocation="EU", labels={"team": "ml"})
    data = next(b for b in deployment.of_type(Types.BUCKET) if b.inputs["name"] == DATA_BUCKET)
    assert data.inputs["forceDestroy"] is True
    assert data.inputs["location"] == "EU"
    assert data.inputs["labels"]["team"] == "ml"


def test_notification_publishes_raw_finalize_events_as_json(stack: Deployment) -> None:
    notification, scoring = sorted(
        stack.of_type(Types.NOTIFICATION), key=lambda n: n.inputs["objectNamePrefix"]
    )
    assert scoring.inputs == scoring.inputs | {
        "bucket": DATA_BUCKET,
        "payloadFormat": "JSON_API_V1",
        "eventTypes": ["OBJECT_FINALIZE"],
        "objectNamePrefix": "score/",
        "topic": f"projects/{PROJECT}/topics/mlp-dev-score-uploaded",
    }
    expected_topic = (
        "data-uploaded"
        if stack.exports["orchestration"] == "workflow"
        else ("data-processing-trigger")
    )
    assert notification.inputs == notification.inputs | {
        "bucket": DATA_BUCKET,
        "payloadFormat": "JSON_API_V1",
        "eventTypes": ["OBJECT_FINALIZE"],
        "objectNamePrefix": "raw/",
        "topic": f"projects/{PROJECT}/topics/mlp-dev-{expected_topic}",
    }


def test_each_workload_has_its_own_account_and_only_its_roles(workflow_stack: Deployment) -> None:
    member = {
        s: account_member(workflow_stack, s)
        for s in ("proc", "train", "pred", "wftrig", "wf", "evtrig", "build", "score")
    }
    assert len(set(member.values())) == 8
    run = f"projects/{PROJECT}/locations/{REGION}/services/"
    expected = {
        member["proc"]: {
            (
                "storage/bucketIAMMember",
                f'{DATA_BUCKET} if "{OBJECTS}raw/"',
                "roles/storage.objectViewer",
            ),
            (
                "storage/bucketIAMMember",
                f'{DATA_BUCKET} if "{OBJECTS}processed/"',
                "roles/storage.objectUser",
            ),
            (
                "storage/bucketIAMMember",
                f'{DATA_BUCKET} if "{OBJECTS}rejected/"',
                "roles/storage.objectUser",
            ),
        },
        member["train"]: {
            (
                "storage/bucketIAMMember",
                f'{DATA_BUCKET} if "{OBJECTS}processed/"',
                "roles/storage.objectViewer",
            ),
            (
                "storage/bucketIAMMember",
                f'{DATA_BUCKET} if "{OBJECTS}models/"',
                "roles/storage.objectUser",
            ),
        },
        member["pred"]: {
            (
                "storage/bucketIAMMember",
                f'{DATA_BUCKET} if "{OBJECTS}models/"',
                "roles/storage.objectViewer",
            )
        },
        member["wftrig"]: {
            (
                "storage/bucketIAMMember",
                f'{DATA_BUCKET} if "{OBJECTS}runs/"',
                "roles/storage.objectUser",
            ),
            ("projects/iAMMember", PROJECT, "roles/workflows.invoker"),
        },
        member["wf"]: {
            ("projects/iAMMember", PROJECT, "roles/logging.logWriter"),
            ("pubsub/topicIAMMember", "mlp-dev-model-events", "roles/pubsub.publisher"),
            ("cloudrunv2/serviceIamMember", f"{run}mlp-dev-process-data", "roles/run.invoker"),
            ("cloudrunv2/serviceIamMember", f"{run}mlp-dev-train-model", "roles/run.invoker"),
            ("cloudrunv2/serviceIamMember", f"{run}mlp-dev-predict", "roles/run.invoker"),
        },
        member["evtrig"]: {
            ("projects/iAMMember", PROJECT, "roles/eventarc.eventReceiver"),
            ("cloudrunv2/serviceIamMember", f"{run}mlp-dev-trigger-workflow", "roles/run.invoker"),
            ("cloudrunv2/serviceIamMember", f"{run}mlp-dev-score-data", "roles/run.invoker"),
        },
        member["score"]: {
            (
                "storage/bucketIAMMember",
                f'{DATA_BUCKET} if "{OBJECTS}score/"',
                "roles/storage.objectViewer",
            ),
            (
                "storage/bucketIAMMember",
                f'{DATA_BUCKET} if "{OBJECTS}models/"',
                "roles/storage.objectViewer",
            ),
            (
                "storage/bucketIAMMember",
                f'{DATA_BUCKET} if "{OBJECTS}predictions/"',
                "roles/storage.objectUser",
            ),
            ("pubsub/topicIAMMember", "mlp-dev-model-events", "roles/pubsub.publisher"),
        },
        member["build"]: {
            ("projects/iAMMember", PROJECT, "roles/logging.logWriter"),
            ("projects/iAMMember", PROJECT, "roles/artifactregistry.writer"),
            ("storage/bucketIAMMember", f"mlp-dev-src-{PROJECT}", "roles/storage.objectViewer"),
        },
    }
    grants = grants_by_member(workflow_stack)
    for account, roles in expected.items():
        assert grants[account] == roles, account


def test_objects_the_handlers_write_lie_under_their_workload_write_prefixes() -> None:
    from pipeline_core import contract
    from pipeline_core.events import ObjectRef

    upload = ObjectRef(DATA_BUCKET, "raw/iris.csv", 17)
    scoring_upload = ObjectRef(DATA_BUCKET, "score/new.csv", 18)
    written = {
        "processing": [
            contract.part_object(contract.processed_data(upload), 0),
            contract.part_object(contract.deduplicated_data(upload), 0),
            contract.digest_spill_prefix(upload),
            contract.stats_object(upload),
            contract.rejection_object(upload),
            contract.processing_lease_object(upload),
        ],
        "training": [
            contract.artifact_object("v1"),
            contract.manifest_object("v1"),
            contract.lineage_object(upload),
            contract.training_lease_object(upload),
            contract.CHAMPION_OBJECT,
        ],
        "workflow_trigger": [contract.run_marker_object(upload)],
        "scoring": [
            contract.predictions_object(scoring_upload),
            contract.predictions_csv_object(scoring_upload),
            contract.scoring_summary_object(scoring_upload),
            contract.scoring_lease_object(scoring_upload),
        ],
    }
    for workload, objects in written.items():
        writable = [
            prefix
            for role, prefix in DATA_BUCKET_ACCESS[workload]
            if role == "roles/storage.objectUser"
        ]
        for name in objects:
            assert any(name.startswith(prefix) for prefix in writable), (workload, name)
    readable = {
        workload: [prefix for _, prefix in access]
        for workload, access in DATA_BUCKET_ACCESS.items()
    }
    assert any(upload.name.startswith(p) for p in readable["processing"])
    assert not any(upload.name.startswith(p) for p in readable["prediction"])
    assert any(scoring_upload.name.startswith(p) for p in readable["scoring"])
    assert not any(upload.name.startswith(p) for p in readable["scoring"])
    assert contract.CHAMPION_OBJECT.startswith(tuple(readable["scoring"]))


def test_events_mode_accounts_publish_only_to_their_topics(events_stack: Deployment) -> None:
    grants = grants_by_member(events_stack)
    published = {
        suffix: {
            scope
            for kind, scope, role in grants[account_member(events_stack, suffix)]
            if role == "roles/pubsub.publisher"
        }
        for suffix in ("proc", "train", "pred", "score")
    }
    assert published == {
        "proc": {"mlp-dev-model-training-trigger", "mlp-dev-model-events"},
        "train": {"mlp-dev-model-serving-trigger", "mlp-dev-model-events"},
        "pred": set(),
        "score": {"mlp-dev-model-events"},
    }
    suffixes = {
        a.inputs["accountId"].rsplit("-", 1)[1] for a in events_stack.of_type(Types.ACCOUNT)
    }
    assert suffixes == {"proc", "train", "pred", "evtrig", "build", "score"}


def test_functions_take_sizing_and_environment_from_config(
    deploy: Callable[..., Deployment],
) -> None:
    values = {
        "functions": {
            "train_model": {
                "memory": "4Gi",
                "timeoutSeconds": 900,
                "minInstances": 1,
                "maxInstances": 7,
            }
        },
        "targetColumn": "species",
        "modelType": "gradient_boosting",
    }
    deployment = deploy(**values)
    train = function_named(deployment, "mlp-dev-train-model")
    assert train.get("serviceConfig.availableMemory") == "4Gi"
    assert train.get("serviceConfig.timeoutSeconds") == 900
    assert train.get("serviceConfig.minInstanceCount") == 1
    assert train.get("serviceConfig.maxInstanceCount") == 7
    config = StackConfig.from_values(project=PROJECT, region=REGION, stack=STACK, values=values)
    plan = topology.build_topology("workflow")
    for spec in plan.functions:
        function = function_named(
            deployment, topology.resource_name(config, spec.key.replace("_", "-"))
        )
        expected = topology.function_environment(
            config,
            spec,
            bucket=DATA_BUCKET,
            topic_names={t.key: topology.resource_name(config, t.suffix) for t in plan.topics},
            workflow_name=topology.workflow_name(config),
        )
        assert function.get("serviceConfig.environmentVariables") == expected
        assert function.get("buildConfig.runtime") == "python311"
    # Each setting reaches only the function that reads it.
    environments = {
        spec.key: function_named(
            deployment, topology.resource_name(config, spec.key.replace("_", "-"))
        ).get("serviceConfig.environmentVariables")
        for spec in plan.functions
    }
    assert environments["train_model"]["MAX_TRAINING_ROWS"] == str(config.max_training_rows)
    assert environments["predict"]["PREDICT_RUNTIME"] == config.predict_runtime
    assert "PREDICT_RUNTIME" not in environments["train_model"]
    assert "MAX_TRAINING_ROWS" not in environments["predict"]
    # The allocator settings reach the functions that stream a file, and only them.
    streaming = {"process_data", "score_data"}
    for key, environment in environments.items():
        allocator = {name: environment.get(name) for name in STREAMING_ALLOCATOR}
        if key in streaming:
            assert allocator == {
                "MALLOC_ARENA_MAX": "2",
                "MALLOC_MMAP_THRESHOLD_": "33554432",
                "MALLOC_TRIM_THRESHOLD_": "268435456",
                "ARROW_DEFAULT_MEMORY_POOL": "system",
            }
        else:
            assert set(allocator.values()) == {None}, key


def test_functions_run_the_content_addressed_source_archive(stack: Deployment) -> None:
    archive = package_source(REPOSITORY_ROOT / FUNCTION_SOURCE_DIR)
    (source_object,) = stack.of_type(Types.BUCKET_OBJECT)
    assert source_object.inputs["name"] == f"functions/source-{archive.sha256}.zip"
    assert stack.exports["source_sha256"] == archive.sha256
    for function in stack.of_type(Types.FUNCTION):
        assert function.get("buildConfig.source.storageSource") == {
            "bucket": f"mlp-dev-src-{PROJECT}",
            "object": source_object.inputs["name"],
        }


def test_workflow_runs_the_repository_yaml_with_stage_urls(workflow_stack: Deployment) -> None:
    (workflow,) = workflow_stack.of_type(Types.WORKFLOW)
    source = Path(REPOSITORY_ROOT / "workflow_defs" / "ml_pipeline.yaml").read_text(
        encoding="utf-8"
    )
    assert workflow.inputs["sourceContents"] == source
    assert workflow.inputs["serviceAccount"] == account_member(workflow_stack, "wf").removeprefix(
        "serviceAccount:"
    )
    urls = {
        f.inputs["name"]: f.outputs["serviceConfig"]["uri"]
        for f in workflow_stack.of_type(Types.FUNCTION)
    }
    assert workflow.inputs["userEnvVars"] == {
        "PROCESS_DATA_URL": urls["mlp-dev-process-data"],
        "TRAIN_MODEL_URL": urls["mlp-dev-train-model"],
        "PREDICT_URL": urls["mlp-dev-predict"],
        "MODEL_EVENTS_TOPIC": "mlp-dev-model-events",
    }
    assert workflow.inputs["callLogLevel"] == "LOG_ERRORS_ONLY"
    assert workflow.inputs["region"] == REGION


def test_prediction_is_private_unless_configured(
    stack: Deployment, deploy: Callable[..., Deployment]
) -> None:
    members = {g.inputs["member"] for g in stack.resources if g.type in Types.IAM}
    assert not members & {"allUsers", "allAuthenticatedUsers"}
    public = deploy(publicPredict=True, predictInvokers=["user:alice@example.com"])
    predict_service = f"projects/{PROJECT}/locations/{REGION}/services/mlp-dev-predict"
    open_grants = [
        g
        for g in public.resources
        if g.type in Types.IAM and g.inputs["member"] in ("allUsers", "user:alice@example.com")
    ]
    assert {(g.inputs["member"], g.inputs["name"], g.inputs["role"]) for g in open_grants} == {
        ("allUsers", predict_service, "roles/run.invoker"),
        ("user:alice@example.com", predict_service, "roles/run.invoker"),
    }


def test_outputs_name_what_a_user_needs(
    workflow_stack: Deployment, events_stack: Deployment
) -> None:
    exports = workflow_stack.exports
    assert exports["data_bucket"] == DATA_BUCKET
    assert exports["upload_prefix"] == "raw/"
    assert exports["upload_uri"] == f"gs://{DATA_BUCKET}/raw/"
    assert (
        exports["predict_url"]
        == function_named(workflow_stack, "mlp-dev-predict").outputs["serviceConfig"]["uri"]
    )
    assert exports["workflow_name"] == "mlp-dev-ml-pipeline"
    assert exports["topics"] == {
        "data_uploaded": "mlp-dev-data-uploaded",
        "model_events": "mlp-dev-model-events",
        "dead_letter": "mlp-dev-dead-letter",
        "score_uploaded": "mlp-dev-score-uploaded",
    }
    assert exports["scoring_prefix"] == "score/"
    assert exports["scoring_uri"] == f"gs://{DATA_BUCKET}/score/"
    assert exports["predictions_prefix"] == "predictions/"
    assert (
        exports["service_accounts"]["prediction"]
        == f"mlp-dev-pred@{PROJECT}.iam.gserviceaccount.com"
    )
    assert set(exports["service_accounts"]) == set(topology.WORKLOADS)
    assert events_stack.exports["workflow_name"] is None


def test_every_resource_passes_the_guardrail_policies(stack: Deployment) -> None:
    violations = [
        (r.name, v.message) for r in stack.resources for v in check_resource(r.type, r.inputs)
    ]
    assert violations == []


def test_public_predict_passes_guardrails_only_when_allowed(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(publicPredict=True)
    strict = [r.name for r in deployment.resources if check_resource(r.type, r.inputs)]
    assert strict == ["mlp-dev-pipeline-predict-invoker-public"]
    allowed = [
        r.name
        for r in deployment.resources
        if check_resource(r.type, r.inputs, allow_public_invokers=True)
    ]
    assert allowed == []


def test_deployer_comes_from_config_or_credentials(
    workflow_stack: Deployment, deploy: Callable[..., Deployment]
) -> None:
    def actors(deployment: Deployment) -> set[str]:
        return {
            g.inputs["member"]
            for g in deployment.of_type(Types.ACCOUNT_IAM)
            if g.inputs["role"] == "roles/iam.serviceAccountUser"
        }

    assert actors(workflow_stack) == {DEPLOYER}
    assert (
        "gcp:organizations/getClientOpenIdUserInfo:getClientOpenIdUserInfo"
        in workflow_stack.invokes
    )
    configured = deploy(deployer="serviceAccount:ci@proj.iam.gserviceaccount.com")
    assert actors(configured) == {"serviceAccount:ci@proj.iam.gserviceaccount.com"}
    assert (
        "gcp:organizations/getClientOpenIdUserInfo:getClientOpenIdUserInfo"
        not in configured.invokes
    )


def test_config_errors_stop_the_program(deploy: Callable[..., Deployment]) -> None:
    from components.config import ConfigError

    with pytest.raises(ConfigError, match="ml-pipeline:orchestration"):
        deploy(orchestration="choreography")


def test_event_triggers_name_their_topic_region_account_and_retry(
    events_stack: Deployment,
) -> None:
    trigger_email = account_member(events_stack, "evtrig").removeprefix("serviceAccount:")
    triggers = {
        f.inputs["name"]: f.inputs["eventTrigger"]
        for f in events_stack.of_type(Types.FUNCTION)
        if "eventTrigger" in f.inputs
    }
    expected_topics = {
        "mlp-dev-process-data-event": "mlp-dev-data-processing-trigger",
        "mlp-dev-train-model-event": "mlp-dev-model-training-trigger",
    }
    assert set(triggers) == set(expected_topics)
    for function, trigger in triggers.items():
        assert trigger == {
            "eventType": "google.cloud.pubsub.topic.v1.messagePublished",
            "pubsubTopic": f"projects/{PROJECT}/topics/{expected_topics[function]}",
            "triggerRegion": REGION,
            "serviceAccountEmail": trigger_email,
            "retryPolicy": "RETRY_POLICY_RETRY",
        }
