"""``python -m devstack status``: what runs (each service's process group, port and
health), which model is champion and which one predict serves, and the latest runs.

``collect`` asks the processes and services; ``render`` turns its document into text,
without asking anything, so the layout is tested on its own.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from devstack import plan as stack_plan
from devstack import runs
from devstack.console import format_table
from devstack.processes import RunningService, answers, group_usage
from devstack.stack import StackState
from pipeline_core import contract

LATEST_RUNS = 5
RUN_COLUMNS = ("object", "generation", "uploaded_at", "state", "detail")
_MEGABYTE = 1024 * 1024


def collect(
    state: StackState, state_dir: Path, *, latest_runs: int = LATEST_RUNS
) -> dict[str, Any]:
    services = [_service_status(service) for service in state.services]
    # The bucket is asked only while its emulator answers: the storage client would retry
    # a refused connection for minutes.
    storage_up = any(
        item["name"] == stack_plan.STORAGE and item["state"] == "healthy" for item in services
    )
    rows = runs.list_runs(state) if storage_up else []
    return {
        "state_dir": str(state_dir),
        "config_path": state.config_path,
        "orchestration": state.orchestration,
        "project": state.project,
        "region": state.region,
        "bucket": state.bucket,
        "healthy": all(item["state"] == "healthy" for item in services),
        "services": services,
        "storage_readable": storage_up,
        "champion": runs.read_champion(state) if storage_up else None,
        "serving": runs.serving(state),
        "runs_total": len(rows),
        "latest_runs": [dataclasses.asdict(row) for row in reversed(rows[-latest_runs:])],
    }


def _service_status(service: RunningService) -> dict[str, Any]:
    usage = group_usage(service.pid)
    if usage.processes == 0:
        health = "stopped"
    else:
        health = "healthy" if answers(service) else "not answering"
    return {
        "name": service.name,
        "state": health,
        "pid": service.pid,
        "port": service.port,
        "grpc_port": service.plan.grpc_port,
        "url": service.url,
        "processes": usage.processes,
        "rss_bytes": usage.rss_bytes,
        "uptime_seconds": None
        if usage.started_at is None
        else round(time.time() - usage.started_at, 1),
    }


def render(status: dict[str, Any]) -> str:
    lines = [
        f"{status['orchestration']}-mode stack of {status['config_path']}",
        f"project {status['project']}, region {status['region']}, bucket {status['bucket']}; "
        f"state in {status['state_dir']}",
        "",
        format_table(
            ("SERVICE", "STATE", "PID", "PORT", "PROCS", "RSS", "UP", "URL"),
            [_service_row(item) for item in status["services"]],
        ),
        *(
            f"{item['name']} is {item['state']}: see 'python -m devstack logs {item['name']}', "
            f"then 'python -m devstack restart {item['name']}'"
            for item in status["services"]
            if item["state"] != "healthy"
        ),
        "",
        *_champion_lines(status),
        "",
    ]
    latest = status["latest_runs"]
    if not status["storage_readable"]:
        lines.append("runs: unknown while the storage emulator is not healthy")
    elif not latest:
        lines.append(
            f"runs: none yet (upload a CSV to gs://{status['bucket']}/{contract.RAW_PREFIX})"
        )
    else:
        lines.append(f"latest runs ({len(latest)} of {status['runs_total']}, newest first):")
        lines.append(runs_table(latest))
    return "\n".join(lines)


def runs_table(rows: Iterable[Mapping[str, str]]) -> str:
    """Runs (``RunRow``s as dicts) as a table with a header line."""
    return format_table(
        [column.upper().removesuffix("_AT") for column in RUN_COLUMNS],
        [[row[column] for column in RUN_COLUMNS] for row in rows],
    )


def _service_row(item: dict[str, Any]) -> tuple[str, ...]:
    port = str(item["port"])
    if item["grpc_port"] is not None:
        port += f",{item['grpc_port']}"
    stopped = item["processes"] == 0
    return (
        item["name"],
        item["state"],
        str(item["pid"]),
        port,
        str(item["processes"]),
        "-" if stopped else f"{item['rss_bytes'] / _MEGABYTE:.0f} MB",
        "-" if item["uptime_seconds"] is None else _duration(item["uptime_seconds"]),
        item["url"],
    )


def _duration(seconds: float) -> str:
    minutes, whole_seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{whole_seconds:02d}s" if minutes else f"{whole_seconds}s"


def _champion_lines(status: dict[str, Any]) -> list[str]:
    champion = status["champion"]
    if not status["storage_readable"]:
        described = "unknown while the storage emulator is not healthy"
    elif champion is None:
        described = "none yet"
    else:
        metrics = ", ".join(
            f"{name} {value:.4f}" for name, value in sorted(champion.get("metrics", {}).items())
        )
        described = (
            f"{champion.get('model_version')} ({metrics}), promoted {champion.get('promoted_at')}"
        )
    return [f"champion: {described}", f"serving:  {_serving_note(status['serving'])}"]


def _serving_note(serving: dict[str, Any] | None) -> str:
    if serving is None:
        return "predict does not answer"
    served = serving.get("model_version")
    note = f"predict serves {served}" if served else "predict serves no model yet"
    refused = serving.get("refused_champion")
    if refused:
        note += f"; it refused {refused.get('model_version')}: {refused.get('problem')}"
    return note
