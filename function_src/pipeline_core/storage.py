"""The storage port: what the handlers need from a bucket, and its implementation.

``GcsStorage`` talks to Cloud Storage (or to fake-gcs-server when STORAGE_EMULATOR_HOST
is set: the client library honours it). The in-memory fake the unit tests use lives
with the tests (``tests/functions/fakes.py``), so it never ships in the deployed archive.
"""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import IO, Any, Protocol, cast

from pipeline_core.errors import ObjectNotFoundError, PreconditionFailedError, TransientError

# Every download reads its response body in one call, not in the client's default 8 KiB
# pieces: a third of the client CPU (the 362 MB of a 10M-row upload through
# fake-gcs-server in 8 MiB requests: 0.81-1.18 -> 0.29-0.34 CPU-seconds). A request
# is one read of the caller's (``open_read``), or an object it reads whole anyway.
SINGLE_SHOT = {"single_shot_download": True}
# open_write uploads a large object as parts of this size, each its own temporary
# object, then composes them (a parallel composite upload, as gcloud storage does).
# Each part is one request and the server never re-handles the object so far, which a
# resumable upload makes fake-gcs-server do at every chunk (quadratic in the size).
# 32 MiB: up to 1 GiB composes in one call (at 16 MiB, 54 parts of a 0.9 GB Parquet
# took a second round, and fake-gcs-server copies every byte at each compose: 48 -> 27
# s). score_data's predictions are written this way; processing writes a dataset of
# parts of its own instead (``parquet_dataset``), so nothing of it is composed.
# A part is the buffer up to the write that reached this size, so one write larger
# than a part makes a larger part (Parquet writes pages, about a MB at most).
PART_BYTES = 32 * 1024 * 1024
# Parts uploading while the next one fills: memory holds this many parts plus the one
# being written (the next part is cut only once there is room for it).
PARTS_IN_FLIGHT = 1
# Cloud Storage composes at most 32 sources per call; more parts compose in rounds.
COMPOSE_SOURCES = 32
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

    def read_range(self, name: str, start: int, size: int) -> bytes:
        """``size`` bytes of the live object from ``start`` (fewer past its end)."""
        ...

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

    def delete_version(self, name: str, generation: int) -> None:
        """Deletes that generation, if it is the live one, for good (a bucket that keeps
        versions keeps no copy of it); a newer generation stays, and a version already
        gone is no error."""
        ...


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
            with _RangedReader(blob, int(blob.size or 0)) as reader:
                # A file object as csv_source and pyarrow use it, not typeshed's IO class.
                yield cast(IO[bytes], reader)

    def read(self, name: str, generation: int | None = None) -> StoredObject:
        with _translated(self.bucket, name, generation):
            blob = self._bucket().blob(name, generation=generation)
            data = blob.download_as_bytes(**SINGLE_SHOT)
            return StoredObject(data, int(blob.generation))

    def read_range(self, name: str, start: int, size: int) -> bytes:
        if size <= 0:
            return b""  # a Range header cannot ask for nothing
        with _translated(self.bucket, name):
            data: bytes = (
                self._bucket()
                .blob(name)
                .download_as_bytes(start=start, end=start + size - 1, **SINGLE_SHOT)
            )
            return data

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
        # Parts are temporary objects under the same prefix as ``name`` (so the writer's
        # prefix-scoped grant covers creating, composing and deleting them); an error
        # inside the block or in any upload deletes them and ``name`` never appears.
        writer = _CompositeWriter(self._bucket(), name, content_type)
        with _translated(self.bucket, name):
            try:
                # A file object as pyarrow and csv use it, though not typeshed's IO class.
                yield cast(IO[bytes], writer)
                writer.finish()
            finally:
                writer.discard_parts()

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        try:
            with _translated(self.bucket, name):
                self._bucket().blob(name).delete(if_generation_match=if_generation_match)
        except ObjectNotFoundError:
            return

    def delete_version(self, name: str, generation: int) -> None:
        # The version by its generation, so none is left noncurrent, and only while it
        # is the live one (the precondition): behind a newer generation, ours is left
        # noncurrent for the bucket's lifecycle rule and the newer one is untouched.
        # fake-gcs-server honours neither and deletes the live object
        # (docs/LOCAL_STACK.md).
        try:
            with _translated(self.bucket, name, generation):
                self._bucket().blob(name, generation=generation).delete(
                    if_generation_match=generation
                )
        except (ObjectNotFoundError, PreconditionFailedError):
            return


class _RangedReader(io.RawIOBase):
    """One generation of an object (``blob`` names it), each read one ranged request of
    just the bytes asked for, handed over as the response body: nothing buffered in
    between. The client's own reader fetched a chunk, kept its rest in a buffer and
    copied each read out of it: four copies of a chunk at once (peak RSS 257-262 ->
    245-246 MB for a 10M-row upload with reads of 4 MiB instead of 8). Callers read in
    large pieces (csv_source's blocks, a BufferedReader under gzip, Parquet's read
    buffer); a read past the end is empty without a request."""

    def __init__(self, blob: Any, size: int) -> None:
        self._blob = blob
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        origins = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}
        position = origins[whence] + offset
        if position < 0:
            raise ValueError(f"cannot seek to {position}, before the start of the object")
        self._position = position
        return position

    def read(self, size: int | None = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._position + size)
        if end <= self._position:
            return b""
        # No checksum: the server's is the whole object's, not a range's.
        data: bytes = self._blob.download_as_bytes(
            start=self._position, end=end - 1, checksum=None, **SINGLE_SHOT
        )
        self._position += len(data)
        return data

    def readall(self) -> bytes:
        return self.read()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


class _CompositeWriter(io.RawIOBase):
    """A write-only stream that uploads full parts on background threads."""

    def __init__(self, bucket: Any, name: str, content_type: str) -> None:
        super().__init__()
        self._bucket = bucket
        self._name = name
        self._content_type = content_type
        # A random tag keeps a concurrent writer of the same name (a redelivered event)
        # from touching these parts.
        self._part_prefix = f"{name}.parts-{secrets.token_hex(8)}/"
        self._buffer = io.BytesIO()
        self._written = 0
        self._pending: list[Future[Any]] = []
        self._parts: list[Any] = []  # uploaded blobs, in order, with their generations
        self._uploads = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="gcs-part")

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, data: Any) -> int:
        size = self._buffer.write(data)
        self._written += size
        if self._buffer.tell() >= PART_BYTES:
            # A part is PART_BYTES and the rest of the write that reached it: parts of
            # a composite object need not be of one size.
            self._upload_buffer()
        return size

    def _cut(self) -> bytes:
        """The buffered bytes, and a new buffer. Not a copy: BytesIO.getvalue() hands
        over its own bytes object (shrunk in place), and the client's read of a
        BytesIO made of it returns that same object as the request body."""
        part = self._buffer.getvalue()
        self._buffer = io.BytesIO()
        return part

    def _upload_buffer(self) -> None:
        """The buffer as the next part, cut only once fewer than PARTS_IN_FLIGHT parts
        are uploading (memory holds those and the buffer, never one more part)."""
        while len(self._pending) >= PARTS_IN_FLIGHT:
            self._parts.append(self._pending.pop(0).result())
        self._upload_part(self._cut())

    def _upload_part(self, data: bytes) -> None:
        blob = self._bucket.blob(f"{self._part_prefix}{len(self._parts) + len(self._pending):05d}")
        self._pending.append(self._uploads.submit(self._upload, blob, data))

    def _upload(self, blob: Any, data: bytes) -> Any:
        blob.upload_from_file(io.BytesIO(data), size=len(data), content_type=self._content_type)
        return blob

    def finish(self) -> None:
        """Makes the object: one upload when it fits a part, else the parts composed."""
        if not self._pending and not self._parts:
            blob = self._bucket.blob(self._name)
            blob.upload_from_string(self._cut(), content_type=self._content_type)
            return
        if self._buffer.tell():
            self._upload_buffer()
        self._parts.extend(future.result() for future in self._pending)
        self._pending.clear()
        sources = list(self._parts)
        rounds = 0
        while len(sources) > COMPOSE_SOURCES:
            rounds += 1
            sources = [
                self._compose(
                    self._bucket.blob(f"{self._part_prefix}round-{rounds}-{group:05d}"),
                    sources[start : start + COMPOSE_SOURCES],
                )
                for group, start in enumerate(range(0, len(sources), COMPOSE_SOURCES))
            ]
        self._compose(self._bucket.blob(self._name), sources)

    def _compose(self, destination: Any, sources: list[Any]) -> Any:
        destination.content_type = self._content_type
        destination.compose(sources)
        if destination.name != self._name:
            self._parts.append(destination)
        return destination

    def discard_parts(self) -> None:
        """Deletes every temporary object, each by its generation: the bucket keeps
        versions, and a plain delete would leave each part as a noncurrent version."""
        self._buffer = io.BytesIO()
        for future in self._pending:
            future.cancel()
        self._uploads.shutdown(wait=True)
        for future in self._pending:
            if not future.cancelled() and future.exception() is None:
                self._parts.append(future.result())
        self._pending.clear()
        from google.api_core import exceptions

        for part in self._parts:
            try:
                self._bucket.blob(part.name, generation=part.generation).delete()
            except exceptions.NotFound:
                continue
        self._parts.clear()
        self.close()


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
