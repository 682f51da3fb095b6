"""Guardrail policies, tested directly on resource properties."""

from __future__ import annotations

from collections.abc import Mapping

from policy.guardrails import BUCKET, FUNCTION, check_resource

RUN_INVOKER = "gcp:cloudrunv2/serviceIamMember:ServiceIamMember"
GOOD_FUNCTION = {
    "serviceConfig": {"serviceAccountEmail": "run@p.iam.gserviceaccount.com"},
    "buildConfig": {"serviceAccount": "projects/p/serviceAccounts/build@p.iam.gserviceaccount.com"},
}


def policies(type_: str, props: Mapping[str, object], **options: bool) -> list[str]:
    return [violation.policy for violation in check_resource(type_, props, **options)]


def test_private_bucket_passes_and_each_gap_is_reported() -> None:
    private = {"publicAccessPrevention": "enforced", "uniformBucketLevelAccess": True}
    assert policies(BUCKET, private) == []
    assert policies(BUCKET, {**private, "publicAccessPrevention": "inherited"}) == [
        "bucket-public-access-prevention"
    ]
    assert policies(BUCKET, {"publicAccessPrevention": "enforced"}) == ["bucket-uniform-access"]


def test_public_invokers_need_explicit_permission() -> None:
    grant = {"role": "roles/run.invoker", "member": "allUsers"}
    assert policies(RUN_INVOKER, grant) == ["no-public-invokers"]
    assert policies(RUN_INVOKER, grant, allow_public_invokers=True) == []
    assert policies(RUN_INVOKER, {**grant, "member": "user:a@example.com"}) == []
    binding = "gcp:cloudfunctionsv2/functionIamBinding:FunctionIamBinding"
    assert policies(binding, {"members": ["user:a@b.c", "allAuthenticatedUsers"]}) == [
        "no-public-invokers"
    ]


def test_functions_must_not_run_or_build_as_the_compute_default_account() -> None:
    assert policies(FUNCTION, GOOD_FUNCTION) == []
    default = "123-compute@developer.gserviceaccount.com"
    runtime_default = {**GOOD_FUNCTION, "serviceConfig": {"serviceAccountEmail": default}}
    assert policies(FUNCTION, runtime_default) == ["no-default-compute-account"]
    assert policies(FUNCTION, {"serviceConfig": {}}) == ["no-default-compute-account"] * 2
    trigger = {**GOOD_FUNCTION, "eventTrigger": {"serviceAccountEmail": default}}
    assert policies(FUNCTION, trigger) == ["no-default-compute-account"]


def test_other_resources_are_not_judged() -> None:
    assert policies("gcp:pubsub/topic:Topic", {"name": "t"}) == []
