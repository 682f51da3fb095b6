"""The storage port: what the handlers need from a bucket, and its implementation.

``GcsStorage`` talks to Cloud Storage (or to fake-gcs-server when STORAGE_EMULATOR_HOST
is set: the client library honours it). The in-memory fake the unit tests use lives
with the tests (``tests/functions/fakes.py``), so it never ships in the deployed archive.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import IO, Any, Protocol

from pipeline_core.errors import ObjectNotFoundError, PreconditionFailedError, TransientError

READ_CHUNK_BYTES = 8 * 1024 * 1024
# A resumable upload's request size (a multiple of 256 KiB). Twice 8 MiB halves the
# round trips of a large Parquet upload. fake-gcs-server's work per request grows with
# the object so far (its CPU time at 8 MiB: 0.4 s for 30 MB, 3 s for 120 MB), so there
# 16 MiB cut the server's CPU time for 10M rows from 13 to 8.6 s, for about 20 MB more
# peak RSS (the client buffers a chunk and copies it).
WRITE_CHUNK_BYTES = 16 * 1024 * 1024
JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    generation: int
    size: int


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    generation: int


class Storage(Protocol):
    """One bucket. ``if_generation_match=0`` means "only if the object does not exist"."""

    bucket: str

    def names(self, prefix: str = "") -> list[str]:
        """Names of the live objects under ``prefix``, sorted."""
        ...

    def stat(self, name: str) -> ObjectInfo | None: ...

    def open_read(self, name: str, generation: int) -> AbstractContextManager[IO[bytes]]:
        """A binary reader of that exact generation (streams; never loads it whole)."""
        ...

    def read(self, name: str, generation: int | None = None) -> StoredObject: ...

    def write(
        self,
        name: str,
        data: bytes,
        *,
        content_type: str,
        if_generation_match: int | None = None,
    ) -> int: ...

    def open_write(self, name: str, *, content_type: str) -> AbstractContextManager[IO[bytes]]:
        """A binary writer; the object appears only if the block exits without an error."""
        ...

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None: ...


def write_json(
    storage: Storage,
    name: str,
    document: Mapping[str, Any],
    *,
    if_generation_match: int | None = None,
) -> int:
    """Store a record as stable JSON (sorted keys). NaN or infinity is refused rather
    than written, since other readers (Workflows' json.decode) would reject the file."""
    data = json.dumps(document, indent=2, sort_keys=True, allow_nan=False).encode()
    return storage.write(
        name, data, content_type=JSON_CONTENT_TYPE, if_generation_match=if_generation_match
    )


def read_json(storage: Storage, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(storage.read(name).data)
    return document


def check_generation(bucket: str, name: str, current: int, if_generation_match: int | None) -> None:
    """GCS's precondition, for stores that keep generations themselves (``current`` is
    0 for an absent object)."""
    if if_generation_match is not None and current != if_generation_match:
        raise PreconditionFailedError(
            f"gs://{bucket}/{name} is at generation {current}, expected {if_generation_match}"
        )


class GcsStorage:
    """Cloud Storage through google-cloud-storage; the client is created on first use."""

    def __init__(self, bucket: str, project: str, client: Any = None) -> None:
        self.bucket = bucket
        self._project = project
        self._client = client
        self._bucket_handle: Any = None

    def _bucket(self) -> Any:
        if self._bucket_handle is None:
            if self._client is None:
                from google.cloud.storage import Client

                self._client = Client(project=self._project)
            self._bucket_handle = self._client.bucket(self.bucket)
        return self._bucket_handle

    def stat(self, name: str) -> ObjectInfo | None:
        with _translated(self.bucket, name):
            blob = self._bucket().get_blob(name)
        if blob is None:
            return None
        return ObjectInfo(name, int(blob.generation), int(blob.size or 0))

    def names(self, prefix: str = "") -> list[str]:
        with _translated(self.bucket, prefix):
            return sorted(blob.name for blob in self._bucket().list_blobs(prefix=prefix))

    @contextmanager
    def open_read(self, name: str, generation: int) -> Iterator[IO[bytes]]:
        with _translated(self.bucket, name, generation):
            blob = self._bucket().get_blob(name, generation=generation)
            if blob is None:
                raise ObjectNotFoundError(not_found_message(self.bucket, name, generation))
            with blob.open("rb", chunk_size=READ_CHUNK_BYTES) as reader:
                yield reader

    def read(self, name: str, generation: int | None = None) -> StoredObject:
        with _translated(self.bucket, name, generation):
            blob = self._bucket().blob(name, generation=generation)
            data = blob.download_as_bytes()
            return StoredObject(data, int(blob.generation))

    def write(
        self,
        name: str,
        data: bytes,
        *,
        content_type: str,
        if_generation_match: int | None = None,
    ) -> int:
        with _translated(self.bucket, name):
            blob = self._bucket().blob(name)
            blob.upload_from_string(
                data, content_type=content_type, if_generation_match=if_generation_match
            )
            return int(blob.generation)

    @contextmanager
    def open_write(self, name: str, *, content_type: str) -> Iterator[IO[bytes]]:
        # A resumable upload: memory holds about two chunks, and an error inside the block
        # cancels the upload, so a half-written object never appears.
        with (
            _translated(self.bucket, name),
            self._bucket()
            .blob(name)
            .open("wb", chunk_size=WRITE_CHUNK_BYTES, content_type=content_type) as writer,
        ):
            yield writer

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        try:
            with _translated(self.bucket, name):
                self._bucket().blob(name).delete(if_generation_match=if_generation_match)
        except ObjectNotFoundError:
            return


@contextmanager
def _translated(bucket: str, name: str, generation: int | None = None) -> Iterator[None]:
    """Client-library errors become the core's hierarchy."""
    from google.api_core import exceptions
    from requests import exceptions as http_errors

    try:
        yield
    except exceptions.NotFound:
        raise ObjectNotFoundError(not_found_message(bucket, name, generation)) from None
    except exceptions.PreconditionFailed:
        raise PreconditionFailedError(
            f"gs://{bucket}/{name} changed (generation precondition)"
        ) from None
    except (exceptions.GoogleAPIError, http_errors.RequestException) as error:
        raise TransientError(
            f"Cloud Storage call for gs://{bucket}/{name} failed: {error}"
        ) from error


def not_found_message(bucket: str, name: str, generation: int | None) -> str:
    """How every store names a missing object (or a generation that is not live)."""
    at = "" if generation is None else f" at generation {generation}"
    return f"gs://{bucket}/{name}{at} does not exist"
