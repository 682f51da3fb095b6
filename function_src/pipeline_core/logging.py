"""Structured JSON logs that Cloud Logging and Error Reporting read from stdout.

Cloud Logging takes ``severity``, ``message``, ``time`` and the ``logging.googleapis.com/*``
keys (trace, span, labels) from a JSON line; every other key lands in ``jsonPayload``.
Event and execution ids and the trace of the request being handled are attached to each
line through context variables, so the core never passes them around. An error line
carries ``stack_trace``, which Error Reporting reads. ``install`` also routes the
``warnings`` module and stdlib ``logging`` records (the libraries') through here.

Only the standard library, and only modules every function has imported anyway: the
predict function's start-up budget counts every import (docs/FUNCTIONS.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"
SAMPLED_FIELD = "logging.googleapis.com/trace_sampled"
LABELS_FIELD = "logging.googleapis.com/labels"
TRACEPARENT_HEADER = "traceparent"
CLOUD_TRACE_HEADER = "X-Cloud-Trace-Context"

# W3C Trace Context: version-traceid-parentid-flags; later versions may append fields.
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?",
    re.ASCII,
)
# TRACE_ID/SPAN_ID;o=OPTIONS, the span a decimal 64-bit number, ";o=" optional.
_CLOUD_TRACE = re.compile(r"(?P<trace>[0-9a-fA-F]{32})(?:/(?P<span>\d{1,20}))?(?:;o=(?P<o>\d+))?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True)
class TraceContext:
    trace_id: str  # 32 lowercase hex digits
    span_id: str | None  # 16 lowercase hex digits, as Cloud Logging wants them
    sampled: bool


def parse_traceparent(value: str | None) -> TraceContext | None:
    """A W3C ``traceparent`` header, or None when it is absent or malformed (the spec
    says to ignore such a header, not to fail the request)."""
    match = _TRACEPARENT.fullmatch(value.strip()) if value else None
    if match is None or match["version"] == "ff":
        return None
    if match["version"] == "00" and match["rest"] is not None:
        return None  # version 00 has exactly four fields
    if match["trace"] == _ZERO_TRACE or match["span"] == _ZERO_SPAN:
        return None
    return TraceContext(match["trace"], match["span"], bool(int(match["flags"], 16) & 1))


def parse_cloud_trace_context(value: str | None) -> TraceContext | None:
    """Google's ``X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=OPTIONS``, or None."""
    match = _CLOUD_TRACE.fullmatch(value.strip()) if value else None
    if match is None or match["trace"] == _ZERO_TRACE:
        return None
    span = int(match["span"]) if match["span"] else 0
    if span >= 2**64:
        return None
    return TraceContext(
        match["trace"].lower(),
        f"{span:016x}" if span else None,
        match["o"] is not None and int(match["o"]) & 1 == 1,
    )


def _trace_of(traceparent: str | None, cloud_trace_context: str | None) -> TraceContext | None:
    """``traceparent`` first (the standard, which Cloud Run propagates), else
    ``X-Cloud-Trace-Context``; a malformed one counts as absent."""
    return parse_traceparent(traceparent) or parse_cloud_trace_context(cloud_trace_context)


@dataclass
class _Settings:
    function: str | None = None
    project: str | None = None
    stream: TextIO | None = None  # None: sys.stdout at the time of writing


_settings = _Settings()
_context: ContextVar[dict[str, str]] = ContextVar("log_context", default={})  # noqa: B039
# The raw trace headers (traceparent, X-Cloud-Trace-Context): parsed only when a line is
# written, so a request that logs nothing (most predictions) pays for no parsing.
_trace: ContextVar[tuple[str | None, str | None]] = ContextVar("log_trace", default=(None, None))


def set_stream(stream: TextIO | None) -> None:
    """Send logs to ``stream`` (tests); ``None`` restores stdout."""
    _settings.stream = stream


def install(*, function: str | None, project: str | None) -> None:
    """Label lines with the function, name traces in ``project``, and send the
    libraries' warnings and stdlib log records through this module (once per process)."""
    _settings.function = function or None
    _settings.project = project or None
    warnings.showwarning = _show_warning
    root = logging.getLogger()
    if not any(isinstance(handler, _StructuredHandler) for handler in root.handlers):
        root.addHandler(_StructuredHandler())


@contextlib.contextmanager
def log_context(
    *, traceparent: str | None = None, cloud_trace_context: str | None = None, **ids: str | None
) -> Iterator[None]:
    """Attach ids (event_id, execution_id, ...) and the trace of the request or event
    (its ``traceparent`` and ``X-Cloud-Trace-Context`` values, as received) to every
    line logged inside the block."""
    merged = {**_context.get(), **{key: value for key, value in ids.items() if value}}
    token = _context.set(merged)
    headers = (traceparent, cloud_trace_context)
    trace_token = _trace.set(headers if any(headers) else _trace.get())
    try:
        yield
    finally:
        _trace.reset(trace_token)
        _context.reset(token)


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC with microseconds, e.g. ``2026-12-01T22:45:47.123456Z``."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def started() -> float:
    """A start mark for ``elapsed_ms`` (monotonic: wall-clock steps do not count)."""
    return time.perf_counter()


def elapsed_ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


def log(severity: str, message: str, **fields: Any) -> None:
    entry: dict[str, Any] = {"severity": severity, "message": message, "time": timestamp()}
    entry.update(_context.get())
    entry.update(fields)
    _add_trace(entry, _trace_of(*_trace.get()))
    labels = {"function": _settings.function, "model_version": entry.get("model_version")}
    present = {key: str(value) for key, value in labels.items() if value}
    if present:
        entry[LABELS_FIELD] = present
    stream = _settings.stream or sys.stdout
    stream.write(json.dumps(entry, default=str, sort_keys=True) + "\n")
    stream.flush()


def _add_trace(entry: dict[str, Any], trace: TraceContext | None) -> None:
    if trace is None or _settings.project is None:
        return
    entry[TRACE_FIELD] = f"projects/{_settings.project}/traces/{trace.trace_id}"
    if trace.span_id is not None:
        entry[SPAN_FIELD] = trace.span_id
    entry[SAMPLED_FIELD] = trace.sampled


def info(message: str, **fields: Any) -> None:
    log("INFO", message, **fields)


def warning(message: str, **fields: Any) -> None:
    log("WARNING", message, **fields)


def error(message: str, **fields: Any) -> None:
    log("ERROR", message, **fields)


def exception(message: str, failure: BaseException, **fields: Any) -> None:
    """An ERROR line whose ``stack_trace`` Error Reporting groups by."""
    log("ERROR", message, stack_trace=stack_trace(failure), **fields)


def stack_trace(failure: BaseException) -> str:
    """The exception line (``ValueError: bad``) first, then the standard traceback: the
    shape Google's own logging library writes, which Error Reporting parses."""
    summary = traceback.format_exception_only(failure)[-1].rstrip("\n")
    return summary + "\n" + "".join(traceback.format_exception(failure)).rstrip("\n")


_SEVERITIES = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


class _StructuredHandler(logging.Handler):
    """stdlib ``logging`` records (Flask, google-cloud clients, ...) as our JSON lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[1] is not None:
                fields["stack_trace"] = stack_trace(record.exc_info[1])
            log(_SEVERITIES.get(record.levelno, "DEFAULT"), record.getMessage(), **fields)
        except Exception:  # a log line must never fail the request
            self.handleError(record)


def _show_warning(  # noqa: PLR0917 (the signature warnings.showwarning has)
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning``: a library's warning as one WARNING line."""
    warning(str(message), category=category.__name__, source=f"{filename}:{lineno}")
