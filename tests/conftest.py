"""The tiers as one run: a tier that collects nothing fails it, and pytest-xdist shares
the tiers out among its workers (``make test`` runs with ``-n 2 --dist loadfile``).

Whole files go to one worker, so module-scoped fixtures are built once and tests that
rely on file order keep it. An integration file is split further by the orchestration
mode of its ``local_stack``: each mode's stack lives on one worker, and the two stacks
of a file (minutes each) run side by side instead of one after the other.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling
from xdist.workermanage import WorkerController

INTEGRATION_TIER = "tests/integration/"
# The ids of the local_stack fixture's params (tests/integration/conftest.py).
STACK_MODES = ("workflow", "events")


def work_unit(nodeid: str) -> str:
    """The file of a test, and for an integration test the stack mode it runs on."""
    path, _, test = nodeid.partition("::")
    if not path.startswith(INTEGRATION_TIER) or not test.endswith("]"):
        return path
    param_ids = test[test.index("[") + 1 : -1].split("-")
    modes = [mode for mode in STACK_MODES if mode in param_ids]
    return f"{path}[{modes[0]}]" if modes else path


COLLECTED = pytest.StashKey[set[Path]]()


def record_collected(config: pytest.Config, nodeids: list[str]) -> None:
    files = config.stash.setdefault(COLLECTED, set())
    files.update(config.rootpath / nodeid.partition("::")[0] for nodeid in nodeids)


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect: collected, not selected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    record_collected(config, [item.nodeid for item in items])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: WorkerController, ids: list[str]) -> None:
    """The controller collects nothing itself: its workers' collections count."""
    record_collected(node.config, ids)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """One run over several tiers exits 0 even when one of them collected nothing
    (pytest's exit code 5 is for the run as a whole): fail it naming the folder."""
    config = session.config
    if hasattr(config, "workerinput"):
        return  # a worker collects every tier too, the controller judges once
    collected = config.stash.get(COLLECTED, set())
    empty = [
        folder
        for folder in config.args
        if Path(folder).is_dir()
        and not any(Path(folder).resolve() in path.parents for path in collected)
    ]
    if empty and session.exitstatus == pytest.ExitCode.OK:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"ERROR: no test collected in {', '.join(empty)}", red=True)
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED


# xdist ships no type information: its scheduler is Any to mypy.
class StackModeScheduling(LoadScopeScheduling):  # type: ignore[misc]
    def _split_scope(self, nodeid: str) -> str:
        return work_unit(nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> LoadScopeScheduling | None:
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own scheduler for every other --dist
    # Work units in collection order (xdist would sort them by test count): the
    # command names the integration tier first, so its long units start first and
    # the many short files of the other tiers fill the gaps at the end.
    config.option.loadscopereorder = False
    return StackModeScheduling(config, log)
