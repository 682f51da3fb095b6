"""The served engine's log: one JSON line per execution event, step and ``sys.log`` call.

Cloud Workflows writes ``sys.log`` entries to Cloud Logging with the execution's id
and, with call logging on, an entry per step; here the same go to ``serve``'s standard
output (the local stack keeps it as the log ``python -m devstack logs workflows``
shows), shaped like the functions' lines: ``time`` (RFC 3339, UTC), ``severity``,
``message`` plus ``workflow``, ``execution_id`` and the event's fields.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, TextIO

LOGGER_NAME = "workflows_emulator"
# sys.log severities as logging levels (logging has no NOTICE, ALERT or EMERGENCY).
SEVERITY_LEVELS = {
    "DEFAULT": logging.INFO,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "NOTICE": logging.INFO + 5,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "ALERT": logging.CRITICAL + 10,
    "EMERGENCY": logging.CRITICAL + 20,
}


def event(message: str, *, severity: str = "INFO", **fields: Any) -> None:
    """Log one line; ``fields`` become keys of the JSON line."""
    logging.getLogger(LOGGER_NAME).log(
        SEVERITY_LEVELS[severity], message, extra={"fields": fields, "severity": severity}
    )


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "severity": getattr(record, "severity", record.levelname),
            "message": record.getMessage(),
            "logger": record.name,
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, sort_keys=True)


def configure(stream: TextIO) -> logging.Handler:
    """Send the engine's and the API's records to ``stream`` as JSON lines; returns the
    handler, for a caller that stops logging there (tests)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLinesFormatter())
    engine = logging.getLogger(LOGGER_NAME)
    engine.addHandler(handler)
    engine.setLevel(logging.INFO)
    engine.propagate = False
    return handler
