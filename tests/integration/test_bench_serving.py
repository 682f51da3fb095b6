"""bench.serving: a quick run yields the whole document with every prediction correct,
and the load clients count wrong answers. Behaviour only: no timing is asserted."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import serving
from devstack.plan import LOOPBACK
from tests.integration.harness import run_benchmark


@pytest.fixture(scope="module")
def quick_run() -> dict[str, object]:
    return run_benchmark("bench.serving", "--quick")


def test_quick_run_measures_every_scenario_without_errors(quick_run: dict[str, object]) -> None:
    load = quick_run["load"]
    assert isinstance(load, dict)
    assert set(load) == {"c1", "c8", serving.BATCH_SCENARIO}
    for scenario in ("c1", "c8"):
        assert set(load[scenario]) == {"onnx", "joblib", "floor"}
    assert set(load[serving.BATCH_SCENARIO]) == {"onnx", "joblib"}
    for scenario, by_name in load.items():
        for name, figures in by_name.items():
            assert figures["requests"] > 0, (scenario, name)
            assert figures["errors"] == 0, (scenario, name, figures)
            assert figures["req_per_s"] > 0 and figures["p50_ms"] > 0, (scenario, name)
            assert figures["server_cpu_us_per_request"] > 0, (scenario, name)
    ratios = quick_run["ratios"]
    assert isinstance(ratios, dict)
    assert set(ratios) == {"c1", "c8"}
    assert all(value > 0 for by_name in ratios.values() for value in by_name.values())


def test_quick_run_serves_each_runtime_it_names(quick_run: dict[str, object]) -> None:
    settings = quick_run["settings"]
    assert isinstance(settings, dict)
    assert settings["runtime_served"] == {"onnx": "onnx", "joblib": "joblib"}
    client = quick_run["client"]
    assert isinstance(client, dict)
    assert client["name"] == ("wrk" if shutil.which("wrk") else "python")
    cold_start = quick_run["cold_start"]
    in_process = quick_run["in_process"]
    assert isinstance(cold_start, dict) and isinstance(in_process, dict)
    for runtime in serving.RUNTIMES:
        assert len(cold_start[runtime]["runs_s"]) == 1
        assert 0 < cold_start[runtime]["listening_median_s"] <= cold_start[runtime]["median_s"]
        # Reported, not asserted: a fresh instance's side-by-side first requests.
        first_requests = cold_start[runtime]["concurrent_first_requests"]
        assert first_requests["requests"] == max(serving.CONCURRENCIES)
        assert first_requests["wrong"] == len(first_requests["wrong_statuses"])
        assert in_process[runtime]["runtime_loaded"] == runtime
        for size in ("one_row", f"rows_{serving.BATCH_ROWS}"):
            assert in_process[runtime][size]["total_us"] > 0


def test_quick_run_reports_every_target(quick_run: dict[str, object]) -> None:
    targets = quick_run["targets"]
    assert isinstance(targets, list)
    assert [target["name"] for target in targets] == [name for name, *_ in serving.TARGETS]
    assert all(isinstance(target["value"], float) for target in targets)
    assert quick_run["all_targets_met"] == all(target["met"] for target in targets)


class _StubPredict(BaseHTTPRequestHandler):
    """200 with predictions for a body, 400 for an empty one, as predict answers."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, answer = (200, b'{"predictions": []}') if body else (400, b'{"error": {}}')
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub_port() -> Iterator[int]:
    server = ThreadingHTTPServer((LOOPBACK, 0), _StubPredict)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# wrk is optional (apt-get install wrk): where it is missing its case is not collected
# (rather than skipped), and the fallback it leads to is tested below instead.
CLIENTS = [pytest.param(serving.python_load, id="python")] + (
    [pytest.param(serving.wrk_load, id="wrk")] if shutil.which("wrk") else []
)


def test_without_wrk_the_bounded_python_client_is_chosen_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    client, description = serving.choose_client()
    assert client is serving.python_load
    assert description["name"] == "python"
    assert "apt-get install wrk" in description["detail"]
    with pytest.raises(SystemExit, match="wrk is not installed"):
        serving.choose_client("wrk")


@pytest.mark.parametrize("client", CLIENTS)
def test_load_clients_count_answers_that_are_not_the_expected_ones(
    client: serving.LoadClient, stub_port: int, tmp_path: Path
) -> None:
    prediction = serving.Target("model", stub_port, b"{}", 200, serving.PREDICTION_MARKER)
    floor = serving.Target("floor", stub_port, b"", 400, b"")
    wrong_status = serving.Target("wrong", stub_port, b"{}", 400, b"")
    for target, all_wrong in ((prediction, False), (floor, False), (wrong_status, True)):
        measured = client(target, 2, 1, tmp_path)
        assert measured.requests > 0, target.name
        assert measured.errors == (measured.requests if all_wrong else 0), target.name
