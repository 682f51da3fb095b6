"""Starting, health-checking and stopping the stack's processes.

Each service runs in its own session, so its process group holds it and every child it
forks (the Pub/Sub emulator's gcloud wrapper forks Java). Stopping signals exactly the
groups the stack recorded, never processes found by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import psutil
import requests

from devstack.errors import PortBusyError, ServiceDiedError
from devstack.plan import LOOPBACK, ServicePlan

_LOG_TAIL_LINES = 25
_POLL_SECONDS = 0.25


@dataclass
class RunningService:
    plan: ServicePlan  # how it was started, so it can be restarted the same way
    pid: int  # also the process group id: each service leads its own session
    log: Path

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def port(self) -> int:
        return self.plan.port

    @property
    def url(self) -> str:
        return self.plan.url

    @property
    def health_path(self) -> str:
        return self.plan.health_path

    @property
    def grpc_target(self) -> str | None:
        return self.plan.grpc_target


def ensure_port_free(service: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers themselves do, so connections in TIME_WAIT (from a service that
        # just stopped) do not count as busy; a listening socket still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            raise PortBusyError(
                f"port {port} on {LOOPBACK}, chosen for '{service}', is taken by another "
                f"process (see 'ss -ltnp | grep :{port}', on macOS 'lsof -nP "
                f"-iTCP:{port} -sTCP:LISTEN'); run the command again to pick another free port"
            ) from None


def start_service(plan: ServicePlan, log_dir: Path) -> RunningService:
    for port in plan.ports:
        ensure_port_free(plan.name, port)
    log_path = log_dir / f"{plan.name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(plan.argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **plan.env},
            start_new_session=True,
        )
    return RunningService(plan=plan, pid=process.pid, log=log_path)


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def answers(service: RunningService, timeout: float = 2.0) -> bool:
    """Any HTTP answer means the service is listening (the functions have no health path);
    a service with a gRPC listener must also complete an HTTP/2 handshake there."""
    try:
        requests.get(service.url + service.health_path, timeout=timeout)
    except requests.RequestException:
        return False
    return service.grpc_target is None or grpc_answers(service.grpc_target, timeout)


def grpc_answers(target: str, timeout: float) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
    return True


def wait_until_healthy(
    services: Sequence[RunningService],
    *,
    timeout: float,
    hints: Mapping[str, str],
    on_ready: Callable[[RunningService], None] = lambda _service: None,
) -> None:
    """Return once every service answers; raise ServiceDiedError naming the first that
    exited or did not answer in time."""
    pending = list(services)
    deadline = time.monotonic() + timeout
    while pending:
        for service in list(pending):
            if not group_alive(service.pid):
                raise _died(service, "exited while starting", hints)
            if answers(service):
                pending.remove(service)
                on_ready(service)
        if pending and time.monotonic() > deadline:
            raise _died(pending[0], f"did not answer within {timeout:.0f} s", hints)
        if pending:
            time.sleep(_POLL_SECONDS)


def _died(service: RunningService, problem: str, hints: Mapping[str, str]) -> ServiceDiedError:
    tail = log_tail(service.log)
    if "address already in use" in tail.lower():
        return ServiceDiedError(
            service.name,
            f"could not bind port {' or '.join(map(str, service.plan.ports))}",
            tail,
            "another process took the port; run the command again to pick a free one",
        )
    return ServiceDiedError(service.name, problem, tail, hints.get(service.name, ""))


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group (psutil: Linux and macOS alike)."""
    members = []
    for process in psutil.process_iter():
        # A process may exit between being listed and being asked.
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
    return members


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


@dataclass(frozen=True)
class GroupUsage:
    processes: int
    rss_bytes: int
    started_at: float | None  # epoch seconds of its oldest live member


def group_usage(pgid: int) -> GroupUsage:
    """How many processes a service's group holds, their resident memory, since when."""
    rss, starts = 0, []
    members = group_members(pgid)
    for pid in members:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            rss += process.memory_info().rss
            starts.append(process.create_time())
    return GroupUsage(len(members), rss, min(starts, default=None))


def stop_group(service: RunningService, *, grace_seconds: float = 10.0) -> None:
    """Stop the service's whole process group: SIGTERM, then SIGKILL after the grace."""
    stop_groups([service], grace_seconds=grace_seconds)


def stop_groups(services: Sequence[RunningService], *, grace_seconds: float = 10.0) -> None:
    """Stop several process groups side by side, so they take the longest one's
    shutdown rather than the sum: SIGTERM to all, SIGKILL to those left after the grace."""
    pending = list(services)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for service in pending:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.pid, sig)
        deadline = time.monotonic() + grace_seconds
        while pending and time.monotonic() < deadline:
            for service in pending:
                # When this process started the service, reap it so it does not linger
                # as a zombie; otherwise it is not our child and init reaps it.
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(service.pid, os.WNOHANG)
            pending = [service for service in pending if group_alive(service.pid)]
            if pending:
                time.sleep(_POLL_SECONDS / 2)
        if not pending:
            return
    survivors = [service for service in pending if group_alive(service.pid)]
    if not survivors:
        return
    survivor = survivors[0]
    raise ServiceDiedError(
        survivor.name,
        f"survived SIGKILL (process group {survivor.pid})",
        log_tail(survivor.log),
    )
