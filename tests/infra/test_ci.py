"""The CI workflow previews with the policy pack, and only where the secrets exist.

(`make lint` runs actionlint over the same file for syntax and expressions.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import work_unit

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
# pulumi/actions' current major (v7.0.0, May 2026: the node 24 runtime).
PULUMI_ACTION = "pulumi/actions@v7"


def jobs() -> dict[str, Any]:
    document = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    found: dict[str, Any] = document["jobs"]
    return found


def secrets_used(job: Any) -> set[str]:
    return set(re.findall(r"(?<![\w-])secrets\.(\w+)", yaml.safe_dump(job)))


def test_the_preview_runs_with_the_policy_pack_on_the_current_pulumi_action() -> None:
    steps = jobs()["preview"]["steps"]
    pulumi_steps = [step for step in steps if str(step.get("uses", "")).startswith("pulumi/")]
    assert [step["uses"] for step in pulumi_steps] == [PULUMI_ACTION]
    assert pulumi_steps[0]["with"]["command"] == "preview"
    assert pulumi_steps[0]["with"]["policyPacks"] == "policy"
    setup = [step["run"] for step in steps if "run" in step]
    assert any("policy-venv" in command and "venv" in command.split() for command in setup)


def test_the_preview_is_skipped_without_the_secrets_it_uses() -> None:
    """Fork pull requests get no secrets: the preview must be skipped, not red."""
    workflow = jobs()
    preview, gate = workflow["preview"], workflow["cloud-secrets"]
    assert "cloud-secrets" in preview["needs"]
    assert preview["if"] == "needs.cloud-secrets.outputs.available == 'true'"
    assert secrets_used(preview) == secrets_used(gate)
    script = gate["steps"][0]["run"]
    for variable in gate["steps"][0]["env"]:
        assert f'-n "${variable}"' in script
    assert "available=false" in script


def test_the_tests_run_on_every_pull_request_and_push() -> None:
    test = jobs()["test"]
    assert "if" not in test
    assert test["steps"][-1]["run"] == ".ci/run"


def test_make_test_spreads_the_tiers_over_two_workers_integration_first() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^PARALLEL := -n 2 --dist loadfile$", makefile, re.M)
    recipe = re.search(r"^test:.*\n\t(.+)$", makefile, re.M)
    assert recipe is not None
    assert recipe.group(1).split()[-5:] == [
        "$(PARALLEL)",
        "tests/integration",
        "tests/infra",
        "tests/functions",
        "tests/workflows",
    ]


def test_a_worker_gets_a_whole_file_and_an_integration_file_one_mode_at_a_time() -> None:
    pipeline = "tests/integration/test_pipeline.py"
    assert work_unit(f"{pipeline}::test_upload[workflow]") == f"{pipeline}[workflow]"
    assert work_unit(f"{pipeline}::test_upload[events]") == f"{pipeline}[events]"
    # A test with more params than the stack's, and one with no stack at all.
    assert work_unit(f"{pipeline}::test_retry[events-503]") == f"{pipeline}[events]"
    assert work_unit("tests/integration/test_cli.py::test_lines[0]") == (
        "tests/integration/test_cli.py"
    )
    # Outside the integration tier an id that names a mode splits nothing.
    assert work_unit("tests/infra/test_program.py::test_x[events]") == (
        "tests/infra/test_program.py"
    )
