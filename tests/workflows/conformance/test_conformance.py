"""The conformance suite: small workflow programs with the outcome the reference documents.

Each ``cases/*.yaml`` file is a list of cases. A case has a ``name``, a ``doc`` (the
reference page and rule it checks) and either a ``workflow`` (YAML source) or an
``expression`` (wrapped as ``main: steps: [{r: {return: ${EXPR}}}]``); optionally an
``argument``, ``env`` (user env vars) and ``http`` (scripted stub replies per path:
``[[status, body], ...]``). Its expectation is exactly one of:

- ``result``: the value returned, compared with types (``3`` is not ``3.0``);
- ``error``: tags the uncaught error must carry (plus ``message``, a substring);
- ``raised``: the exact value of an uncaught ``raise``;
- ``definition_error``: ``{step, line}`` the definition error must name;

and optionally ``http_calls`` (requests per stub path) and ``logged`` (texts that
``sys.log`` must have emitted). Workflows reach the stub through
``sys.get_env("STUB_URL")``; the Pub/Sub connector targets the stub too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.workflows.conformance.http_stub import HttpStub, Reply
from workflows_emulator.engine import ExecutionContext, WorkflowProgram
from workflows_emulator.errors import DefinitionError, WorkflowError

CASES_DIR = Path(__file__).parent / "cases"
EXECUTION_ID = "0f3c2f4e-conformance"
WORKFLOW_ID = "conformance"
PROJECT_ID = "conformance-project"
LOCATION = "europe-west1"
_EXPECTATIONS = ("result", "error", "raised", "definition_error")
_KNOWN_KEYS = {
    "name",
    "doc",
    "workflow",
    "expression",
    "argument",
    "env",
    "http",
    "message",
    "http_calls",
    "logged",
    *_EXPECTATIONS,
}


@dataclass(frozen=True)
class Case:
    file: str
    spec: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.file}::{self.spec['name']}"

    @property
    def source(self) -> str:
        if "workflow" in self.spec:
            return str(self.spec["workflow"])
        program = {"main": {"steps": [{"r": {"return": "${" + self.spec["expression"] + "}"}}]}}
        return yaml.safe_dump(program, sort_keys=False)


def _load_cases() -> Iterator[Case]:
    for path in sorted(CASES_DIR.glob("*.yaml")):
        specs = yaml.safe_load(path.read_text(encoding="utf-8"))
        names: set[str] = set()
        for spec in specs:
            case = Case(path.stem, spec)
            unknown = set(spec) - _KNOWN_KEYS
            expectations = [key for key in _EXPECTATIONS if key in spec]
            if unknown or len(expectations) != 1 or spec["name"] in names or "doc" not in spec:
                raise ValueError(
                    f"malformed case {case.id}: unknown keys {sorted(unknown)}, "
                    f"expectations {expectations}, or a duplicate name / missing doc"
                )
            if ("workflow" in spec) == ("expression" in spec):
                raise ValueError(f"case {case.id} needs exactly one of workflow / expression")
            names.add(spec["name"])
            yield case


CASES = list(_load_cases())


def assert_same(actual: Any, expected: Any, where: str = "result") -> None:
    """Equality that also compares types, so an int never passes for a double or a bool."""
    assert type(actual) is type(expected), (
        f"{where}: {actual!r} ({type(actual).__name__}) != {expected!r} ({type(expected).__name__})"
    )
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), f"{where}: keys {sorted(actual)}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{where}: {actual!r} != {expected!r}"
        for index, (item, wanted) in enumerate(zip(actual, expected, strict=True)):
            assert_same(item, wanted, f"{where}[{index}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


@pytest.fixture(scope="module")
def stub() -> Iterator[HttpStub]:
    server = HttpStub().start()
    yield server
    server.stop()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_conformance(case: Case, stub: HttpStub) -> None:
    spec = case.spec
    stub.reset()
    for path, replies in (spec.get("http") or {}).items():
        stub.script(path, [Reply(status, body) for status, body in replies])
    logs: list[dict[str, Any]] = []

    if "definition_error" in spec:
        with pytest.raises(DefinitionError) as raised_definition:
            WorkflowProgram.from_source(case.source, filename=f"{case.file}.yaml")
        expected = spec["definition_error"]
        if "step" in expected:
            assert raised_definition.value.step == expected["step"], str(raised_definition.value)
        if "line" in expected:
            assert raised_definition.value.line == expected["line"], str(raised_definition.value)
        return

    program = WorkflowProgram.from_source(case.source, filename=f"{case.file}.yaml")
    context = ExecutionContext(
        workflow_id=WORKFLOW_ID,
        execution_id=EXECUTION_ID,
        project_id=PROJECT_ID,
        location=LOCATION,
        env={"STUB_URL": stub.url, **(spec.get("env") or {})},
        on_log=logs.append,
        pubsub_emulator_host=stub.host,
    )
    if "result" in spec:
        assert_same(program.run(spec.get("argument"), context=context), spec["result"])
    else:
        with pytest.raises(WorkflowError) as raised_error:
            program.run(spec.get("argument"), context=context)
        error = raised_error.value
        if "raised" in spec:
            assert_same(error.payload, spec["raised"], "raised")
        else:
            missing = set(spec["error"]) - set(error.tags)
            assert not missing, f"error {error.payload!r} lacks tags {sorted(missing)}"
            assert spec.get("message", "") in error.message, error.message

    for path, count in (spec.get("http_calls") or {}).items():
        assert len(stub.calls(path)) == count, f"{path}: {stub.requests!r}"
    texts = [str(entry.get("text", entry.get("json"))) for entry in logs]
    for text in spec.get("logged") or ():
        assert text in texts, f"{text!r} not logged; logs: {logs!r}"
