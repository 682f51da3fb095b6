from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from components.config import Orchestration, StackConfig, load_stack_file
from devstack.stack import StackState, load_state
from tests.integration.harness import devstack, up_detached, write_test_stack_file


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


@dataclass
class LocalStack:
    state_dir: Path
    config: StackConfig
    state: StackState

    def refresh(self) -> None:
        """Re-read the state after a service was restarted (new pid)."""
        self.state = load_state(self.state_dir)


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_stack_file(tmp_path_factory.mktemp("stack-file"))


@pytest.fixture(scope="module", params=["workflow", "events"])
def local_stack(
    request: pytest.FixtureRequest, stack_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    """The real stack, started once per orchestration mode through the CLI."""
    mode: Orchestration = request.param
    state_dir = tmp_path_factory.mktemp(f"devstack-{mode}")
    started = up_detached(state_dir, "--stack-file", str(stack_file), "--orchestration", mode)
    assert started.returncode == 0, f"up failed:\n{started.stderr}"
    config = replace(load_stack_file(stack_file), orchestration=mode)
    try:
        yield LocalStack(state_dir, config, load_state(state_dir))
    finally:
        stopped = devstack(state_dir, "down")
        assert stopped.returncode == 0, f"down failed:\n{stopped.stderr}"
