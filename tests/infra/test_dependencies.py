"""The deployed requirements, the lock and the environment the tests run in agree."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from components.config import ESTIMATORS

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line.strip())
        if match:
            found[canonical(match.group(1))] = match.group(2)
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


LOCK = pins(ROOT / "constraints.txt")


def test_every_deployed_and_development_pin_is_the_locked_version() -> None:
    for requirements in (
        ROOT / "requirements.txt",
        ROOT / "function_src" / "requirements.txt",
        ROOT / "requirements-dev.txt",
    ):
        for name, version in pins(requirements).items():
            assert LOCK.get(name) == version, f"{requirements.name}: {name}=={version}"


def test_the_program_requirements_list_every_library_the_program_imports() -> None:
    """requirements.txt is what `pulumi install` installs for __main__.py and components/:
    every third-party import there (lazy ones and the estimators config.py loads by name
    included) must come from a distribution it pins."""
    sources = [ROOT / "__main__.py", *sorted((ROOT / "components").glob("*.py"))]
    imported = {module for module, _ in ESTIMATORS.values()}
    for source in sources:
        imported |= imported_modules(source)
    # From the deployed package the program takes its contract only, which needs nothing
    # but the standard library (test_the_contract_module_imports_only_the_standard_library).
    from_functions = {name for name in imported if name.split(".")[0] == "pipeline_core"}
    assert "pipeline_core.contract" in from_functions
    for name in from_functions - {"pipeline_core"}:
        assert name.startswith("pipeline_core.contract"), f"the program imports {name}"
    modules = {module.split(".")[0] for module in imported}
    third_party = (
        modules
        - set(sys.stdlib_module_names)
        - {
            "components",
            "pipeline_core",
            "__future__",
        }
    )
    distributions = metadata.packages_distributions()
    program = set(pins(ROOT / "requirements.txt"))
    for module in sorted(third_party):
        provided_by = {canonical(name) for name in distributions.get(module, [])}
        assert provided_by & program, f"requirements.txt lacks the distribution of {module}"
    # The development environment installs the program's requirements, not a copy of them.
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text(encoding="utf-8")


def imported_modules(source: Path) -> set[str]:
    """The absolute imports of a source file; ``from a import b`` counts as a and a.b."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def test_the_contract_module_imports_only_the_standard_library() -> None:
    """The components and devstack import it, so it may not pull the functions' own
    dependencies (or anything else) into the Pulumi program."""
    contract = ROOT / "function_src" / "pipeline_core" / "contract.py"
    roots = {module.split(".")[0] for module in imported_modules(contract)}
    assert roots - {"__future__"} <= set(sys.stdlib_module_names), roots


def module_level_names(source: Path) -> set[str]:
    """The names a source file binds at module level (classes, functions, assignments),
    not the ones it imports."""
    names: set[str] = set()
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_the_contract_names_are_written_in_the_contract_only() -> None:
    """The bucket layout, environment names, log events and defaults are imported from
    the contract wherever they are used: no module binds one of its names again (an
    alias would be a second name to keep in step)."""
    contract = ROOT / "function_src" / "pipeline_core" / "contract.py"
    public = {name for name in module_level_names(contract) if not name.startswith("_")}
    sources = [
        ROOT / "__main__.py",
        *(ROOT / "components").glob("*.py"),
        *(ROOT / "devstack").rglob("*.py"),
        *(ROOT / "bench").glob("*.py"),
        *(ROOT / "workflows_emulator").rglob("*.py"),
        *(ROOT / "function_src").rglob("*.py"),
    ]
    for source in sources:
        if source != contract:
            again = module_level_names(source) & public
            assert not again, f"{source.relative_to(ROOT)} names {sorted(again)} again"


def test_the_serving_and_compiling_libraries_are_deployed() -> None:
    deployed = pins(ROOT / "function_src" / "requirements.txt")
    assert {"onnxruntime", "skl2onnx", "onnx", "orjson", "google-cloud-storage"} <= set(deployed)
    # No function imports pandas; deploying it would only slow builds and cold starts.
    assert "pandas" not in deployed
    sources = (ROOT / "function_src").rglob("*.py")
    assert not [
        path for path in sources if re.search(r"^\s*(import|from) pandas", path.read_text(), re.M)
    ]


def test_the_environment_is_the_lock_and_resolves_without_conflicts() -> None:
    """onnx/onnxruntime and the Google client libraries share protobuf: pip's own check
    proves the locked set is consistent."""
    for name, version in LOCK.items():
        assert metadata.version(name) == version, name
    checked = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
