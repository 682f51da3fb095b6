"""The declared stack configuration: the ``config:`` block of ``Pulumi.yaml``.

It is the one source of every ``ml-pipeline:`` key's type, description and default:
Pulumi checks stack values against the types and hands the program the defaults,
``components/config.py`` validates the values, and the README's configuration table is
generated from it (``python -m components.config_schema README.md``, or ``make docs``).
tests/infra/test_config_schema.py checks that config.py reads exactly the declared keys
and that every declared default is config.py's own.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_FILE = Path(__file__).resolve().parents[1] / "Pulumi.yaml"
# The README's generated block sits between these two lines.
TABLE_START = "<!-- config-table: generated from Pulumi.yaml by `make docs`; do not edit -->"
TABLE_END = "<!-- config-table: end -->"
# The types Pulumi's project schema accepts, and the Python value each default must be.
PYTHON_TYPES: Mapping[str, type] = {
    "string": str,
    "integer": int,
    "boolean": bool,
    "array": list,
    "object": dict,
}


class SchemaError(ValueError):
    """Pulumi.yaml's config block is missing or malformed."""


@dataclass(frozen=True)
class Declaration:
    """One declared key, without the ``ml-pipeline:`` namespace."""

    key: str
    type: str
    description: str
    default: Any


def declarations(project_file: Path = PROJECT_FILE) -> dict[str, Declaration]:
    """Every declared key in file order; each must have a type, description and default."""
    import yaml

    document = yaml.safe_load(project_file.read_text(encoding="utf-8")) or {}
    block = document.get("config") if isinstance(document, Mapping) else None
    if not isinstance(block, Mapping):
        raise SchemaError(f"{project_file.name} has no config: block")
    found: dict[str, Declaration] = {}
    for key, declaration in block.items():
        where = f"{project_file.name} config.{key}"
        if not isinstance(declaration, Mapping):
            raise SchemaError(f"{where} must be a map with type, description and default")
        missing = [
            field for field in ("type", "description", "default") if field not in declaration
        ]
        if missing:
            raise SchemaError(f"{where} lacks {', '.join(missing)}")
        type_name = declaration["type"]
        if type_name not in PYTHON_TYPES:
            raise SchemaError(f"{where}: type {type_name!r} is not one of {sorted(PYTHON_TYPES)}")
        default = declaration["default"]
        if not _is_type(default, type_name):
            raise SchemaError(f"{where}: default {default!r} is not of type {type_name}")
        found[str(key)] = Declaration(
            key=str(key),
            type=type_name,
            description=" ".join(str(declaration["description"]).split()),
            default=default,
        )
    return found


def _is_type(value: Any, type_name: str) -> bool:
    # bool is an int in Python; Pulumi's schema keeps the two apart.
    if type_name == "integer" and isinstance(value, bool):
        return False
    return isinstance(value, PYTHON_TYPES[type_name])


def markdown_table(declared: Mapping[str, Declaration]) -> str:
    """The README's configuration table, one row per declared key."""
    lines = ["| key | type | default | what it changes |", "|---|---|---|---|"]
    for declaration in declared.values():
        default = _render(declaration.default)
        # Markdown would take <stack> for an HTML tag and | for a cell boundary.
        description = (
            declaration.description.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        )
        lines.append(f"| `{declaration.key}` | {declaration.type} | {default} | {description} |")
    return "\n".join(lines)


def _render(value: Any) -> str:
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str | int | float):
        return f"`{value}`"
    return f"`{json.dumps(value, separators=(', ', ': '))}`"


def with_table(document: str, table: str) -> str:
    """``document`` with the text between the table markers replaced by ``table``."""
    start = document.find(TABLE_START)
    end = document.find(TABLE_END)
    if start < 0 or end < start:
        raise SchemaError(f"the document lacks the lines {TABLE_START!r} ... {TABLE_END!r}")
    head = document[: start + len(TABLE_START)]
    return f"{head}\n{table}\n{document[end:]}"


def main(argv: Sequence[str]) -> int:
    """Regenerate the table in each given Markdown file."""
    table = markdown_table(declarations())
    for name in argv:
        path = Path(name)
        path.write_text(with_table(path.read_text(encoding="utf-8"), table), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
