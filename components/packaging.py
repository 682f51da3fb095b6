"""Deterministic packaging of the function source (pitfall 6), in plain Python.

The archive depends only on the relative paths and bytes of the files that get deployed:
entries are sorted, timestamps and permissions are fixed, entries are stored rather than
deflated (deflate output differs between zlib builds, e.g. zlib-ng, so a CI runner and a
laptop would name the same tree differently), and caches, tests, virtualenvs and hidden
files are left out. Its SHA-256 names the uploaded object, so a changed handler
redeploys every function and an unchanged tree changes nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

# 1980-01-01 is the earliest time a zip entry can carry.
FIXED_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
# Regular file, rw-r--r--, in the high 16 bits where zip keeps Unix modes.
_FILE_MODE = 0o100644 << 16
_UNIX = 3  # the zip "made by" system, which otherwise follows the host OS

# Hidden files and directories (.venv, .git, caches, editor files, .env) are excluded too.
EXCLUDED_DIRECTORIES = frozenset({"__pycache__", "tests", "venv"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
ARCHIVE_PREFIX = "function-source-"


class PackagingError(ValueError):
    """The source directory cannot be packaged."""


@dataclass(frozen=True)
class SourceArchive:
    content: bytes
    sha256: str
    files: tuple[str, ...]

    def object_name(self, prefix: str = "functions") -> str:
        return f"{prefix}/source-{self.sha256}.zip"

    def write_to(self, directory: Path) -> Path:
        """Write the archive under its content name for the engine to upload.

        An existing identical file is kept; a partial one (an interrupted run) is
        replaced atomically; archives of earlier trees are removed, so the directory
        holds only what the current program deploys.
        """
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{ARCHIVE_PREFIX}{self.sha256}.zip"
        if not path.is_file() or path.read_bytes() != self.content:
            with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as tmp:
                tmp.write(self.content)
            os.replace(tmp.name, path)
        for stale in directory.glob(f"{ARCHIVE_PREFIX}*.zip"):
            if stale != path:
                stale.unlink(missing_ok=True)
        return path


def _is_packaged(relative: Path) -> bool:
    if any(part.startswith(".") for part in relative.parts):
        return False
    if any(part in EXCLUDED_DIRECTORIES for part in relative.parts[:-1]):
        return False
    name = relative.name
    return not name.endswith(EXCLUDED_SUFFIXES) and not name.startswith("test_")


def package_source(source_dir: Path, required: tuple[str, ...] = ()) -> SourceArchive:
    """Zip ``source_dir`` deterministically; ``required`` files must be present."""
    if not source_dir.is_dir():
        raise PackagingError(f"function source directory {source_dir} does not exist")
    files = sorted(
        path.relative_to(source_dir).as_posix()
        for path in source_dir.rglob("*")
        if path.is_file() and _is_packaged(path.relative_to(source_dir))
    )
    missing = [name for name in required if name not in files]
    if missing:
        raise PackagingError(
            f"function source {source_dir} lacks {', '.join(missing)}: "
            "Cloud Functions needs main.py and requirements.txt at its root"
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in files:
            entry = zipfile.ZipInfo(name, date_time=FIXED_TIMESTAMP)
            entry.external_attr = _FILE_MODE
            entry.create_system = _UNIX
            entry.compress_type = zipfile.ZIP_STORED
            archive.writestr(entry, (source_dir / name).read_bytes())
    content = buffer.getvalue()
    return SourceArchive(content, hashlib.sha256(content).hexdigest(), tuple(files))
