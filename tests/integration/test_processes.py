"""Starting and health-checking one process: the errors a person can act on."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from functools import partial
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest

from devstack.errors import PortBusyError, ServiceDiedError
from devstack.plan import LOOPBACK, ServicePlan
from devstack.processes import (
    GroupUsage,
    RunningService,
    group_alive,
    group_members,
    group_usage,
    grpc_answers,
    start_service,
    stop_group,
    stop_groups,
    wait_until_healthy,
)
from devstack.stack import SERVICE_PORTS, allocate_ports, start_again
from tests.integration.harness import PORT_TAKEN_ADVICE, wait_for


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen()
        yield listener.getsockname()[1]


def python_service(code: str, port: int, *, grpc_port: int | None = None) -> ServicePlan:
    return ServicePlan(
        name="probe",
        port=port,
        argv=(sys.executable, "-c", code),
        env={},
        health_path="/",
        grpc_port=grpc_port,
    )


def test_a_taken_port_is_refused_before_anything_starts(
    listening_port: int, tmp_path: Path
) -> None:
    with pytest.raises(PortBusyError, match=f"port {listening_port} .* 'probe'.*ss -ltnp") as busy:
        start_service(python_service("pass", listening_port), tmp_path)
    assert not (tmp_path / "probe.log").exists()
    assert PORT_TAKEN_ADVICE in str(busy.value)  # what up_detached retries on


def test_a_taken_grpc_port_is_refused_too(listening_port: int, tmp_path: Path) -> None:
    free = allocate_ports(("rest",))["rest"]
    plan = python_service("pass", free, grpc_port=listening_port)

    with pytest.raises(PortBusyError, match=f"port {listening_port} "):
        start_service(plan, tmp_path)


def test_a_service_that_dies_while_starting_is_named_with_its_log_tail(
    tmp_path: Path,
) -> None:
    port = allocate_ports(("probe",))["probe"]
    code = "import sys; print('cannot load the model registry', flush=True); sys.exit(3)"
    service = start_service(python_service(code, port), tmp_path)
    try:
        with pytest.raises(ServiceDiedError) as died:
            wait_until_healthy([service], timeout=30, hints={"probe": "check its settings"})
    finally:
        stop_group(service)

    message = str(died.value)
    assert "service 'probe' exited while starting. check its settings." in message
    assert "cannot load the model registry" in message


def test_a_service_whose_grpc_listener_never_opens_is_not_healthy(tmp_path: Path) -> None:
    ports = allocate_ports(("rest", "grpc"))
    # Serves HTTP, but nothing ever listens on the gRPC port.
    code = (
        "import http.server as h; "
        f"h.HTTPServer(('{LOOPBACK}', {ports['rest']}), h.BaseHTTPRequestHandler).serve_forever()"
    )
    service = start_service(python_service(code, ports["rest"], grpc_port=ports["grpc"]), tmp_path)
    try:
        with pytest.raises(ServiceDiedError, match="service 'probe' did not answer within 3 s"):
            wait_until_healthy([service], timeout=3, hints={})
    finally:
        stop_group(service)


def test_grpc_answers_only_while_a_grpc_server_listens() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    target = f"{LOOPBACK}:{port}"
    try:
        assert grpc_answers(target, timeout=5)
    finally:
        server.stop(grace=None).wait()
    assert not grpc_answers(target, timeout=1)


@pytest.mark.timeout(60)
def test_a_group_is_its_live_members_even_after_its_leader_exited(tmp_path: Path) -> None:
    """As the emulator's gcloud wrapper forks Java: the group outlives its leader, and the
    leader, exited but not yet reaped by this process, is a zombie, not a member."""
    port = allocate_ports(("probe",))["probe"]
    code = (
        "import subprocess, sys; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        "print(child.pid, flush=True)"
    )
    service = start_service(python_service(code, port), tmp_path)
    try:
        child = int(
            wait_for(lambda: service.log.read_text().strip() or None, timeout=30, what="the child")
        )
        wait_for(
            lambda: group_members(service.pid) == [child] or None,
            timeout=30,
            what="the leader's exit",
        )

        usage = group_usage(service.pid)

        assert usage.processes == 1
        assert usage.rss_bytes > 0
        assert usage.started_at is not None
        assert group_alive(service.pid)
    finally:
        stop_group(service)
    assert group_members(service.pid) == []
    assert group_usage(service.pid) == GroupUsage(processes=0, rss_bytes=0, started_at=None)


def logged(log: Path, text: str) -> bool | None:
    return text in log.read_text(encoding="utf-8") or None


@pytest.mark.timeout(60)
def test_groups_are_stopped_side_by_side_and_one_that_ignores_sigterm_is_killed(
    tmp_path: Path,
) -> None:
    """As 'down' stops a stack: every group gets SIGTERM before any has finished its
    shutdown, and a group still there after the grace gets SIGKILL."""
    slow_shutdown = (
        "import signal, sys, time\n"
        "def shut_down(*_):\n"
        "    print('sigterm', time.time(), flush=True)\n"
        "    time.sleep(1)\n"
        "    print('exiting', time.time(), flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, shut_down)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    ports = allocate_ports(("first", "second", "deaf"))
    services = []
    for name, code in (("first", slow_shutdown), ("second", slow_shutdown), ("deaf", deaf)):
        plan = python_service(code, ports[name])
        logs = tmp_path / name
        logs.mkdir()
        services.append(start_service(plan, logs))
    try:
        for service in services[:2]:
            wait_for(partial(logged, service.log, "ready"), timeout=30, what=service.name)

        stop_groups(services, grace_seconds=3)

        assert all(group_members(service.pid) == [] for service in services)
        moments = [
            {
                line.split()[0]: float(line.split()[1])
                for line in service.log.read_text().splitlines()
                if line.startswith(("sigterm", "exiting"))
            }
            for service in services[:2]
        ]
        assert moments[1]["sigterm"] < moments[0]["exiting"]
        assert moments[0]["sigterm"] < moments[1]["exiting"]
    finally:
        for service in services:
            if group_alive(service.pid):
                stop_group(service)


def test_allocated_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    ports = allocate_ports(("a", "b", "c", "d"))
    assert len(set(ports.values())) == 4
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")  # Linux; macOS: 49152
    low = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 49152
    for port in ports.values():
        assert port in SERVICE_PORTS and port < low  # no outgoing connection gets it
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, port))  # released by allocate_ports, free to take


def test_a_taken_candidate_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        for port in SERVICE_PORTS:
            try:
                taken.bind((LOOPBACK, port))
                break
            except OSError:
                continue
        taken.listen()
        busy = taken.getsockname()[1]
        # Candidates are popped from the end: the taken port comes first.
        monkeypatch.setattr(
            "devstack.stack.random.sample",
            lambda population, k: [*[port for port in population if port != busy][:5], busy],
        )
        ports = allocate_ports(("only",))
        assert ports["only"] != busy and ports["only"] in SERVICE_PORTS


def test_a_restarted_service_waits_for_its_port_to_be_released(tmp_path: Path) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind((LOOPBACK, allocate_ports(("held",))["held"]))
    holder.listen()
    port = holder.getsockname()[1]
    releaser = threading.Timer(0.5, holder.close)  # the stopped process, exiting late
    releaser.start()
    stopped = RunningService(python_service("pass", port), 0, tmp_path / "probe.log")
    started = start_again(stopped)
    try:
        assert started.port == port
        assert started.pid != 0
    finally:
        releaser.join()
        stop_group(started)
