"""The deployed requirements, the lock and the environment the tests run in agree."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

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
    for requirements in (ROOT / "function_src" / "requirements.txt", ROOT / "requirements-dev.txt"):
        for name, version in pins(requirements).items():
            assert LOCK.get(name) == version, f"{requirements.name}: {name}=={version}"


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
