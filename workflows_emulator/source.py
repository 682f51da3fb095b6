"""Loads workflow YAML/JSON source keeping the line of every map and list.

Validation errors must name the line of the offending step, which plain ``yaml.safe_load``
forgets, so the source is composed into nodes and rebuilt as ``SourceMap``/``SourceList``
(ordinary dicts and lists that also carry their line numbers).
"""

from __future__ import annotations

from typing import Any

import yaml

from workflows_emulator.errors import DefinitionError

_PLAIN_SCALARS = (str, int, float, bool, type(None))


class SourceMap(dict[str, Any]):
    """A YAML mapping with the 1-based line of itself and of each of its keys."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class SourceList(list[Any]):
    """A YAML sequence with the 1-based line of itself and of each of its items."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


def line_of(value: Any, default: int | None = None) -> int | None:
    return getattr(value, "line", default)


def load_source(text: str, filename: str) -> Any:
    """Parse YAML (JSON is a subset) into plain values with line information."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise DefinitionError("the workflow source is empty", filename=filename)
        return _build(loader, node, filename)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        raise DefinitionError(
            f"invalid YAML: {error.problem or error}", line=line, filename=filename
        ) from error
    finally:
        loader.dispose()


def _build(loader: yaml.SafeLoader, node: yaml.Node, filename: str) -> Any:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        mapping = SourceMap(line)
        for key_node, value_node in node.value:
            key = _build(loader, key_node, filename)
            key_line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                # Workflows map keys are strings; YAML would happily make 1 or true a key.
                key = _scalar_text(key_node)
            if key in mapping:
                raise DefinitionError(f"duplicate key '{key}'", line=key_line, filename=filename)
            mapping[key] = _build(loader, value_node, filename)
            mapping.key_lines[key] = key_line
        return mapping
    if isinstance(node, yaml.SequenceNode):
        sequence = SourceList(line)
        for item in node.value:
            sequence.append(_build(loader, item, filename))
            sequence.item_lines.append(item.start_mark.line + 1)
        return sequence
    value = loader.construct_object(node, deep=True)
    if isinstance(value, _PLAIN_SCALARS):
        return value
    # Timestamps and other YAML-only types do not exist in Workflows: keep the text.
    return _scalar_text(node)


def _scalar_text(node: yaml.Node) -> str:
    return str(node.value)
