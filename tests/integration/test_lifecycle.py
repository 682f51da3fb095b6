"""`up`, `down` and the errors a person can act on, on the real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.plan import REPO_ROOT
from devstack.processes import group_members, stop_group
from devstack.stack import STATE_FILE, load_state
from tests.integration.harness import devstack, up_detached

ENDPOINT_KEYS = {
    "predict_url",
    "bucket",
    "pubsub_emulator_host",
    "storage_emulator_host",
    "workflows_api",
    "workflows_grpc",
}


def test_detached_stack_refuses_a_second_up_and_down_leaves_no_process(
    stack_file: Path, tmp_path: Path
) -> None:
    options = ("--stack-file", str(stack_file), "--orchestration", "events")
    started = up_detached(tmp_path, *options)
    assert started.returncode == 0, started.stderr
    state = load_state(tmp_path)
    try:
        endpoints = json.loads(devstack(tmp_path, "endpoints").stdout)
        assert set(endpoints) >= ENDPOINT_KEYS
        assert endpoints["predict_url"] == state.service("predict").url

        again = devstack(tmp_path, "up", "--detach", *options)
        assert again.returncode == 1
        assert "already running" in again.stderr

        stop_group(state.service("predict"))
        dead = devstack(tmp_path, "predict", '{"instances": []}')
        assert dead.returncode == 1
        assert "service 'predict' is not running" in dead.stderr
        assert "python -m devstack restart predict" in dead.stderr
    finally:
        stopped = devstack(tmp_path, "down")

    assert stopped.returncode == 0, stopped.stderr
    assert all(group_members(service.pid) == [] for service in state.services)
    assert not (tmp_path / STATE_FILE).exists()
    twice = devstack(tmp_path, "down")
    assert twice.returncode == 1
    assert "no local stack is running" in twice.stderr


@contextmanager
def foreground_up(stack_file: Path, state_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """'up' in the foreground; whatever the test does or fails at, nothing is left running."""
    command = [sys.executable, "-m", "devstack", "--state-dir", str(state_dir), "up"]
    command += ["--stack-file", str(stack_file), "--orchestration", "events"]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if (state_dir / STATE_FILE).exists():
            devstack(state_dir, "down")


def ready_endpoints(process: subprocess.Popen[str]) -> dict[str, str]:
    """The endpoints line, which 'up' prints once every service is healthy."""
    assert process.stdout is not None
    endpoints: dict[str, str] = json.loads(process.stdout.readline())
    return endpoints


def test_foreground_up_stops_everything_on_ctrl_c(stack_file: Path, tmp_path: Path) -> None:
    with foreground_up(stack_file, tmp_path) as process:
        endpoints = ready_endpoints(process)
        state = load_state(tmp_path)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)

    assert endpoints["predict_url"] == state.service("predict").url
    assert process.returncode == 0, stderr
    assert all(group_members(service.pid) == [] for service in state.services)
    assert not (tmp_path / STATE_FILE).exists()


def test_foreground_up_names_a_service_that_died_and_stops_the_rest(
    stack_file: Path, tmp_path: Path
) -> None:
    with foreground_up(stack_file, tmp_path) as process:
        ready_endpoints(process)
        state = load_state(tmp_path)
        stop_group(state.service("predict"))
        _, stderr = process.communicate(timeout=60)

    assert process.returncode == 1, stderr
    assert f"service 'predict' died; last lines of {state.service('predict').log}" in stderr
    assert all(group_members(service.pid) == [] for service in state.services)
    assert not (tmp_path / STATE_FILE).exists()


def test_missing_emulator_names_the_install_command(stack_file: Path, tmp_path: Path) -> None:
    environment = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    result = subprocess.run(
        [sys.executable, "-m", "devstack", "--state-dir", str(tmp_path), "up", "--detach"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "apt-get install google-cloud-cli-pubsub-emulator" in result.stderr
    assert "gcloud components install pubsub-emulator beta" in result.stderr
    assert not (tmp_path / STATE_FILE).exists()
