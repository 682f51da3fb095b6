"""Errors of the local Workflows engine.

``WorkflowError`` is what a running workflow can catch with ``except``: its ``payload``
is the error map the workflow sees, with Workflows' tags. ``DefinitionError`` is a
problem in the workflow source, found before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class WorkflowError(Exception):
    """A Workflows runtime error, catchable by ``except``.

    ``payload`` is the error map the workflow sees: at least ``{"message": str, "tags":
    [str, ...]}``; an HttpError adds ``code`` (int), ``headers`` (map) and ``body``
    (decoded JSON or a string). A workflow that raises its own value (``raise: ...``)
    gets exactly that value back in ``except``, so ``payload`` may then be any value.
    """

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        # Where the error passed on its way out, innermost first: {routine, step, line}.
        self.stack: list[dict[str, Any]] = []
        super().__init__(describe_error(payload))

    def add_frame(self, routine: str, step: str, line: int) -> None:
        self.stack.append({"routine": routine, "step": step, "line": line})

    @classmethod
    def tagged(cls, tags: str | Iterable[str], message: str, **extra: Any) -> WorkflowError:
        """An error as the service raises it: a message, its tags and any extra fields."""
        tag_list = [tags] if isinstance(tags, str) else list(tags)
        return cls({"message": message, "tags": tag_list, **extra})

    @property
    def tags(self) -> list[str]:
        if isinstance(self.payload, Mapping):
            tags = self.payload.get("tags")
            if isinstance(tags, list):
                return [str(tag) for tag in tags]
        return []

    @property
    def message(self) -> str:
        if isinstance(self.payload, Mapping) and isinstance(self.payload.get("message"), str):
            return str(self.payload["message"])
        return describe_error(self.payload)


class Cancelled(Exception):  # noqa: N818 - the name is part of the shared contract
    """The execution was cancelled through ``ExecutionContext.cancel_event``."""


class DefinitionError(Exception):
    """Invalid workflow source (found before running); the message names the step and line."""

    def __init__(
        self,
        problem: str,
        *,
        step: str | None = None,
        line: int | None = None,
        filename: str = "<workflow>",
    ) -> None:
        self.problem = problem
        self.step = step
        self.line = line
        self.filename = filename
        where = filename
        if line is not None:
            where += f":{line}"
        if step is not None:
            where += f" (step '{step}')"
        super().__init__(f"{where}: {problem}")


def describe_error(payload: Any) -> str:
    """A one-line description of an error value, for logs and the CLI."""
    if isinstance(payload, Mapping):
        tags = payload.get("tags")
        message = payload.get("message")
        parts = []
        if isinstance(tags, list) and tags:
            parts.append("[" + ", ".join(str(tag) for tag in tags) + "]")
        if message is not None:
            parts.append(str(message))
        if parts:
            return " ".join(parts)
    if isinstance(payload, str):
        return payload  # `raise: "text"` raises the string itself; it is its own message
    return repr(payload)
