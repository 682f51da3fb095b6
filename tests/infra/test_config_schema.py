"""Pulumi.yaml's config: block is the one source of every key, type and default.

components/config.py must read exactly the declared keys, each declared default must be
config.py's own default (a stack without the key and one holding the declared default
are the same stack, through the Pulumi CLI's plain-text hand-over too), and the
README's table is the one generated from the declarations.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest
import yaml

from components import config_schema
from components.config import _KEYS, StackConfig, load_stack_config
from components.config_schema import Declaration, SchemaError, declarations
from tests.infra.harness import GcpMocks, config_values

ROOT = Path(__file__).resolve().parents[2]
DECLARED = declarations()


def build(values: dict[str, object]) -> StackConfig:
    return StackConfig.from_values(
        project="p-123", region="us-central1", stack="dev", values=values
    )


@pytest.mark.parametrize("key", _KEYS)
def test_every_key_config_py_reads_is_declared_in_pulumi_yaml(key: str) -> None:
    assert key in DECLARED, (
        f"ml-pipeline:{key} is read by components/config.py but not declared in the "
        "config: block of Pulumi.yaml: add it with type, description and default "
        "(then `make docs` for the README table)"
    )


def test_every_declared_key_is_read_by_config_py() -> None:
    unread = sorted(set(DECLARED) - set(_KEYS))
    assert not unread, f"declared in Pulumi.yaml but never read by components/config.py: {unread}"


@pytest.mark.parametrize("key", list(DECLARED))
def test_the_declared_default_is_config_py_default(key: str) -> None:
    declared = build({key: DECLARED[key].default})
    assert declared == build({}), (
        f"ml-pipeline:{key}: Pulumi.yaml's default {DECLARED[key].default!r} is not the "
        "default components/config.py applies"
    )


def test_the_defaults_the_cli_hands_the_program_change_nothing() -> None:
    """The Pulumi CLI applies every declared default to the stack and passes scalars as
    text and the rest as JSON; load_stack_config must read that as the plain default."""
    defaults = {key: declaration.default for key, declaration in DECLARED.items()}
    pulumi.runtime.set_mocks(GcpMocks(), project="ml-pipeline", stack="dev")
    pulumi.runtime.set_all_config(
        {**config_values(**defaults), "gcp:project": "p-123", "gcp:region": "us-central1"}
    )
    assert load_stack_config() == build({})


def test_every_declaration_has_a_description_of_substance() -> None:
    for declaration in DECLARED.values():
        assert len(declaration.description) >= 20, declaration.key


def test_the_readme_table_is_the_one_generated_from_pulumi_yaml() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = config_schema.markdown_table(DECLARED)
    assert config_schema.with_table(readme, table) == readme, (
        "README.md's configuration table differs from Pulumi.yaml's declarations: run `make docs`"
    )
    for key in DECLARED:
        assert f"| `{key}` |" in readme


def test_the_example_stack_file_sets_only_declared_keys() -> None:
    document = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text(encoding="utf-8"))
    ours = {k.split(":", 1)[1] for k in document["config"] if k.startswith("ml-pipeline:")}
    assert ours <= set(DECLARED)


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ("  minRows: {type: integer, description: rows}\n", "lacks default"),
        ("  minRows: {type: number, description: rows, default: 2}\n", "type 'number'"),
        ("  minRows: {type: integer, description: rows, default: 'x'}\n", "not of type integer"),
        ("  minRows: {type: integer, description: rows, default: true}\n", "not of type integer"),
        ("  minRows: 20\n", "must be a map"),
    ],
)
def test_a_malformed_declaration_names_the_key_and_the_problem(
    block: str, problem: str, tmp_path: Path
) -> None:
    project = tmp_path / "Pulumi.yaml"
    project.write_text(f"name: x\nruntime: python\nconfig:\n{block}", encoding="utf-8")
    with pytest.raises(SchemaError, match=rf"config\.minRows.*{problem}"):
        declarations(project)


def test_the_table_escapes_what_markdown_would_swallow() -> None:
    table = config_schema.markdown_table(
        {"k": Declaration(key="k", type="string", description="mlp-<stack> a|b", default="")}
    )
    assert "mlp-&lt;stack&gt; a\\|b" in table
    assert "| (empty) |" in table
