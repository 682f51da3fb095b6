"""Fakes of the core's ports (a bucket, the publisher, executions), and a bucket that
stages races. They live with the tests so that none ships in the deployed archive."""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from pipeline_core.errors import ObjectNotFoundError, TransientError
from pipeline_core.storage import ObjectInfo, StoredObject, check_generation, not_found_message


class InMemoryStorage:
    """A bucket in memory with GCS semantics for generations and preconditions.

    Like a bucket without object versioning, only the live generation is readable.
    """

    def __init__(self, bucket: str = "test-bucket") -> None:
        self.bucket = bucket
        self._objects: dict[str, StoredObject] = {}
        self.content_types: dict[str, str] = {}
        self._generations = itertools.count(1_700_000_000_000_001)
        self._lock = threading.Lock()

    def names(self, prefix: str = "") -> list[str]:
        return sorted(name for name in self._objects if name.startswith(prefix))

    def stat(self, name: str) -> ObjectInfo | None:
        stored = self._objects.get(name)
        if stored is None:
            return None
        return ObjectInfo(name, stored.generation, len(stored.data))

    @contextmanager
    def open_read(self, name: str, generation: int) -> Iterator[IO[bytes]]:
        yield io.BytesIO(self.read(name, generation).data)

    def read(self, name: str, generation: int | None = None) -> StoredObject:
        stored = self._objects.get(name)
        if stored is None or generation not in (None, stored.generation):
            raise ObjectNotFoundError(not_found_message(self.bucket, name, generation))
        return stored

    def read_range(self, name: str, start: int, size: int) -> bytes:
        return self.read(name).data[start : start + max(size, 0)]

    def write(
        self,
        name: str,
        data: bytes,
        *,
        content_type: str,
        if_generation_match: int | None = None,
    ) -> int:
        with self._lock:
            self._check(name, if_generation_match)
            stored = StoredObject(bytes(data), next(self._generations))
            self._objects[name] = stored
            self.content_types[name] = content_type
            return stored.generation

    @contextmanager
    def open_write(self, name: str, *, content_type: str) -> Iterator[IO[bytes]]:
        buffer = io.BytesIO()
        yield buffer
        self.write(name, buffer.getvalue(), content_type=content_type)

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        with self._lock:
            if name not in self._objects:
                return
            self._check(name, if_generation_match)
            del self._objects[name]

    def delete_version(self, name: str, generation: int) -> None:
        # No versions are kept: only the live generation can be deleted.
        with self._lock:
            stored = self._objects.get(name)
            if stored is not None and stored.generation == generation:
                del self._objects[name]

    def _check(self, name: str, if_generation_match: int | None) -> None:
        stored = self._objects.get(name)
        check_generation(self.bucket, name, stored.generation if stored else 0, if_generation_match)


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

    def delete_version(self, name: str, generation: int) -> None:
        self._cue("delete", name)
        super().delete_version(name, generation)


def _nothing() -> None:
    return None
