from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.infra.harness import Deployment, config_values, run_program


@pytest.fixture(scope="session")
def workflow_stack() -> Deployment:
    with pytest.MonkeyPatch.context() as patch:
        return run_program(config_values(), patch)


@pytest.fixture(scope="session")
def events_stack() -> Deployment:
    with pytest.MonkeyPatch.context() as patch:
        return run_program(config_values(orchestration="events"), patch)


@pytest.fixture(params=["workflow", "events"])
def stack(request: pytest.FixtureRequest) -> Deployment:
    deployment: Deployment = request.getfixturevalue(f"{request.param}_stack")
    return deployment


@pytest.fixture
def deploy(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Deployment]:
    """Run the program with extra ``ml-pipeline:`` settings."""

    def run(**values: Any) -> Deployment:
        return run_program(config_values(**values), monkeypatch)

    return run
