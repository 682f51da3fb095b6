"""Values of a workflow definition that may contain expressions.

A string that is exactly ``${...}`` is an expression and keeps the type of its result;
any other string is a literal, even one containing ``${`` (Workflows does not
interpolate inside longer strings). Lists and maps are walked so expressions may sit
at any depth, and map keys may be expressions too.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from workflows_emulator.errors import WorkflowError
from workflows_emulator.expressions import Node, Scope, evaluate, parse_expression, walk
from workflows_emulator.values import type_name


def expression_text(value: Any) -> str | None:
    """The inside of ``${...}`` when ``value`` is an expression string, else None."""
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        return value[2:-1]
    return None


class Template(ABC):
    @abstractmethod
    def evaluate(self, scope: Scope) -> Any: ...

    def nodes(self) -> Iterator[Node]:
        """Every expression node inside, for validation."""
        return iter(())


@dataclass(frozen=True)
class LiteralTemplate(Template):
    value: Any

    def evaluate(self, scope: Scope) -> Any:
        # Literal lists and maps are copied so a workflow cannot alter its own source.
        return copy.deepcopy(self.value)


@dataclass(frozen=True)
class ExpressionTemplate(Template):
    text: str
    node: Node

    def evaluate(self, scope: Scope) -> Any:
        return evaluate(self.node, scope)

    def nodes(self) -> Iterator[Node]:
        return walk(self.node)


@dataclass(frozen=True)
class ListTemplate(Template):
    items: tuple[Template, ...]

    def evaluate(self, scope: Scope) -> Any:
        return [item.evaluate(scope) for item in self.items]

    def nodes(self) -> Iterator[Node]:
        for item in self.items:
            yield from item.nodes()


@dataclass(frozen=True)
class MapTemplate(Template):
    entries: tuple[tuple[str | ExpressionTemplate, Template], ...]

    def evaluate(self, scope: Scope) -> Any:
        result: dict[str, Any] = {}
        for key, value in self.entries:
            name = key if isinstance(key, str) else key.evaluate(scope)
            if not isinstance(name, str):
                raise WorkflowError.tagged(
                    "TypeError", f"map key expression gave {type_name(name)}, not a string"
                )
            result[name] = value.evaluate(scope)
        return result

    def nodes(self) -> Iterator[Node]:
        for key, value in self.entries:
            if isinstance(key, ExpressionTemplate):
                yield from key.nodes()
            yield from value.nodes()


def compile_template(value: Any) -> Template:
    """Build a template; raises ExpressionSyntaxError for a bad expression."""
    text = expression_text(value)
    if text is not None:
        return ExpressionTemplate(text, parse_expression(text))
    if isinstance(value, list):
        if not any(_has_expression(item) for item in value):
            return LiteralTemplate(_plain(value))
        return ListTemplate(tuple(compile_template(item) for item in value))
    if isinstance(value, dict):
        if not _has_expression(value):
            return LiteralTemplate(_plain(value))
        entries: list[tuple[str | ExpressionTemplate, Template]] = []
        for key, item in value.items():
            key_text = expression_text(key)
            compiled_key: str | ExpressionTemplate = (
                key
                if key_text is None
                else ExpressionTemplate(key_text, parse_expression(key_text))
            )
            entries.append((compiled_key, compile_template(item)))
        return MapTemplate(tuple(entries))
    return LiteralTemplate(value)


def _has_expression(value: Any) -> bool:
    if expression_text(value) is not None:
        return True
    if isinstance(value, list):
        return any(_has_expression(item) for item in value)
    if isinstance(value, dict):
        return any(expression_text(k) is not None or _has_expression(v) for k, v in value.items())
    return False


def _plain(value: Any) -> Any:
    """Strip the line-tracking subclasses so runtime values are plain lists and dicts."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
