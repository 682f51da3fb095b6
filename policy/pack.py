"""The CrossGuard wrapping of the guardrails: one mandatory resource validation policy
per entry of ``GUARDRAILS``. Imported only inside the pack's own virtualenv
(policy/.venv), where ``pulumi_policy`` is installed."""

from __future__ import annotations

from typing import Any

from pulumi_policy import EnforcementLevel, ResourceValidationPolicy

from components.config import load_public_predict
from policy.guardrails import GUARDRAILS, Guardrail, Options

PACK_NAME = "ml-pipeline-guardrails"


def resource_policies() -> list[Any]:
    """Every guardrail as a ``ResourceValidationPolicy``, in ``GUARDRAILS`` order."""
    return [_policy(guardrail) for guardrail in GUARDRAILS]


def _policy(guardrail: Guardrail) -> Any:
    def validate(args: Any, report_violation: Any) -> None:
        if args.resource_type not in guardrail.resource_types:
            return
        # Pulumi hands the pack the stack's config: publicPredict is the one opt-out.
        options = Options(allow_public_invokers=load_public_predict())
        for violation in guardrail.check(args.props, options):
            report_violation(f"{violation.policy}: {violation.message}", None)

    return ResourceValidationPolicy(
        name=guardrail.name,
        description=guardrail.description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
    )
