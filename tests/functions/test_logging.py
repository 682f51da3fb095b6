"""Log lines as Cloud Logging and Error Reporting read them, field by field, and the
fields the log-based metrics are built on (docs/FUNCTIONS.md, "Logs")."""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_core import logging as log
from pipeline_core.cleaning import TOO_FEW_ROWS
from pipeline_core.contract import PromotionPolicy
from pipeline_core.errors import DataRejectedError
from pipeline_core.processing import DatasetSchema, process
from pipeline_core.registry import ModelRegistry
from pipeline_core.settings import TrainingSettings
from pipeline_core.training import train_smoke_and_promote
from tests.functions.conftest import (
    IRIS,
    PROJECT,
    Function,
    log_lines,
    processed_request,
    upload,
)
from tests.functions.fakes import InMemoryStorage

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_HEX = "00f067aa0ba902b7"
SETTINGS = TrainingSettings(
    project="p", data_bucket="test-bucket", hyperparameters={"n_estimators": 10}
)


@pytest.fixture
def installed(captured_logs: io.StringIO) -> Iterator[io.StringIO]:
    """The module as a function's main.py installs it; restored afterwards."""
    previous = warnings.showwarning
    log.install(function="process_data", project=PROJECT)
    yield captured_logs
    log.install(function=None, project=None)
    warnings.showwarning = previous


def only_line(stream: io.StringIO) -> dict[str, Any]:
    lines = log_lines(stream)
    assert len(lines) == 1, lines
    return lines[0]


def test_every_line_has_an_rfc3339_utc_time_and_the_function_label(
    installed: io.StringIO,
) -> None:
    log.info("hello", model_version="v1", rows=3)
    line = only_line(installed)
    assert RFC3339_UTC.fullmatch(line["time"])
    assert datetime.fromisoformat(line["time"]).tzinfo == UTC
    assert (line["severity"], line["message"], line["rows"]) == ("INFO", "hello", 3)
    assert line[log.LABELS_FIELD] == {"function": "process_data", "model_version": "v1"}
    assert log.TRACE_FIELD not in line  # no request, no trace


def test_the_timestamp_keeps_microseconds_and_zero_pads() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 60, tzinfo=UTC)
    assert log.timestamp(moment) == "2026-01-02T03:04:05.000060Z"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{TRACE_ID}-{SPAN_HEX}-01", log.TraceContext(TRACE_ID, SPAN_HEX, True)),
        (f"00-{TRACE_ID}-{SPAN_HEX}-00", log.TraceContext(TRACE_ID, SPAN_HEX, False)),
        (f" 00-{TRACE_ID}-{SPAN_HEX}-03 ", log.TraceContext(TRACE_ID, SPAN_HEX, True)),
        # A later version may append fields; version 00 may not.
        (f"01-{TRACE_ID}-{SPAN_HEX}-01-extra", log.TraceContext(TRACE_ID, SPAN_HEX, True)),
        (f"00-{TRACE_ID}-{SPAN_HEX}-01-extra", None),
        (f"ff-{TRACE_ID}-{SPAN_HEX}-01", None),
        (f"00-{'0' * 32}-{SPAN_HEX}-01", None),
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),
        (f"00-{TRACE_ID.upper()}-{SPAN_HEX}-01", None),  # the spec allows lowercase only
        (f"00-{TRACE_ID[:-1]}-{SPAN_HEX}-01", None),
        (f"00-{TRACE_ID}-{SPAN_HEX}", None),
        (f"00_{TRACE_ID}_{SPAN_HEX}_01", None),
        ("", None),
        (None, None),
    ],
)
def test_traceparent(header: str | None, expected: log.TraceContext | None) -> None:
    assert log.parse_traceparent(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"{TRACE_ID}/1;o=1", log.TraceContext(TRACE_ID, "0000000000000001", True)),
        (f"{TRACE_ID}/18446744073709551615;o=0", log.TraceContext(TRACE_ID, "f" * 16, False)),
        (f"{TRACE_ID.upper()}/255", log.TraceContext(TRACE_ID, "00000000000000ff", False)),
        (f"{TRACE_ID};o=1", log.TraceContext(TRACE_ID, None, True)),
        (f"{TRACE_ID}/0;o=1", log.TraceContext(TRACE_ID, None, True)),
        (f"{TRACE_ID}/18446744073709551616;o=1", None),  # beyond 64 bits
        (f"{TRACE_ID}/12ab;o=1", None),
        (f"{TRACE_ID}/1;o=x", None),
        (f"{TRACE_ID[:-1]}/1;o=1", None),
        (f"{'0' * 32}/1;o=1", None),
        ("not-a-trace", None),
        (None, None),
    ],
)
def test_x_cloud_trace_context(header: str | None, expected: log.TraceContext | None) -> None:
    assert log.parse_cloud_trace_context(header) == expected


@settings(deadline=None)
@given(st.text(max_size=80))
def test_no_header_value_makes_the_parsers_fail(header: str) -> None:
    for parsed in (log.parse_traceparent(header), log.parse_cloud_trace_context(header)):
        assert parsed is None or re.fullmatch("[0-9a-f]{32}", parsed.trace_id)


def traced(installed: io.StringIO, **headers: str) -> dict[str, Any]:
    with log.log_context(**headers):
        log.info("traced")
    line = only_line(installed)
    installed.truncate(0)
    installed.seek(0)
    return line


def test_traceparent_wins_and_a_malformed_one_falls_back_to_the_cloud_header(
    installed: io.StringIO,
) -> None:
    cloud = f"{'a' * 32}/7;o=1"
    both = traced(installed, traceparent=f"00-{TRACE_ID}-{SPAN_HEX}-00", cloud_trace_context=cloud)
    assert both[log.TRACE_FIELD] == f"projects/{PROJECT}/traces/{TRACE_ID}"
    assert (both[log.SPAN_FIELD], both[log.SAMPLED_FIELD]) == (SPAN_HEX, False)
    fallback = traced(installed, traceparent="00-garbage", cloud_trace_context=cloud)
    assert fallback[log.TRACE_FIELD] == f"projects/{PROJECT}/traces/{'a' * 32}"
    assert (fallback[log.SPAN_FIELD], fallback[log.SAMPLED_FIELD]) == (f"{7:016x}", True)
    neither = traced(installed, traceparent="00-garbage", cloud_trace_context="nope")
    assert {log.TRACE_FIELD, log.SPAN_FIELD, log.SAMPLED_FIELD}.isdisjoint(neither)


def test_a_trace_without_a_span_has_no_span_field(installed: io.StringIO) -> None:
    line = traced(installed, cloud_trace_context=f"{TRACE_ID};o=1")
    assert line[log.TRACE_FIELD].endswith(TRACE_ID) and log.SPAN_FIELD not in line


def test_an_inner_context_keeps_the_outer_trace(installed: io.StringIO) -> None:
    with log.log_context(traceparent=f"00-{TRACE_ID}-{SPAN_HEX}-01"):
        line = traced(installed, model_version="v2")
    assert line[log.SPAN_FIELD] == SPAN_HEX and line["model_version"] == "v2"


def test_an_http_function_puts_the_request_trace_on_its_lines(
    function: type[Function], storage: InMemoryStorage, captured_logs: io.StringIO
) -> None:
    client = function("process_data", "http").use(storage=storage).client
    headers = {
        "X-Cloud-Trace-Context": f"{TRACE_ID}/12345;o=1",
        "X-Workflow-Execution-Id": "exec-1",
    }
    assert client.post("/", data=b"", headers=headers).status_code == 400
    line = only_line(captured_logs)
    assert line["severity"] == "WARNING"
    assert line[log.TRACE_FIELD] == f"projects/{PROJECT}/traces/{TRACE_ID}"
    assert line[log.SPAN_FIELD] == f"{12345:016x}"
    assert line[log.SAMPLED_FIELD] is True
    assert line["execution_id"] == "exec-1"
    assert RFC3339_UTC.fullmatch(line["time"])


def test_a_cloudevent_function_takes_the_trace_from_the_traceparent_extension(
    function: type[Function], storage: InMemoryStorage, captured_logs: io.StringIO
) -> None:
    client = function("trigger_workflow", "cloudevent").use(storage=storage).client
    headers = {
        "ce-id": "event-1",
        "ce-source": "//pubsub.googleapis.com/projects/p/topics/t",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-specversion": "1.0",
        "ce-traceparent": f"00-{TRACE_ID}-{SPAN_HEX}-00",
    }
    response = client.post("/", json={"message": {"data": "bm90IGpzb24="}}, headers=headers)
    assert response.status_code == 200  # a malformed notification is acknowledged
    line = only_line(captured_logs)
    assert line["severity"] == "ERROR"
    assert (line["event_id"], line[log.SPAN_FIELD]) == ("event-1", SPAN_HEX)
    assert line[log.TRACE_FIELD] == f"projects/{PROJECT}/traces/{TRACE_ID}"
    assert line[log.SAMPLED_FIELD] is False


class ExplodingStorage(InMemoryStorage):
    def stat(self, name: str) -> Any:
        raise RuntimeError("disk on fire")


def test_an_unexpected_error_is_one_error_line_with_a_stack_trace(
    function: type[Function], captured_logs: io.StringIO
) -> None:
    client = function("process_data", "http").use(storage=ExplodingStorage("test-bucket")).client
    body = {"bucket": "test-bucket", "object": "raw/a.csv", "generation": "1"}
    assert client.post("/", json=body).status_code == 500
    line = only_line(captured_logs)
    assert line["severity"] == "ERROR" and "disk on fire" in line["message"]
    assert "traceback" not in line
    first, second, *frames = line["stack_trace"].splitlines()
    assert first == "RuntimeError: disk on fire"
    assert second == "Traceback (most recent call last):"
    assert any("in stat" in frame for frame in frames)
    assert frames[-1] == "RuntimeError: disk on fire"


def test_a_chained_exception_keeps_its_cause_in_the_stack_trace() -> None:
    try:
        try:
            raise KeyError("model")
        except KeyError as cause:
            raise ValueError("manifest unusable") from cause
    except ValueError as failure:
        trace = log.stack_trace(failure)
    assert trace.splitlines()[0] == "ValueError: manifest unusable"
    assert "KeyError: 'model'" in trace and "direct cause" in trace


def test_library_warnings_become_structured_warning_lines(installed: io.StringIO) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(
            "X has feature names, but the model was fitted without", UserWarning, stacklevel=1
        )
    line = only_line(installed)
    assert line["severity"] == "WARNING"
    assert line["message"] == "X has feature names, but the model was fitted without"
    assert line["category"] == "UserWarning"
    assert line["source"].startswith(__file__)
    assert RFC3339_UTC.fullmatch(line["time"])


def test_stdlib_logging_records_become_structured_lines(installed: io.StringIO) -> None:
    library = logging.getLogger("some.library")
    library.warning("retrying %s", "upload")
    try:
        raise OSError("connection reset")
    except OSError:
        library.exception("request failed")
    warning, failure = log_lines(installed)
    assert (warning["severity"], warning["message"]) == ("WARNING", "retrying upload")
    assert warning["logger"] == "some.library"
    assert failure["severity"] == "ERROR"
    assert failure["stack_trace"].startswith("OSError: connection reset\nTraceback")
    assert failure[log.LABELS_FIELD] == {"function": "process_data"}


def test_installing_twice_adds_one_handler(installed: io.StringIO) -> None:
    log.install(function="process_data", project=PROJECT)
    logging.getLogger("other").error("once")
    assert len(log_lines(installed)) == 1


# ---------------------------------------------------------------- the metrics contract


def lines_with(stream: io.StringIO, event: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(stream) if line.get("event") == event]


def test_a_promotion_logs_model_promoted_with_its_metric(
    storage: InMemoryStorage, captured_logs: io.StringIO
) -> None:
    outcome = train_smoke_and_promote(
        storage, processed_request(storage, "raw/a.csv", IRIS), SETTINGS
    )
    (line,) = lines_with(captured_logs, "model_promoted")
    manifest = ModelRegistry(storage).manifest(outcome["model_version"])
    assert line["model_version"] == outcome["model_version"]
    assert line["metric_name"] == "f1_macro"
    assert isinstance(line["metric_value"], float)
    assert line["metric_value"] == manifest["metrics"]["f1_macro"]
    assert line[log.LABELS_FIELD]["model_version"] == outcome["model_version"]


def test_a_refused_candidate_logs_no_promotion(
    storage: InMemoryStorage, captured_logs: io.StringIO
) -> None:
    strict = replace(SETTINGS, promotion=PromotionPolicy(minimum=1.01))
    outcome = train_smoke_and_promote(
        storage, processed_request(storage, "raw/a.csv", IRIS), strict
    )
    assert outcome["promoted"] is False
    assert lines_with(captured_logs, "model_promoted") == []
    (decided,) = [
        line for line in log_lines(captured_logs) if line["message"] == "promotion decided"
    ]
    assert decided["promoted"] is False and decided["duration_ms"] >= 0


def test_the_trained_line_carries_metrics_and_a_duration(
    storage: InMemoryStorage, captured_logs: io.StringIO
) -> None:
    outcome = train_smoke_and_promote(
        storage, processed_request(storage, "raw/a.csv", IRIS), SETTINGS
    )
    (trained,) = [
        line for line in log_lines(captured_logs) if line["message"] == "trained a candidate"
    ]
    assert trained["metrics"] == {key: outcome["metrics"][key] for key in ("accuracy", "f1_macro")}
    assert isinstance(trained["duration_ms"], float) and trained["duration_ms"] > 0
    (processed,) = [
        line for line in log_lines(captured_logs) if line["message"] == "processed upload"
    ]
    assert isinstance(processed["duration_ms"], float)


def test_a_rejected_upload_logs_upload_rejected_with_its_code(
    storage: InMemoryStorage, captured_logs: io.StringIO
) -> None:
    ref = upload(storage, "raw/tiny.csv", b"a,target\n1,x\n2,y\n")
    with pytest.raises(DataRejectedError):
        process(storage, ref, DatasetSchema())
    with pytest.raises(DataRejectedError):
        process(storage, ref, DatasetSchema())  # a retry returns the record: counted once
    (line,) = lines_with(captured_logs, "upload_rejected")
    assert line["reason"] == TOO_FEW_ROWS
    assert line["severity"] == "WARNING"
    assert (line["object"], line["rows_in"]) == ("raw/tiny.csv", 2)
    assert isinstance(line["duration_ms"], float)
