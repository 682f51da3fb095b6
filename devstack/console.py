"""The command line's input and output: errors on stderr under one prefix, so that
every error of ``python -m devstack``, usage errors included, starts with the same
words a person (or a script) can look for; tables; JSON payloads given inline, as a
file or on standard input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from devstack.errors import DevstackError

PROGRESS_PREFIX = "devstack: "
ERROR_PREFIX = "devstack: error: "
EXIT_USAGE = 2


def report_error(message: str, stream: TextIO | None = None) -> None:
    print(f"{ERROR_PREFIX}{message}", file=sys.stderr if stream is None else stream, flush=True)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors under the shared prefix (subcommands inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        report_error(f"{self.prog}: {message}")
        raise SystemExit(EXIT_USAGE)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A header line and one line per row, each column as wide as its widest cell and
    two spaces from the next; the last column is not padded (it may be long)."""
    table = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[column]) for row in table) for column in range(len(headers))]
    return "\n".join(
        "  ".join(
            cell if column == len(widths) - 1 else cell.ljust(widths[column])
            for column, cell in enumerate(row)
        ).rstrip()
        for row in table
    )


def read_payload(argument: str, stdin: TextIO) -> Any:
    """A JSON document given inline, as ``@FILE`` (read from that file) or as ``-``
    (read from standard input), as curl's ``-d`` takes them."""
    if argument == "-":
        source, text = "standard input", stdin.read()
    elif argument.startswith("@"):
        path = Path(argument[1:])
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DevstackError(f"payload file {path} does not exist") from None
        except IsADirectoryError:
            raise DevstackError(f"payload file {path} is a directory") from None
        except UnicodeDecodeError as error:
            raise DevstackError(f"payload file {path} is not UTF-8 text ({error})") from None
        except OSError as error:
            raise DevstackError(f"cannot read payload file {path}: {error.strerror}") from None
    else:
        source, text = "the payload", argument
    try:
        return json.loads(text)
    except ValueError as error:
        raise DevstackError(
            f"{source} is not valid JSON ({error}); pass JSON inline, @FILE or - for standard input"
        ) from None
