"""Guardrail policies as plain functions over a resource's type and camelCase inputs.

The CrossGuard pack in this folder (``__main__.py``, through ``pack.py``) wraps each entry
of ``GUARDRAILS`` as one mandatory resource validation policy: a CrossGuard validation
receives the same type token and properties. The functions stay free of
``pulumi_policy``, whose protobuf pin the program's environment cannot share, so that
they are tested directly and run over a mock deployment of the whole program.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PUBLIC_MEMBERS = frozenset({"allUsers", "allAuthenticatedUsers"})
_DEFAULT_COMPUTE_SUFFIX = "-compute@developer.gserviceaccount.com"

BUCKET = "gcp:storage/bucket:Bucket"
FUNCTION = "gcp:cloudfunctionsv2/function:Function"
# Every resource type that can grant who may invoke a function or its Cloud Run service.
INVOKER_GRANTS = frozenset(
    {
        "gcp:cloudrunv2/serviceIamMember:ServiceIamMember",
        "gcp:cloudrunv2/serviceIamBinding:ServiceIamBinding",
        "gcp:cloudrun/iamMember:IamMember",
        "gcp:cloudrun/iamBinding:IamBinding",
        "gcp:cloudfunctionsv2/functionIamMember:FunctionIamMember",
        "gcp:cloudfunctionsv2/functionIamBinding:FunctionIamBinding",
    }
)


@dataclass(frozen=True)
class Violation:
    policy: str
    message: str


@dataclass(frozen=True)
class Options:
    """What the stack allows on purpose (``ml-pipeline:publicPredict``)."""

    allow_public_invokers: bool = False


def bucket_is_private(props: Mapping[str, Any], options: Options) -> list[Violation]:
    violations = []
    if props.get("publicAccessPrevention") != "enforced":
        violations.append(
            Violation(
                "bucket-public-access-prevention",
                "bucket must set public_access_prevention='enforced'",
            )
        )
    if props.get("uniformBucketLevelAccess") is not True:
        violations.append(
            Violation(
                "bucket-uniform-access",
                "bucket must set uniform_bucket_level_access=True (no per-object ACLs)",
            )
        )
    return violations


def invokers_are_private(props: Mapping[str, Any], options: Options) -> list[Violation]:
    members: Iterable[Any] = props.get("members") or [props.get("member")]
    public = sorted(str(m) for m in members if m in PUBLIC_MEMBERS)
    if public and not options.allow_public_invokers:
        return [
            Violation(
                "no-public-invokers",
                f"grants {props.get('role')} to {', '.join(public)}; only the prediction "
                "endpoint may be public, and only with ml-pipeline:publicPredict=true",
            )
        ]
    return []


def function_avoids_default_account(props: Mapping[str, Any], options: Options) -> list[Violation]:
    identities = {
        "runtime (serviceConfig.serviceAccountEmail)": _nested(
            props, "serviceConfig", "serviceAccountEmail"
        ),
        "build (buildConfig.serviceAccount)": _nested(props, "buildConfig", "serviceAccount"),
    }
    if props.get("eventTrigger"):
        identities["trigger (eventTrigger.serviceAccountEmail)"] = _nested(
            props, "eventTrigger", "serviceAccountEmail"
        )
    return [
        Violation(
            "no-default-compute-account",
            f"{role} is {account or 'unset'}: set a dedicated service "
            "account, the Compute default one is Editor on the project",
        )
        for role, account in identities.items()
        if not account or str(account).endswith(_DEFAULT_COMPUTE_SUFFIX)
    ]


@dataclass(frozen=True)
class Guardrail:
    """One policy of the pack: its name, what it demands, where, and the check."""

    name: str
    description: str
    resource_types: frozenset[str]
    check: Callable[[Mapping[str, Any], Options], list[Violation]]


GUARDRAILS: tuple[Guardrail, ...] = (
    Guardrail(
        "bucket-is-private",
        "Buckets enforce public access prevention and uniform bucket-level access.",
        frozenset({BUCKET}),
        bucket_is_private,
    ),
    Guardrail(
        "no-public-invokers",
        "No allUsers or allAuthenticatedUsers invoker grant, unless ml-pipeline:publicPredict "
        "is true.",
        INVOKER_GRANTS,
        invokers_are_private,
    ),
    Guardrail(
        "no-default-compute-account",
        "No function runs, builds or is triggered as the Compute Engine default account.",
        frozenset({FUNCTION}),
        function_avoids_default_account,
    ),
)


def check_resource(
    type_: str, props: Mapping[str, Any], *, allow_public_invokers: bool = False
) -> list[Violation]:
    """Every violation of one resource; types the guardrails do not cover pass."""
    options = Options(allow_public_invokers=allow_public_invokers)
    return [
        violation
        for guardrail in GUARDRAILS
        if type_ in guardrail.resource_types
        for violation in guardrail.check(props, options)
    ]


def _nested(props: Mapping[str, Any], *path: str) -> Any:
    value: Any = props
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value
