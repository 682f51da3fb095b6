"""The storage port over a local directory, for benchmarks only: the processing core
reading and writing the local disk, exactly as the pandas peer does, so that the two
are compared on the same I/O (fake-gcs-server's uploads slow down as objects grow;
Cloud Storage's do not).

A generation is the file's modification time in nanoseconds; preconditions hold
within one process, which is all a benchmark child needs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pipeline_core.errors import ObjectNotFoundError
from pipeline_core.storage import ObjectInfo, StoredObject, check_generation


class DirectoryStorage:
    def __init__(self, root: Path, bucket: str) -> None:
        self.bucket = bucket
        self._root = root
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self._root / name

    def names(self, prefix: str = "") -> list[str]:
        found = (str(path.relative_to(self._root)) for path in self._root.rglob("*"))
        return sorted(name for name in found if name.startswith(prefix))

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            status = self._path(name).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(name, status.st_mtime_ns, status.st_size)

    @contextmanager
    def open_read(self, name: str, generation: int) -> Iterator[IO[bytes]]:
        self._expect(name, generation)
        with self._path(name).open("rb") as reader:
            yield reader

    def read(self, name: str, generation: int | None = None) -> StoredObject:
        info = self._expect(name, generation)
        return StoredObject(self._path(name).read_bytes(), info.generation)

    def read_range(self, name: str, start: int, size: int) -> bytes:
        self._expect(name, None)
        with self._path(name).open("rb") as reader:
            reader.seek(start)
            return reader.read(max(size, 0))

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
            with self.open_write(name, content_type=content_type) as sink:
                sink.write(data)
            info = self.stat(name)
            assert info is not None
            return info.generation

    @contextmanager
    def open_write(self, name: str, *, content_type: str) -> Iterator[IO[bytes]]:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with partial.open("wb") as sink:
                yield sink
            os.replace(partial, path)  # appears only once complete, like an upload
        finally:
            partial.unlink(missing_ok=True)

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        with self._lock:
            if self.stat(name) is None:
                return
            self._check(name, if_generation_match)
            self._path(name).unlink()

    def delete_version(self, name: str, generation: int) -> None:
        with self._lock:
            info = self.stat(name)
            if info is not None and info.generation == generation:
                self._path(name).unlink()

    def _expect(self, name: str, generation: int | None) -> ObjectInfo:
        info = self.stat(name)
        if info is None or generation not in (None, info.generation):
            raise ObjectNotFoundError(f"{self.bucket}/{name} generation {generation} not found")
        return info

    def _check(self, name: str, if_generation_match: int | None) -> None:
        info = self.stat(name)
        check_generation(self.bucket, name, info.generation if info else 0, if_generation_match)
