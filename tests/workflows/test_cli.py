"""``python -m workflows_emulator``: the one-shot ``run`` contract and ``serve``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from workflows_emulator.cli import main

REPOSITORY = Path(__file__).resolve().parents[2]

ECHO = """\
main:
  params: [args]
  steps:
    - answer:
        return:
          doubled: ${args.n * 2}
          greeting: ${sys.get_env("GREETING")}
"""

FAILING = """\
main:
  steps:
    - lookup:
        assign:
          - m: {}
          - x: ${m.missing}
"""

INVALID = """\
main:
  steps:
    - fine:
        assign:
          - x: 1
    - odd:
        frobnicate: 1
"""


@pytest.fixture
def workflow_file(tmp_path: Path):
    def write(source: str, name: str = "flow.yaml") -> Path:
        path = tmp_path / name
        path.write_text(source, encoding="utf-8")
        return path

    return write


def test_run_prints_the_result_as_json(workflow_file, capsys) -> None:
    path = workflow_file(ECHO)

    code = main(["run", str(path), "--data", '{"n": 21}', "--env", "GREETING=hi"])

    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out) == {"doubled": 42, "greeting": "hi"}
    assert captured.err == ""


def test_run_prints_tags_and_message_of_an_uncaught_error(workflow_file, capsys) -> None:
    code = main(["run", str(workflow_file(FAILING))])

    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    first_line, payload_line = captured.err.strip().splitlines()
    assert first_line.startswith("workflows_emulator: error: workflow failed: [KeyError]")
    assert "KeyError" in json.loads(payload_line)["tags"]


def test_run_prints_a_raised_string_as_its_own_message(workflow_file, capsys) -> None:
    source = "main:\n  steps:\n    - fail:\n        raise: kaput\n"

    code = main(["run", str(workflow_file(source))])

    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines() == [
        "workflows_emulator: error: workflow failed: [no tags] kaput",
        '"kaput"',
    ]


def test_run_reports_a_definition_error_with_step_and_line(workflow_file, capsys) -> None:
    code = main(["run", str(workflow_file(INVALID))])

    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.startswith("workflows_emulator: error: definition error: ")
    assert "odd" in captured.err and ":6" in captured.err


def test_run_rejects_data_that_is_not_json(workflow_file, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(workflow_file(ECHO)), "--data", "{n: 1"])

    assert exit_info.value.code == 2
    assert "--data is not valid JSON" in capsys.readouterr().err


def test_run_names_a_missing_file(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "absent.yaml"

    code = main(["run", str(missing)])

    assert code == 2
    assert capsys.readouterr().err.startswith(f"workflows_emulator: error: cannot read {missing}")


def test_a_usage_error_starts_with_the_error_prefix_and_names_the_command(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", "http"])

    assert exit_info.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith(
            "workflows_emulator: error: python -m workflows_emulator serve: argument --port"
        )
    )


# Unchecked, a gRPC port out of range was served on another port and never returned.
@pytest.mark.timeout(30)
@pytest.mark.parametrize("option", ["--port", "--grpc-port"])
@pytest.mark.parametrize("value", ["99999", "-1", "http"])
def test_serve_refuses_a_port_out_of_range(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--project", "p", "--location", "l", option, value])

    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(f"argument {option}: expected a port from 0 to 65535, got '{value}'")


def test_module_entry_point_runs_a_file(workflow_file) -> None:
    path = workflow_file(ECHO)

    completed = subprocess.run(
        [sys.executable, "-m", "workflows_emulator", "run", str(path), "--data", '{"n": 2}'],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == {"doubled": 4, "greeting": None}


def test_serve_answers_health_runs_executions_and_stops_on_sigterm(workflow_file) -> None:
    path = workflow_file(ECHO, "echo.yaml")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workflows_emulator",
            "serve",
            "--port",
            "0",
            "--project",
            "p",
            "--location",
            "l",
            "--workflow",
            f"echo={path}",
            "--env",
            "GREETING=served",
        ],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        url = ready["url"]
        assert ready["grpc_target"].startswith("127.0.0.1:")
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        created = requests.post(
            f"{url}/v1/projects/p/locations/l/workflows/echo/executions",
            json={"argument": '{"n": 5}'},
            timeout=10,
        ).json()
        assert created["state"] == "ACTIVE"
        missing = requests.get(
            f"{url}/v1/projects/p/locations/l/workflows/x/executions", timeout=10
        )
        assert missing.status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr


def test_serve_refuses_an_invalid_definition(workflow_file) -> None:
    path = workflow_file(INVALID, "broken.yaml")

    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflows_emulator",
            "serve",
            "--project",
            "p",
            "--location",
            "l",
            "--workflow",
            f"broken={path}",
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 1
    assert "definition error" in completed.stderr and "odd" in completed.stderr
