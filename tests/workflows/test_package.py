"""The emulator stands on its own: the local stack starts it as a process, and nothing
of it may reach back into the pipeline's packages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
PIPELINE_PACKAGES = ("components", "devstack", "pipeline_core", "main", "tests")

# Imports every module of the package in a fresh interpreter and prints the top-level
# names of everything loaded.
IMPORT_ALL = """
import json, pkgutil, importlib, sys
import workflows_emulator
for module in pkgutil.iter_modules(workflows_emulator.__path__, "workflows_emulator."):
    if module.name != "workflows_emulator.__main__":
        importlib.import_module(module.name)
print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})))
"""


def test_importing_every_module_loads_none_of_the_pipeline_packages() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    loaded = set(json.loads(completed.stdout))
    assert "workflows_emulator" in loaded
    assert {"yaml", "grpc"} <= loaded
    assert not loaded & set(PIPELINE_PACKAGES)
