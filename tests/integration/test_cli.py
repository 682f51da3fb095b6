"""The command lines of devstack and of its Workflows engine on wrong input, without a
stack: usage errors exit 2 with one line naming the argument, before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack import runs
from devstack.cli import main
from devstack.errors import DevstackError
from devstack.workflows.cli import main as workflows_main


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["0", "-3", "nan", "soon"])
def test_upload_timeout_must_be_above_zero(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,target\n1,0\n", encoding="utf-8")

    error = usage_error(
        capsys, "--state-dir", str(tmp_path), "upload", str(data), "--wait", "--timeout", value
    )

    assert error.endswith(f"argument --timeout: expected a number above 0, got '{value}'")


@pytest.mark.parametrize("value", ["0", "-5", "2.5"])
def test_log_lines_must_be_a_whole_number_above_zero(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = usage_error(capsys, "--state-dir", str(tmp_path), "logs", "--lines", value)

    assert error.endswith(f"argument --lines: expected a number above 0, got '{value}'")


# Unchecked, a gRPC port out of range was served on another port and never returned.
@pytest.mark.timeout(30)
@pytest.mark.parametrize("option", ["--port", "--grpc-port"])
@pytest.mark.parametrize("value", ["99999", "-1", "http"])
def test_workflows_serve_refuses_a_port_out_of_range(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        workflows_main(["serve", "--project", "p", "--location", "l", option, value])

    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(f"argument {option}: expected a port from 0 to 65535, got '{value}'")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            "config:\n  gcp:project: [\n",
            "is not valid YAML at line 3, column 1: expected the node content, but found "
            "'<stream end>'",
        ),
        ("config:\n\tgcp:project: p\n", "is not valid YAML at line 2, column 1: found character"),
        (b"config:\n  gcp:project: \xd0\x00\n", "is not UTF-8 text (byte 23)"),
        (None, "is a directory"),
    ],
)
def test_an_unreadable_stack_file_is_one_line_naming_the_problem(
    content: str | bytes | None,
    problem: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack_file = tmp_path / "Pulumi.bad.yaml"
    if content is None:
        stack_file.mkdir()
    elif isinstance(content, bytes):
        stack_file.write_bytes(content)
    else:
        stack_file.write_text(content, encoding="utf-8")

    code = main(["--state-dir", str(tmp_path), "up", "--stack-file", str(stack_file)])

    assert code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith(f"devstack: error: config '{stack_file}': {problem}")


@pytest.mark.parametrize("name", ["../../x.csv", "sub/", "a//b.csv", "./x.csv", "/x.csv"])
def test_upload_names_must_stay_plain_object_names_under_raw(name: str, tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,target\n1,0\n", encoding="utf-8")
    with pytest.raises(DevstackError, match="not a plain object name under raw/"):
        # The name is checked before any client is used: nothing is uploaded.
        runs.upload_to_cloud("any-bucket", data, name=name)


def test_sample_data_writes_the_demo_csv_and_never_replaces_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "iris.csv"

    assert main(["sample-data", str(data)]) == 0

    written = json.loads(capsys.readouterr().out)
    header = data.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header == [*written["features"], written["target_column"]]
    assert written["target_column"] == "target"
    assert len(data.read_text(encoding="utf-8").splitlines()) == 151
    before = data.read_bytes()
    assert main(["sample-data", str(data)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert data.read_bytes() == before
