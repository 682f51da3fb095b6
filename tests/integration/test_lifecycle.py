"""`up`, `down` and the errors a person can act on, on the real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from devstack.plan import REPO_ROOT
from devstack.processes import group_members, stop_group
from devstack.stack import STATE_FILE, load_state
from tests.integration.harness import devstack

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
    up = ("up", "--detach", "--stack-file", str(stack_file), "--orchestration", "events")
    started = devstack(tmp_path, *up)
    assert started.returncode == 0, started.stderr
    state = load_state(tmp_path)
    try:
        endpoints = json.loads(devstack(tmp_path, "endpoints").stdout)
        assert set(endpoints) >= ENDPOINT_KEYS
        assert endpoints["predict_url"] == state.service("predict").url

        again = devstack(tmp_path, *up)
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


def test_foreground_up_stops_everything_on_ctrl_c(stack_file: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "devstack", "--state-dir", str(tmp_path), "up"]
    command += ["--stack-file", str(stack_file), "--orchestration", "events"]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        # The endpoints line comes once every service is healthy.
        endpoints = json.loads(process.stdout.readline())
        state = load_state(tmp_path)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        # Whatever failed above, leave nothing running behind.
        if process.poll() is None:
            process.kill()
            process.wait()
        if (tmp_path / STATE_FILE).exists():
            devstack(tmp_path, "down")

    assert endpoints["predict_url"] == state.service("predict").url
    assert process.returncode == 0, stderr
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
