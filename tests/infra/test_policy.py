"""Guardrail policies, tested directly on resource properties, and the CrossGuard pack
that wraps them, loaded in its own virtualenv."""

from __future__ import annotations

import inspect
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path

import yaml

from policy import guardrails
from policy.guardrails import BUCKET, FUNCTION, GUARDRAILS, check_resource
from tests.infra.test_dependencies import LOCK, pins

ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "ml-pipeline-guardrails"

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


def test_every_policy_function_is_a_guardrail_of_the_pack() -> None:
    """A check written in guardrails.py but left out of GUARDRAILS would be tested here
    and never run by `pulumi preview --policy-pack policy`."""
    checks = {
        function
        for name, function in inspect.getmembers(guardrails, inspect.isfunction)
        if function.__module__ == guardrails.__name__
        and not name.startswith("_")
        and inspect.signature(function).return_annotation == "list[Violation]"
        and name != "check_resource"
    }
    assert checks == {guardrail.check for guardrail in GUARDRAILS}
    assert len({guardrail.name for guardrail in GUARDRAILS}) == len(GUARDRAILS)


# Runs policy/__main__.py in the pack's own virtualenv with PolicyPack replaced by a
# recorder (the real one serves Pulumi's gRPC protocol until killed), then runs every
# recorded policy the way the engine does, on a public bucket and a public invoker.
PACK_PROBE = """
import json, runpy, sys, types
import pulumi, pulumi_policy
recorded = {}
pulumi_policy.PolicyPack = lambda **pack: recorded.update(pack)
runpy.run_path(sys.argv[1], run_name="__main__")

def run(resource_type, props):
    reports = {}
    for policy in recorded["policies"]:
        report = lambda message, urn: reports.setdefault(policy.name, []).append(message)
        policy.validate(types.SimpleNamespace(resource_type=resource_type, props=props), report)
    return reports

bucket = {"publicAccessPrevention": "inherited", "uniformBucketLevelAccess": True}
public_bucket = run(sys.argv[2], bucket)
grant = {"role": "roles/run.invoker", "member": "allUsers"}
public_invoker = run(sys.argv[3], grant)
pulumi.runtime.set_all_config({"ml-pipeline:publicPredict": "true"})
allowed_invoker = run(sys.argv[3], grant)
print(json.dumps({
    "name": recorded["name"],
    "enforcement": recorded["enforcement_level"].value,
    "policies": [[p.name, p.description, p.enforcement_level.value] for p in recorded["policies"]],
    "public_bucket": public_bucket,
    "public_invoker": public_invoker,
    "allowed_invoker": allowed_invoker,
}))
"""


def test_the_pack_loads_in_its_own_virtualenv_and_wraps_every_guardrail() -> None:
    """Builds policy/.venv once (`make policy-venv`, about half a minute on a fresh
    clone, then a no-op) and loads the real pulumi_policy there."""
    built = subprocess.run(
        ["make", "-s", "policy-venv"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stdout + built.stderr
    probed = subprocess.run(
        [
            str(ROOT / "policy/.venv/bin/python"),
            "-c",
            PACK_PROBE,
            str(ROOT / "policy"),
            BUCKET,
            RUN_INVOKER,
        ],
        cwd=ROOT / "policy",
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert probed.returncode == 0, probed.stderr
    pack = json.loads(probed.stdout)
    assert pack["name"] == PACK_NAME
    assert pack["enforcement"] == "mandatory"
    assert pack["policies"] == [[g.name, g.description, "mandatory"] for g in GUARDRAILS]
    assert pack["public_bucket"] == {
        "bucket-is-private": [
            "bucket-public-access-prevention: bucket must set public_access_prevention='enforced'"
        ]
    }
    assert list(pack["public_invoker"]) == ["no-public-invokers"]
    assert pack["allowed_invoker"] == {}


def test_the_pack_is_a_python_pack_with_its_own_locked_virtualenv() -> None:
    project = yaml.safe_load((ROOT / "policy/PulumiPolicy.yaml").read_text(encoding="utf-8"))
    assert project["runtime"]["name"] == "python"
    assert project["runtime"]["options"] == {"toolchain": "pip", "virtualenv": ".venv"}
    assert "POLICY_VENV := policy/.venv" in (ROOT / "Makefile").read_text(encoding="utf-8")
    requirements = pins(ROOT / "policy/requirements.txt")
    policy_lock = pins(ROOT / "policy/constraints.txt")
    assert set(requirements) == {"pulumi-policy", "pulumi"}
    for name, version in requirements.items():
        assert policy_lock[name] == version, name
    # The pack reads the stack config with the program's own Pulumi SDK...
    assert requirements["pulumi"] == LOCK["pulumi"]
    # ...but its protobuf is the one pulumi-policy pins, which is why it has its own venv.
    assert policy_lock["protobuf"].split(".")[0] != LOCK["protobuf"].split(".")[0]
