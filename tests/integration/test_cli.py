"""The command line of devstack (the Workflows emulator's is in tests/workflows).

Without a stack: usage errors exit 2 with one line naming the argument, before anything
starts; the pure parts (tables, payloads, the status layout, following a log). With a
one-service stand-in stack: ``logs --follow`` until Ctrl-C or the stack stops. On a real
events-mode stack: ``status``, ``runs --json``, ``predict @FILE`` and ``-``, and the
editable install answering from another directory.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import runs, status
from devstack.cli import main
from devstack.console import format_table, read_payload
from devstack.errors import DevstackError
from devstack.logs import follow
from devstack.plan import REPO_ROOT, ServicePlan
from devstack.processes import RunningService, group_alive, start_service, stop_group
from devstack.stack import STATE_FILE, StackState, allocate_ports
from tests.integration.conftest import LocalStack
from tests.integration.harness import FEATURES, devstack, separable_csv

# These tests need one real stack, not one per mode: the CLI's output is the same code.
ON_EVENTS_STACK = pytest.mark.parametrize("local_stack", ["events"], indirect=True)


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


def test_report_and_events_without_a_stack_say_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("report", "events"):
        assert main(["--state-dir", str(tmp_path), command]) == 1
        error = capsys.readouterr().err
        assert "no local stack is running" in error and "up --detach" in error
    assert not (tmp_path / "report.html").exists()


def test_report_metric_is_one_the_promotion_policy_knows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = usage_error(capsys, "--state-dir", str(tmp_path), "report", "--metric", "auc")

    assert "argument --metric: invalid choice: 'auc'" in error


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


@pytest.mark.parametrize(
    "argv",
    [
        ["--state-dir", "x", "logs", "--lines", "0"],
        ["--state-dir", "x", "frobnicate"],
    ],
)
def test_every_usage_error_starts_with_the_error_prefix(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert usage_error(capsys, *argv).startswith("devstack: error: python -m devstack")


# --- pure parts ------------------------------------------------------------------------


def test_a_table_has_a_header_and_columns_as_wide_as_their_widest_cell() -> None:
    table = format_table(
        ("NAME", "STATE", "DETAIL"), [("a", "received", ""), ("long-name", "ok", "x y")]
    )

    assert table.splitlines() == [
        "NAME       STATE     DETAIL",
        "a          received",
        "long-name  ok        x y",
    ]


def test_a_payload_is_read_inline_from_a_file_or_from_standard_input(tmp_path: Path) -> None:
    document = {"instances": [{"x": 1.0}]}
    path = tmp_path / "request.json"
    path.write_text(json.dumps(document), encoding="utf-8")

    assert read_payload(json.dumps(document), io.StringIO()) == document
    assert read_payload(f"@{path}", io.StringIO()) == document
    assert read_payload("-", io.StringIO(json.dumps(document))) == document


@pytest.mark.parametrize(
    ("argument", "stdin", "message"),
    [
        ("@{dir}/absent.json", "", "payload file {dir}/absent.json does not exist"),
        ("@{dir}", "", "payload file {dir} is a directory"),
        ("@{dir}/latin1.json", "", "payload file {dir}/latin1.json is not UTF-8 text"),
        ("@{dir}/broken.json", "", "{dir}/broken.json is not valid JSON (Expecting ',' delimiter"),
        ("-", "{nope", "standard input is not valid JSON (Expecting property name"),
        ("{'instances': []}", "", "the payload is not valid JSON"),
    ],
)
def test_an_unreadable_payload_is_named_with_its_problem(
    argument: str, stdin: str, message: str, tmp_path: Path
) -> None:
    (tmp_path / "latin1.json").write_bytes(b'{"x": "\xe9"}')
    (tmp_path / "broken.json").write_text('{"instances": [1 2]}', encoding="utf-8")

    with pytest.raises(DevstackError) as raised:
        read_payload(argument.replace("{dir}", str(tmp_path)), io.StringIO(stdin))

    assert str(raised.value).startswith(message.replace("{dir}", str(tmp_path)))


def status_document(**changes: Any) -> dict[str, Any]:
    service = {
        "name": "predict",
        "state": "healthy",
        "pid": 41,
        "port": 8081,
        "grpc_port": None,
        "url": "http://127.0.0.1:8081",
        "processes": 2,
        "rss_bytes": 150 * 1024 * 1024,
        "uptime_seconds": 75.0,
    }
    document: dict[str, Any] = {
        "state_dir": "/s",
        "config_path": "/c/Pulumi.dev.yaml",
        "orchestration": "workflow",
        "project": "p",
        "region": "r",
        "bucket": "b",
        "healthy": True,
        "services": [
            service,
            {**service, "name": "workflows", "port": 9000, "grpc_port": 9001, "pid": 42},
        ],
        "storage_readable": True,
        "champion": {
            "model_version": "v2",
            "metrics": {"accuracy": 0.9, "f1_macro": 0.8},
            "promoted_at": "2026-12-01T10:00:00+00:00",
        },
        "serving": {"model_version": "v2"},
        "runs_total": 1,
        "latest_runs": [
            {
                "object": "raw/a.csv",
                "generation": "7",
                "uploaded_at": "2026-12-01T09:59:00+00:00",
                "state": "trained",
                "detail": "model v2 promoted to champion",
            }
        ],
    }
    document.update(changes)
    return document


def test_status_shows_services_the_champion_and_the_latest_runs() -> None:
    lines = status.render(status_document()).splitlines()

    assert lines[0] == "workflow-mode stack of /c/Pulumi.dev.yaml"
    assert lines[3].split() == ["SERVICE", "STATE", "PID", "PORT", "PROCS", "RSS", "UP", "URL"]
    predict_row = ["predict", "healthy", "41", "8081", "2", "150", "MB", "1m15s"]
    assert lines[4].split() == [*predict_row, "http://127.0.0.1:8081"]
    assert lines[5].split()[3] == "9000,9001"  # the Executions API's REST and gRPC ports
    assert (
        "champion: v2 (accuracy 0.9000, f1_macro 0.8000), promoted 2026-12-01T10:00:00+00:00"
        in lines
    )
    assert "serving:  predict serves v2" in lines
    assert "latest runs (1 of 1, newest first):" in lines
    header = lines[lines.index("latest runs (1 of 1, newest first):") + 1]
    assert header.split() == ["OBJECT", "GENERATION", "UPLOADED", "STATE", "DETAIL"]


def test_status_names_what_is_wrong_and_what_to_do() -> None:
    document = status_document(healthy=False, storage_readable=False, champion=None)
    document["services"][0].update(state="stopped", processes=0, uptime_seconds=None)
    document["serving"] = None
    text = status.render(document)

    predict_row = next(line for line in text.splitlines() if line.startswith("predict "))
    assert predict_row.split()[:7] == ["predict", "stopped", "41", "8081", "0", "-", "-"]
    assert (
        "predict is stopped: see 'python -m devstack logs predict', then "
        "'python -m devstack restart predict'"
    ) in text
    assert "champion: unknown while the storage emulator is not healthy" in text
    assert "serving:  predict does not answer" in text
    assert "runs: unknown while the storage emulator is not healthy" in text


def test_status_says_when_predict_refused_the_champion() -> None:
    serving = {"model_version": "v1", "refused_champion": {"model_version": "v2", "problem": "x"}}

    text = status.render(status_document(serving=serving))

    assert "serving:  predict serves v1; it refused v2: x" in text


def test_following_prints_whole_lines_as_they_come_until_told_to_stop(tmp_path: Path) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    first.write_text("old 1\nold 2\nold 3\n", encoding="utf-8")
    writes = iter(
        [
            (first, "new 1\nhalf a li"),
            (second, "other\n"),
            (first, "ne\n"),
            None,  # stop: lines written before this answer are still printed
        ]
    )

    def keep_going() -> bool:
        step = next(writes)
        if step is None:
            with first.open("a", encoding="utf-8") as log:
                log.write("last\n")
            return False
        path, text = step
        with path.open("a", encoding="utf-8") as log:
            log.write(text)
        return True

    out = io.StringIO()
    follow(
        {"first": first, "second": second},
        out=out,
        last_lines=2,
        keep_going=keep_going,
        poll_seconds=0,
    )

    assert out.getvalue().splitlines() == [
        "first  | old 2",
        "first  | old 3",
        "first  | new 1",
        "second | other",
        "first  | half a line",
        "first  | last",
    ]


def test_following_one_log_reads_it_again_from_the_start_when_it_is_replaced(
    tmp_path: Path,
) -> None:
    log = tmp_path / "only.log"
    log.write_text("a long first line\n", encoding="utf-8")
    answers = iter([True, False])

    def replace_then_stop() -> bool:
        log.write_text("fresh\n", encoding="utf-8")
        return next(answers)

    out = io.StringIO()
    follow({"only": log}, out=out, last_lines=5, keep_going=replace_then_stop, poll_seconds=0)

    assert out.getvalue().splitlines() == ["a long first line", "fresh"]


# --- logs --follow on a stand-in stack of one process ------------------------------------


@pytest.fixture
def one_service_stack(tmp_path: Path) -> Iterator[RunningService]:
    """A state folder as 'up' leaves it, for one process that logs a line and waits."""
    port = allocate_ports(("probe",))["probe"]
    code = "import time; print('started', flush=True); time.sleep(120)"
    plan = ServicePlan("probe", port, (sys.executable, "-c", code), {}, "/")
    (tmp_path / "logs").mkdir()
    service = start_service(plan, tmp_path / "logs")
    state = StackState("c", "events", "p", "r", "n", "b", {}, "d", "s", None, services=[service])
    (tmp_path / STATE_FILE).write_text(state.to_json(), encoding="utf-8")
    try:
        yield service
    finally:
        if group_alive(service.pid):
            stop_group(service)


def start_following(state_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "devstack", "--state-dir", str(state_dir), "logs", "probe", "-f"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.timeout(60)  # readline blocks until the line comes: the bound of these tests
@pytest.mark.parametrize("how", ["down", "died"])
def test_logs_follow_prints_new_lines_and_ends_when_the_stack_stops(
    how: str, one_service_stack: RunningService, tmp_path: Path
) -> None:
    follower = start_following(tmp_path)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "started\n"
        with one_service_stack.log.open("a", encoding="utf-8") as log:
            log.write("written later\n")
        assert follower.stdout.readline() == "written later\n"

        stop_group(one_service_stack)
        if how == "down":
            (tmp_path / STATE_FILE).unlink()
        _, stderr = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()

    assert follower.returncode == 0, stderr
    assert stderr == "devstack: the stack stopped; no more lines will come\n"


@pytest.mark.timeout(60)
def test_logs_follow_stops_cleanly_on_ctrl_c(
    one_service_stack: RunningService, tmp_path: Path
) -> None:
    follower = start_following(tmp_path)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "started\n"
        follower.send_signal(signal.SIGINT)
        _, stderr = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()

    assert follower.returncode == 0
    assert stderr == ""  # no traceback, no message
    assert group_alive(one_service_stack.pid)  # following never stops the stack


@pytest.mark.parametrize(
    ("name", "hint"),
    [("prbe", "did you mean 'probe'?"), ("predict", "services: probe")],
)
def test_an_unknown_service_name_gets_the_one_it_resembles_or_the_list(
    name: str, hint: str, one_service_stack: RunningService, tmp_path: Path
) -> None:
    shown = devstack(tmp_path, "logs", name)

    assert shown.returncode == 1
    assert shown.stderr == f"devstack: error: no service '{name}' in this stack; {hint}\n"


# --- on a real stack -------------------------------------------------------------------


@pytest.fixture(scope="module")
def champion_run(
    local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    data = separable_csv(tmp_path_factory.mktemp("cli-data") / "cli.csv")
    uploaded = devstack(local_stack.state_dir, "upload", str(data), "--wait")
    assert uploaded.returncode == 0, uploaded.stderr
    summary: dict[str, Any] = json.loads(uploaded.stdout.splitlines()[-1])
    return summary


@ON_EVENTS_STACK
def test_status_reports_every_service_the_champion_and_the_run(
    local_stack: LocalStack, champion_run: dict[str, Any]
) -> None:
    as_json = devstack(local_stack.state_dir, "status", "--json")
    as_text = devstack(local_stack.state_dir, "status")

    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["healthy"] is True
    recorded = {service.name: service for service in local_stack.state.services}
    assert [item["name"] for item in document["services"]] == list(recorded)
    for item in document["services"]:
        assert (item["pid"], item["port"]) == (
            recorded[item["name"]].pid,
            recorded[item["name"]].port,
        )
        assert item["state"] == "healthy" and item["processes"] >= 1 and item["rss_bytes"] > 0
    assert document["champion"]["model_version"] == champion_run["champion_version"]
    assert document["serving"]["model_version"] == champion_run["champion_version"]
    assert document["latest_runs"][0]["object"] == "raw/cli.csv"
    assert as_text.returncode == 0, as_text.stderr
    assert f"champion: {champion_run['champion_version']} (" in as_text.stdout
    assert "SERVICE" in as_text.stdout and "raw/cli.csv" in as_text.stdout


@ON_EVENTS_STACK
def test_runs_prints_a_table_with_a_header_or_json(
    local_stack: LocalStack, champion_run: dict[str, Any]
) -> None:
    table = devstack(local_stack.state_dir, "runs")
    listed = devstack(local_stack.state_dir, "runs", "--json")

    assert table.returncode == 0 and listed.returncode == 0, table.stderr + listed.stderr
    assert table.stdout.splitlines()[0].split() == [
        "OBJECT",
        "GENERATION",
        "UPLOADED",
        "STATE",
        "DETAIL",
    ]
    row = next(row for row in json.loads(listed.stdout) if row["object"] == "raw/cli.csv")
    assert row["generation"] == champion_run["generation"]
    assert row["state"] == "trained"
    assert row["uploaded_at"].endswith("+00:00")
    assert champion_run["model_version"] in row["detail"]


@ON_EVENTS_STACK
def test_predict_reads_the_request_from_a_file_or_standard_input(
    local_stack: LocalStack, champion_run: dict[str, Any], tmp_path: Path
) -> None:
    request = json.dumps({"instances": [dict.fromkeys(FEATURES, 0.0)]})
    path = tmp_path / "request.json"
    path.write_text(request, encoding="utf-8")

    from_file = devstack(local_stack.state_dir, "predict", f"@{path}")
    from_stdin = devstack(local_stack.state_dir, "predict", "-", stdin=request)
    missing = devstack(local_stack.state_dir, "predict", f"@{tmp_path / 'absent.json'}")

    for answer in (from_file, from_stdin):
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout)["model_version"] == champion_run["champion_version"]
    assert missing.returncode == 1
    assert missing.stderr == (
        f"devstack: error: payload file {tmp_path / 'absent.json'} does not exist\n"
    )


def venv_with_the_project_installed(directory: Path) -> Path:
    """A fresh virtualenv that sees this environment's packages (a .pth) but gets the
    project only through its own editable install: `make venv`'s step, checked without
    installing anything into the environment these tests run in (it may be shared)."""
    venv = directory / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    (Path(site_packages) / "outer-environment.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n", encoding="utf-8"
    )
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"),
            *("--no-deps", "--no-build-isolation", "--no-index", "-e", str(REPO_ROOT)),
        ],
        capture_output=True,
        check=True,
        timeout=300,
    )
    return python


@ON_EVENTS_STACK
def test_the_editable_install_runs_the_commands_from_any_directory(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    python = venv_with_the_project_installed(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # argparse wraps help at the terminal width, also inside a path at a dash.
    environment["COLUMNS"] = "10000"

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(python), *argv],
            cwd=elsewhere,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    imported = run("-c", "import components, devstack, pipeline_core; print(devstack.__file__)")
    helped = run("-m", "devstack", "--help")
    reported = run("-m", "devstack", "--state-dir", str(local_stack.state_dir), "status", "--json")
    private = run("-c", "import tests")

    assert imported.stdout.strip() == str(REPO_ROOT / "devstack" / "__init__.py"), imported.stderr
    assert helped.returncode == 0, helped.stderr
    # The defaults are the checkout's, not the current directory's.
    assert str(REPO_ROOT / ".devstack") in " ".join(helped.stdout.split())
    assert reported.returncode == 0, reported.stderr
    assert json.loads(reported.stdout)["healthy"] is True
    assert "No module named 'tests'" in private.stderr  # only the declared packages
