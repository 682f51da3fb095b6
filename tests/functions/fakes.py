"""Fakes of the ports the core does not ship a fake for (publisher, executions), and a
bucket that stages races."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline_core.errors import TransientError
from pipeline_core.storage import InMemoryStorage, StoredObject


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


class InterleavedStorage(InMemoryStorage):
    """Stages one interleaving of concurrent attempts, deterministically: a cue runs an
    action (another attempt) just before a given call on a given object."""

    def __init__(self, bucket: str = "test-bucket") -> None:
        super().__init__(bucket)
        self._cues: list[tuple[str, str, Callable[[], object]]] = []

    def before(
        self, operation: str, name: str, action: Callable[[], object], *, skip: int = 0
    ) -> None:
        """Run ``action`` once, before the call of ``operation`` ("read", "write",
        "delete") on ``name`` that follows ``skip`` such calls."""
        self._cues.extend([(operation, name, _nothing)] * skip + [(operation, name, action)])

    def _cue(self, operation: str, name: str) -> None:
        for cue in self._cues:
            if cue[:2] == (operation, name):
                self._cues.remove(cue)
                cue[2]()
                return

    def read(self, name: str, generation: int | None = None) -> StoredObject:
        self._cue("read", name)
        return super().read(name, generation)

    def write(
        self,
        name: str,
        data: bytes,
        *,
        content_type: str,
        if_generation_match: int | None = None,
    ) -> int:
        self._cue("write", name)
        return super().write(
            name, data, content_type=content_type, if_generation_match=if_generation_match
        )

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        self._cue("delete", name)
        super().delete(name, if_generation_match=if_generation_match)


def _nothing() -> None:
    return None
