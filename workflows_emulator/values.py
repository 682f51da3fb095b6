"""The Workflows data types and the rules every operator and function shares.

Workflows values are null, boolean, integer (64-bit), double, string, bytes, list and
map (string keys). Python's ``bool`` is an ``int`` subclass, so every type test here
checks ``bool`` first: ``true == 1`` must be false, as in Workflows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from workflows_emulator.errors import WorkflowError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def type_name(value: Any) -> str:
    """The name ``get_type`` returns, also used in error messages."""
    for python_type, name in _TYPE_NAMES:
        if isinstance(value, python_type):
            return name
    raise TypeError(f"{type(value).__name__} is not a Workflows value")


# bool before int: bool is a subclass of int in Python.
_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (type(None), "null"),
    (bool, "boolean"),
    (int, "integer"),
    (float, "double"),
    (str, "string"),
    (bytes, "bytes"),
    (list, "list"),
    (dict, "map"),
)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def checked_int(value: int) -> int:
    """Integers are 64-bit in Workflows; leaving the range is an error, never a wrap."""
    if value < INT64_MIN or value > INT64_MAX:
        raise WorkflowError.tagged("ValueError", "integer overflow: result exceeds 64 bits")
    return value


def checked_double(value: float) -> float:
    if math.isnan(value) or math.isinf(value):
        raise WorkflowError.tagged("ValueError", "arithmetic result is not a finite double")
    return value


def values_equal(left: Any, right: Any) -> bool:
    """``==`` in Workflows: numbers compare by value across int/double; otherwise the
    types must match, and lists and maps compare element by element."""
    if is_number(left) and is_number(right):
        return bool(left == right)
    if type_name(left) != type_name(right):
        return False
    if isinstance(left, list):
        return len(left) == len(right) and all(
            values_equal(a, b) for a, b in zip(left, right, strict=True)
        )
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(values_equal(left[k], right[k]) for k in left)
    return bool(left == right)


def format_double(value: float) -> str:
    """Doubles print as the shortest text that reads back the same value."""
    if value.is_integer() and abs(value) < 1e16:
        return f"{value:.1f}"
    return repr(value)


def to_json_text(value: Any, *, indent: str | None = None, prefix: str = "") -> str:
    """JSON text of a Workflows value; bytes are not JSON (as in the service)."""
    _reject_bytes(value)
    text = json.dumps(value, ensure_ascii=False, indent=indent, separators=_separators(indent))
    if prefix:
        text = "\n".join(prefix + line for line in text.split("\n"))
    return text


def _separators(indent: str | None) -> tuple[str, str]:
    return (",", ": ") if indent is not None else (",", ":")


def _reject_bytes(value: Any) -> None:
    if isinstance(value, bytes):
        raise WorkflowError.tagged("TypeError", "bytes cannot be encoded as JSON")
    if isinstance(value, list):
        for item in value:
            _reject_bytes(item)
    elif isinstance(value, dict):
        for item in value.values():
            _reject_bytes(item)


def estimated_size(value: Any) -> int:
    """Approximate memory of a value in bytes, for the documented size limits."""
    if isinstance(value, str):
        return len(value.encode("utf-8")) + 2
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, list):
        return 2 + sum(estimated_size(item) + 1 for item in value)
    if isinstance(value, Mapping):
        return 2 + sum(len(str(k)) + 3 + estimated_size(v) for k, v in value.items())
    return 8


MAX_STRING_BYTES = 256 * 1024


def reject_long_strings(value: Any) -> None:
    """Strings are limited to 256 KB (UTF-8) in Workflows: a ResourceLimitError past it."""
    if isinstance(value, str):
        # At most 4 UTF-8 bytes a character: shorter strings need no encoding to check.
        if len(value) > MAX_STRING_BYTES // 4 and len(value.encode("utf-8")) > MAX_STRING_BYTES:
            raise WorkflowError.tagged(
                "ResourceLimitError",
                f"a string of {len(value.encode('utf-8'))} bytes exceeds the limit of "
                f"{MAX_STRING_BYTES // 1024} KB",
            )
    elif isinstance(value, list):
        for item in value:
            reject_long_strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            reject_long_strings(item)


def require_type(function: str, argument: str, value: Any, *expected: str) -> None:
    """A TypeError naming the function, the argument and the types it accepts."""
    actual = type_name(value)
    if actual in expected:
        return
    wanted = " or ".join(expected)
    raise WorkflowError.tagged(
        "TypeError", f"{function}: argument '{argument}' must be {wanted}, got {actual}"
    )
