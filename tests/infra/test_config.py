"""Stack configuration: defaults, and every invalid value names its key and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from components.config import (
    ConfigError,
    StackConfig,
    did_you_mean,
    hyperparameter_names,
    load_stack_config,
)
from pipeline_core import contract
from tests.infra.harness import GcpMocks, config_values


def build(**values: Any) -> StackConfig:
    return StackConfig.from_values(
        project="p-123", region="us-central1", stack="dev", values=values
    )


def test_defaults_match_the_documented_ones() -> None:
    config = build()
    assert config.orchestration == "workflow"
    assert config.target_column == "target"
    assert config.feature_columns == ()
    assert config.model_type == "random_forest"
    assert config.public_predict is False
    assert config.force_destroy is False
    assert config.workflow_deletion_protection is True
    assert config.dead_letter_max_attempts == 5
    assert config.deployer is None
    assert config.bucket_location == "US-CENTRAL1"
    assert config.trigger_region == "us-central1"
    assert config.name_prefix == "mlp-dev"
    assert config.max_training_rows == 20_000
    assert config.predict_runtime == "onnx"


@pytest.mark.parametrize(
    ("values", "key", "fix"),
    [
        ({"orchestration": "saga"}, "ml-pipeline:orchestration", "workflow, events"),
        ({"modelType": "svm"}, "ml-pipeline:modelType", "random_forest"),
        ({"targetColumn": " "}, "ml-pipeline:targetColumn", "set a column name"),
        ({"featureColumns": ["a", "a"]}, "ml-pipeline:featureColumns", "list each column once"),
        ({"featureColumns": ["target"]}, "ml-pipeline:featureColumns", "remove the target"),
        ({"promotion": {"metric": "auc"}}, "ml-pipeline:promotion.metric", "accuracy"),
        ({"promotion": {"minimum": 2}}, "ml-pipeline:promotion.minimum", "from 0 to 1"),
        (
            {"functions": {"predict": {"memory": "3Gi"}}},
            "ml-pipeline:functions.predict.memory",
            "1Gi",
        ),
        (
            {"functions": {"predict": {"minInstances": 9, "maxInstances": 2}}},
            "ml-pipeline:functions.predict.minInstances",
            "raise maxInstances",
        ),
        ({"functions": {"nope": {}}}, "ml-pipeline:functions.nope", "process_data"),
        ({"predictMaxBatch": "many"}, "ml-pipeline:predictMaxBatch", "use 5..100000"),
        ({"predictMaxBatch": 4}, "ml-pipeline:predictMaxBatch", "from 5 to"),
        ({"publicPredict": "yes"}, "ml-pipeline:publicPredict", "true or false"),
        ({"predictInvokers": ["allUsers"]}, "ml-pipeline:predictInvokers", "publicPredict: true"),
        ({"predictInvokers": ["alice"]}, "ml-pipeline:predictInvokers", "user:EMAIL"),
        ({"deployer": "allUsers"}, "ml-pipeline:deployer", "serviceAccount:EMAIL"),
        ({"deadLetterMaxAttempts": 3}, "ml-pipeline:deadLetterMaxAttempts", "from 5 to 100"),
        ({"workflowCallLogLevel": "LOUD"}, "ml-pipeline:workflowCallLogLevel", "LOG_NONE"),
        ({"bucketLocation": "europe-west4"}, "ml-pipeline:bucketLocation", "multi-region"),
        ({"namePrefix": "Bad_Prefix"}, "ml-pipeline:namePrefix", "mlp-dev"),
        ({"labels": {"Team": "ml"}}, "ml-pipeline:labels.Team", "lowercase"),
        ({"labels": {"team": "ML!"}}, "ml-pipeline:labels.team", "quote it"),
        ({"colour": "blue"}, "ml-pipeline:colour", "remove it"),
        ({"targetColumn": 3}, "ml-pipeline:targetColumn", "quote it"),
        ({"featureColumns": "a,b"}, "ml-pipeline:featureColumns", "YAML list"),
        ({"hyperparameters": [1]}, "ml-pipeline:hyperparameters", "YAML map"),
        (
            {"hyperparameters": {"n_estimator": 10}},
            "ml-pipeline:hyperparameters.n_estimator",
            "n_estimators",
        ),
        (
            {"modelType": "logistic_regression", "hyperparameters": {"n_estimators": 10}},
            "ml-pipeline:hyperparameters.n_estimators",
            "max_iter",
        ),
        ({"promotion": {"threshold": 1}}, "ml-pipeline:promotion.threshold", "tolerance"),
        ({"promotion": {"tolerance": -0.1}}, "ml-pipeline:promotion.tolerance", "from 0 to 1"),
        ({"minRows": 1}, "ml-pipeline:minRows", "from 2 to"),
        ({"maxTrainingRows": 99}, "ml-pipeline:maxTrainingRows", "from 100 to 100000000"),
        ({"maxTrainingRows": "lots"}, "ml-pipeline:maxTrainingRows", "use 100..100000000"),
        ({"predictRuntime": "tensorrt"}, "ml-pipeline:predictRuntime", "onnx"),
        ({"modelRefreshSeconds": 7200}, "ml-pipeline:modelRefreshSeconds", "from 0 to 3600"),
        ({"functions": {"predict": 512}}, "ml-pipeline:functions.predict", "set memory"),
        (
            {"functions": {"predict": {"cpu": 2}}},
            "ml-pipeline:functions.predict.cpu",
            "maxInstances",
        ),
        (
            {"functions": {"predict": {"timeoutSeconds": 0}}},
            "ml-pipeline:functions.predict.timeoutSeconds",
            "from 1 to 3600",
        ),
        ({"predictInvokers": "user:a@b.c"}, "ml-pipeline:predictInvokers", "YAML list"),
        (
            {"workflowDeletionProtection": "no"},
            "ml-pipeline:workflowDeletionProtection",
            "true or false",
        ),
        ({"forceDestroy": 1}, "ml-pipeline:forceDestroy", "true or false"),
        ({"labels": ["team"]}, "ml-pipeline:labels", "YAML map"),
        ({"monitoring": "on"}, "ml-pipeline:monitoring", "YAML map"),
        ({"monitoring": {"alerts": True}}, "ml-pipeline:monitoring.alerts", "deadLetterAlert"),
        ({"monitoring": {"enabled": "maybe"}}, "ml-pipeline:monitoring.enabled", "true or false"),
        (
            {"monitoring": {"dashboard": 1}},
            "ml-pipeline:monitoring.dashboard",
            "true or false",
        ),
        (
            {"monitoring": {"notificationEmails": "a@b.co"}},
            "ml-pipeline:monitoring.notificationEmails",
            "YAML list",
        ),
        (
            {"monitoring": {"notificationEmails": ["oncall"]}},
            "ml-pipeline:monitoring.notificationEmails",
            "name@domain",
        ),
        (
            {"monitoring": {"notificationEmails": ["a@b.co", "a@b.co"]}},
            "ml-pipeline:monitoring.notificationEmails",
            "each address once",
        ),
        (
            {"monitoring": {"notificationChannels": ["email-channel"]}},
            "ml-pipeline:monitoring.notificationChannels",
            "projects/PROJECT/notificationChannels/ID",
        ),
        (
            {
                "monitoring": {
                    "notificationChannels": ["7", "projects/p-123/notificationChannels/7"]
                }
            },
            "ml-pipeline:monitoring.notificationChannels",
            "each channel once",
        ),
        (
            {"monitoring": {"predict5xxRatio": 0}},
            "ml-pipeline:monitoring.predict5xxRatio",
            "above 0 and below 1",
        ),
        (
            {"monitoring": {"predict5xxRatio": 1}},
            "ml-pipeline:monitoring.predict5xxRatio",
            "above 0 and below 1",
        ),
        (
            {"monitoring": {"predict5xxRatio": "high"}},
            "ml-pipeline:monitoring.predict5xxRatio",
            "from 0 to 1",
        ),
        (
            {"monitoring": {"predictLatencyP95Ms": 0}},
            "ml-pipeline:monitoring.predictLatencyP95Ms",
            "from 1 to 3600000",
        ),
        (
            {"monitoring": {"predictLatencyP95Ms": 60000}},
            "ml-pipeline:monitoring.predictLatencyP95Ms",
            "raise predict's timeoutSeconds",
        ),
        (
            {"monitoring": {"alertDurationSeconds": 90}},
            "ml-pipeline:monitoring.alertDurationSeconds",
            "multiple of 60",
        ),
        (
            {"monitoring": {"alertDurationSeconds": 90000}},
            "ml-pipeline:monitoring.alertDurationSeconds",
            "from 0 to 86400",
        ),
        (
            {"monitoring": {"errorLogNotifyEverySeconds": 60}},
            "ml-pipeline:monitoring.errorLogNotifyEverySeconds",
            "from 300 to 86400",
        ),
        # A misspelt key gets the key it resembles instead of the whole list.
        ({"modeltype": "svm"}, "ml-pipeline:modeltype", "did you mean 'modelType'?"),
        ({"minrow": 30}, "ml-pipeline:minrow", "did you mean 'minRows'?"),
        ({"promotion": {"minimun": 0.5}}, "ml-pipeline:promotion.minimun", "mean 'minimum'?"),
        ({"functions": {"predcit": {}}}, "ml-pipeline:functions.predcit", "mean 'predict'?"),
        (
            {"functions": {"predict": {"memroy": "1Gi"}}},
            "ml-pipeline:functions.predict.memroy",
            "did you mean 'memory'? Otherwise remove it",
        ),
        (
            {"hyperparameters": {"max_dept": 3}},
            "ml-pipeline:hyperparameters.max_dept",
            "did you mean 'max_depth'?",
        ),
        (
            {"modelType": "logistic_regression", "hyperparameters": {"maxiter": 50}},
            "ml-pipeline:hyperparameters.maxiter",
            "did you mean 'max_iter'?",
        ),
    ],
)
def test_invalid_values_name_the_key_and_the_fix(
    values: dict[str, Any], key: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        build(**values)
    assert raised.value.key == key
    assert fix in str(raised.value)


def test_a_key_like_none_of_the_known_ones_gets_the_list_of_them() -> None:
    with pytest.raises(ConfigError) as raised:
        build(colour="blue")
    assert "remove it or use one of: bucketLocation, deadLetterMaxAttempts," in str(raised.value)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("n_estimator", "n_estimators"),
        ("MODELTYPE", "modelType"),  # case is ignored, the suggestion keeps its own
        ("orchestrations", "orchestration"),
        ("zzz", None),
        ("", None),
    ],
)
def test_did_you_mean_picks_the_closest_option_or_none(word: str, expected: str | None) -> None:
    options = ["n_estimators", "max_depth", "modelType", "orchestration", "minRows"]
    assert did_you_mean(word, options) == expected


def test_monitoring_defaults_and_the_latency_check_follow_predicts_timeout() -> None:
    monitoring = build().monitoring
    assert monitoring.enabled and monitoring.alerts and monitoring.log_metrics
    assert monitoring.dashboard
    assert (monitoring.predict_5xx_ratio, monitoring.predict_latency_p95_ms) == (0.05, 2000)
    assert monitoring.notification_emails == monitoring.notification_channels == ()
    # A longer predict timeout admits a higher threshold; a disabled alert is not checked.
    slow = build(
        functions={"predict": {"timeoutSeconds": 120}},
        monitoring={"predictLatencyP95Ms": 90000, "notificationChannels": ["12"]},
    ).monitoring
    assert slow.predict_latency_p95_ms == 90000
    assert slow.notification_channels == ("projects/p-123/notificationChannels/12",)
    unchecked = build(monitoring={"predictLatencyAlert": False, "predictLatencyP95Ms": 90000})
    assert not unchecked.monitoring.predict_latency_alert
    assert not build(monitoring={"enabled": False}).monitoring.alerts


def test_project_and_region_are_required() -> None:
    with pytest.raises(ConfigError, match=r"gcp:project.*pulumi config set gcp:project"):
        StackConfig.from_values(project=None, region="us-central1", stack="dev", values={})
    with pytest.raises(ConfigError, match=r"gcp:region.*pulumi config set gcp:region"):
        StackConfig.from_values(project="p", region="", stack="dev", values={})


@pytest.mark.parametrize("region", ["us", "EU", "global", "US-CENTRAL1", "us-central"])
def test_the_region_is_one_single_region(region: str) -> None:
    """Functions, the workflow and the Eventarc Pub/Sub triggers (single regions only,
    pitfall 4) all live in gcp:region; a multi-region goes in bucketLocation."""
    with pytest.raises(ConfigError, match=r"gcp:region.*not a single region.*bucketLocation"):
        StackConfig.from_values(project="p", region=region, stack="dev", values={})


@pytest.mark.parametrize("region", ["us-central1", "europe-west4", "northamerica-northeast1"])
def test_single_regions_are_accepted_and_carry_the_triggers(region: str) -> None:
    config = StackConfig.from_values(
        project="p", region=region, stack="dev", values={"bucketLocation": "US"}
    )
    assert config.trigger_region == region


def test_pulumi_config_reads_scalars_as_text_and_structures_as_json() -> None:
    import pulumi

    pulumi.runtime.set_mocks(GcpMocks(), project="ml-pipeline", stack="dev")
    pulumi.runtime.set_all_config(
        config_values(
            orchestration="events",
            namePrefix="team-a",
            publicPredict=True,
            deadLetterMaxAttempts="9",
            labels={"team": "ml"},
            featureColumns=["x", "y"],
            monitoring={"enabled": False},
        )
    )
    config = load_stack_config()
    assert config.orchestration == "events"
    assert config.name_prefix == "team-a"
    assert config.public_predict is True
    assert config.dead_letter_max_attempts == 9
    assert config.labels == {"team": "ml"}
    assert config.feature_columns == ("x", "y")
    assert config.monitoring.enabled is False


def test_hyperparameter_names_are_those_training_accepts() -> None:
    from pipeline_core.errors import TrainingFailedError
    from pipeline_core.training import build_estimator

    for model_type in contract.MODEL_TYPES:
        names = hyperparameter_names(model_type)
        config = build(modelType=model_type, hyperparameters=dict.fromkeys(names))
        assert set(config.hyperparameters) == names
        with pytest.raises(TrainingFailedError, match="unknown hyperparameter"):
            build_estimator(model_type, {"not_a_parameter": 1})
        estimator = build_estimator(model_type, {})
        classifier = (
            estimator.named_steps["classifier"]
            if model_type == "logistic_regression"
            else estimator
        )
        assert frozenset(classifier.get_params()) == names | contract.FIXED_HYPERPARAMETERS
        with pytest.raises(TrainingFailedError, match="'random_state' cannot be set"):
            build_estimator(model_type, {"random_state": 1})


def test_the_seed_is_not_configurable() -> None:
    with pytest.raises(ConfigError) as error:
        build(hyperparameters={"random_state": 7})
    assert error.value.key == "ml-pipeline:hyperparameters.random_state"
    assert "reproducible" in str(error.value)


def test_predict_takes_every_smoke_row_a_candidate_sends() -> None:
    # Training sends up to contract.SMOKE_ROWS held-out rows to predict as its smoke test.
    assert build(predictMaxBatch=contract.SMOKE_ROWS).predict_max_batch == contract.SMOKE_ROWS
    with pytest.raises(ConfigError) as error:
        build(predictMaxBatch=contract.SMOKE_ROWS - 1)
    assert error.value.key == "ml-pipeline:predictMaxBatch"
