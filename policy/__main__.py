"""The policy pack Pulumi runs for ``--policy-pack policy``, in policy/.venv.

Pulumi runs this folder as a program with only the folder itself on ``sys.path``; the
guardrails and the config reader come from the repository's packages, as everywhere
else, so its root goes on the path first.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulumi_policy import EnforcementLevel, PolicyPack

from policy.pack import PACK_NAME, resource_policies

PolicyPack(
    name=PACK_NAME,
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=resource_policies(),
)
