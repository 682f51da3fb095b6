"""``python -m devstack.workflows``: the one-shot ``run`` contract and ``serve``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from devstack.workflows.cli import main

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
    assert first_line.startswith("devstack: error: workflow failed: [KeyError]")
    assert "KeyError" in json.loads(payload_line)["tags"]


def test_run_prints_a_raised_string_as_its_own_message(workflow_file, capsys) -> None:
    source = "main:\n  steps:\n    - fail:\n        raise: kaput\n"

    code = main(["run", str(workflow_file(source))])

    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines() == [
        "devstack: error: workflow failed: [no tags] kaput",
        '"kaput"',
    ]


def test_run_reports_a_definition_error_with_step_and_line(workflow_file, capsys) -> None:
    code = main(["run", str(workflow_file(INVALID))])

    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.startswith("devstack: error: definition error: ")
    assert "odd" in captured.err and ":6" in captured.err


def test_run_rejects_data_that_is_not_json(workflow_file, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(workflow_file(ECHO)), "--data", "{n: 1"])

    assert exit_info.value.code == 2
    assert "--data is not valid JSON" in capsys.readouterr().err


def test_run_names_a_missing_file(tmp_path: Path, capsys) -> None:
    code = main(["run", str(tmp_path / "absent.yaml")])

    assert code == 2
    assert "absent.yaml" in capsys.readouterr().err


def test_module_entry_point_runs_a_file(workflow_file) -> None:
    path = workflow_file(ECHO)

    completed = subprocess.run(
        [sys.executable, "-m", "devstack.workflows", "run", str(path), "--data", '{"n": 2}'],
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
            "devstack.workflows",
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
            "devstack.workflows",
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
