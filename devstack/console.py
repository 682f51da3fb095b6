"""What devstack's command lines print on stderr, shared by ``python -m devstack`` and
``python -m devstack.workflows`` so that every error, usage errors included, starts with
one prefix a person (or a script) can look for.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, TextIO

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
