"""Structured JSON logs that Cloud Logging parses from stdout.

Cloud Logging reads ``severity`` and ``message`` from a JSON line; every other key lands
in ``jsonPayload``. Event and execution ids of the request being handled are attached
to each line through a context variable, so the core never passes them around.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, TextIO

_context: ContextVar[dict[str, str]] = ContextVar("log_context", default={})  # noqa: B039
_stream: list[TextIO] = []


def set_stream(stream: TextIO | None) -> None:
    """Send logs to ``stream`` (tests); ``None`` restores stdout."""
    _stream.clear()
    if stream is not None:
        _stream.append(stream)


@contextlib.contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Attach ids (event_id, execution_id, ...) to every line logged inside the block."""
    merged = {**_context.get(), **{key: value for key, value in ids.items() if value}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def log(severity: str, message: str, **fields: Any) -> None:
    entry: dict[str, Any] = {"severity": severity, "message": message}
    entry.update(_context.get())
    entry.update(fields)
    stream = _stream[0] if _stream else sys.stdout
    stream.write(json.dumps(entry, default=str, sort_keys=True) + "\n")
    stream.flush()


def info(message: str, **fields: Any) -> None:
    log("INFO", message, **fields)


def warning(message: str, **fields: Any) -> None:
    log("WARNING", message, **fields)


def error(message: str, **fields: Any) -> None:
    log("ERROR", message, **fields)
