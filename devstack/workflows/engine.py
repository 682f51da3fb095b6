"""Runs a Cloud Workflows program: the public face of the local engine.

``WorkflowProgram.from_source`` parses and validates a definition (raising
``DefinitionError``); ``run`` executes it with an ``ExecutionContext`` and returns the
result, raises ``WorkflowError`` for an uncaught error or ``Cancelled``.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.workflows.errors import DefinitionError, WorkflowError

__all__ = [
    "Cancelled",
    "DefinitionError",
    "ExecutionContext",
    "WorkflowError",
    "WorkflowProgram",
]


class Cancelled(Exception):  # noqa: N818 - the name is part of the shared contract
    """The execution was cancelled through ``ExecutionContext.cancel_event``."""


@dataclass
class ExecutionContext:
    workflow_id: str = "workflow"
    execution_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    project_id: str = "local-project"
    location: str = "us-central1"
    # User env vars (sys.get_env); the engine adds the GOOGLE_CLOUD_* built-ins.
    env: Mapping[str, str] = field(default_factory=dict)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    # (subworkflow name, step name) as each step starts (feeds status.currentSteps).
    on_step: Callable[[str, str], None] | None = None
    # Each sys.log entry {"severity", "text"/"json", ...}.
    on_log: Callable[[dict[str, Any]], None] | None = None
    pubsub_emulator_host: str | None = field(
        default_factory=lambda: os.environ.get("PUBSUB_EMULATOR_HOST")
    )


class WorkflowProgram:
    """A parsed and validated workflow definition."""

    def __init__(self, source: str, filename: str) -> None:
        self.source = source
        self.filename = filename

    @classmethod
    def from_source(cls, source: str, *, filename: str = "<workflow>") -> WorkflowProgram:
        return cls(source, filename)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> WorkflowProgram:
        file = Path(path)
        return cls.from_source(file.read_text(encoding="utf-8"), filename=str(file))

    def run(self, argument: Any = None, *, context: ExecutionContext | None = None) -> Any:
        raise NotImplementedError("engine under construction")
