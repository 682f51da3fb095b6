"""``python -m devstack logs --follow``: ``tail -f`` over the services' logs.

The last lines of each log, then every line as it is written, until the caller says
stop (the CLI: Ctrl-C, or the stack stopped). Only whole lines are printed; a log that
shrinks or is replaced is read again from its start, as ``tail -F`` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

POLL_SECONDS = 0.25


class LogReader:
    """The lines appended to one file since the previous read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        try:
            size = self.path.stat().st_size
            if size < self._offset:  # truncated or replaced
                self._offset, self._partial = 0, b""
            with self.path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return []  # not written yet, or between a rotation's two steps
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in complete]


def follow(
    logs: Mapping[str, Path],
    *,
    out: TextIO,
    last_lines: int,
    keep_going: Callable[[], bool],
    poll_seconds: float = POLL_SECONDS,
) -> None:
    """Print the last ``last_lines`` of each log, then new lines until ``keep_going()``
    is false (lines written before that answer are still printed). With several logs
    each line starts with its service's name, padded to the longest."""
    readers = {name: LogReader(path) for name, path in logs.items()}
    width = max(map(len, readers), default=0)

    def write(name: str, lines: list[str]) -> None:
        prefix = f"{name:<{width}} | " if len(readers) > 1 else ""
        for line in lines:
            out.write(f"{prefix}{line}\n")

    for name, reader in readers.items():
        write(name, reader.new_lines()[-last_lines:])
    out.flush()
    while True:
        running = keep_going()
        for name, reader in readers.items():
            write(name, reader.new_lines())
        out.flush()
        if not running:
            return
        time.sleep(poll_seconds)
