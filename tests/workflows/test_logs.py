"""The served engine's log: execution events, every step and every ``sys.log`` call as
JSON lines (what ``python -m devstack logs workflows`` shows)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud.workflows.executions_v1.types import Execution

from tests.workflows.test_api import PARENT, serving_files, wait_until_done
from workflows_emulator import logs

LOGGING_WORKFLOW = """\
main:
  params: [args]
  steps:
    - say_text:
        call: sys.log
        args:
          text: ${"hello " + args.name}
          severity: WARNING
    - say_map:
        call: sys.log
        args:
          json: {rows: 3, stage: process_data}
    - fail:
        raise:
          message: stage failed
          tags: [StageError]
"""
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture
def engine_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logs.configure(stream)
    yield stream
    logging.getLogger(logs.LOGGER_NAME).removeHandler(handler)


def test_steps_sys_log_and_the_outcome_are_logged_per_execution(
    tmp_path: Path, engine_log: io.StringIO
) -> None:
    with serving_files(tmp_path, {"talk": LOGGING_WORKFLOW}) as client:
        created = client.create_execution(
            parent=f"{PARENT}/talk", execution=Execution(argument='{"name": "ada"}')
        )
        assert wait_until_done(client, created.name).state == Execution.State.FAILED
    execution_id = created.name.rsplit("/", 1)[-1]
    lines: list[dict[str, Any]] = [json.loads(line) for line in engine_log.getvalue().splitlines()]
    ours = [line for line in lines if line.get("execution_id") == execution_id]
    assert [line["message"] for line in ours] == [
        "execution started",
        "step say_text",
        "hello ada",
        "step say_map",
        '{"rows": 3, "stage": "process_data"}',
        "step fail",
        "execution failed",
    ]
    assert all(line["workflow"] == "talk" and RFC3339_UTC.fullmatch(line["time"]) for line in ours)
    _, text_step, text, _, mapped, _, failed = ours
    assert (text_step["routine"], text_step["step"]) == ("main", "say_text")
    assert (text["severity"], text["source"]) == ("WARNING", "sys.log")
    assert (mapped["severity"], mapped["json"]) == ("DEFAULT", {"rows": 3, "stage": "process_data"})
    assert failed["severity"] == "ERROR" and failed["state"] == "FAILED"
    assert failed["error"]["tags"] == ["StageError"]
    assert isinstance(failed["duration_ms"], float)


def test_a_cancelled_execution_logs_its_end(tmp_path: Path, engine_log: io.StringIO) -> None:
    waiting = "main:\n  steps:\n    - wait:\n        call: sys.sleep\n        args: {seconds: 30}\n"
    with serving_files(tmp_path, {"wait": waiting}) as client:
        created = client.create_execution(parent=f"{PARENT}/wait", execution=Execution())
        client.cancel_execution(name=created.name)
    ends = [
        json.loads(line)
        for line in engine_log.getvalue().splitlines()
        if '"execution cancelled"' in line
    ]
    assert [end["state"] for end in ends] == ["CANCELLED"]
