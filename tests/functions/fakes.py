"""Fakes of the ports the core does not ship a fake for (publisher, executions)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline_core.errors import TransientError


@dataclass
class InMemoryPublisher:
    messages: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)

    def publish(self, topic: str, message: Mapping[str, Any], attributes: Mapping[str, str]) -> str:
        # A JSON round trip, so a message that could not be published cannot pass here.
        self.messages.append((topic, json.loads(json.dumps(message)), dict(attributes)))
        return str(len(self.messages))

    def to(self, topic: str) -> list[dict[str, Any]]:
        return [message for name, message, _ in self.messages if name == topic]


@dataclass
class RecordingStarter:
    """Starts nothing; remembers what it was asked to start. ``failures`` calls fail first."""

    failures: int = 0
    started: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def start(self, workflow: str, argument: Mapping[str, Any]) -> str:
        if self.failures:
            self.failures -= 1
            raise TransientError("Workflows API unavailable (fake)")
        self.started.append((workflow, dict(argument)))
        return f"{workflow}/executions/exec-{len(self.started)}"
