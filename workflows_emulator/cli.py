"""Command line of the local Workflows engine: ``run`` one file, or ``serve`` the API.

``run FILE [--data JSON] [--env KEY=VALUE ...]`` is a stable contract: the result as
JSON on stdout and exit 0, or the error (tags and message, then the whole error map) on
stderr and exit 1; a definition error names the step and line and also exits 1. Usage
errors (a bad ``--data``, a missing file) exit 2. Every error line, usage errors
included, starts with ``workflows_emulator: error:``, words a script can look for.

``serve`` runs the Executions API until SIGTERM or SIGINT and prints one JSON line
``{"url": ..., "grpc_target": ...}`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

from workflows_emulator import logs
from workflows_emulator.api import ExecutionsServer, default_workflow_paths
from workflows_emulator.engine import Cancelled, ExecutionContext, WorkflowProgram
from workflows_emulator.errors import DefinitionError, WorkflowError

EXIT_OK = 0
EXIT_WORKFLOW_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
ERROR_PREFIX = "workflows_emulator: error: "

_REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_WORKFLOW_DIR = _REPOSITORY / "workflow_defs"


def report_error(message: str, stream: TextIO) -> None:
    print(f"{ERROR_PREFIX}{message}", file=stream, flush=True)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors under the error prefix (subcommands inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        report_error(f"{self.prog}: {message}", sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _key_value(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    return key, value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got '{text}'")
    return port


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--data is not valid JSON: {error}") from error


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="python -m workflows_emulator",
        description="The local Cloud Workflows engine and Executions API.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one workflow file and print its result")
    run.add_argument("file", type=Path, help="workflow definition (YAML or JSON)")
    run.add_argument(
        "--data", type=_json_value, default=None, help="the execution argument, as JSON"
    )
    run.add_argument(
        "--env",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a user environment variable for sys.get_env (repeatable)",
    )

    serve = commands.add_parser("serve", help="serve the Executions API until stopped")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=0, help="REST port (0: a free port)")
    serve.add_argument("--grpc-port", type=_port, default=0, help="gRPC port (0: a free port)")
    serve.add_argument("--project", required=True)
    serve.add_argument("--location", required=True)
    serve.add_argument(
        "--workflow",
        type=_key_value,
        action="append",
        default=[],
        metavar="ID=PATH",
        help=f"a workflow to serve (repeatable; default: every {DEFAULT_WORKFLOW_DIR}/*.yaml)",
    )
    serve.add_argument(
        "--env",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a user environment variable of every workflow (repeatable)",
    )
    return parser


def run_file(
    path: Path,
    argument: Any,
    env: dict[str, str],
    *,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """Run one workflow file; the exit code follows the contract in the module docstring."""
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        report_error(f"cannot read {path}: {error}", stderr)
        return EXIT_USAGE
    try:
        program = WorkflowProgram.from_source(source, filename=str(path))
    except DefinitionError as error:
        report_error(f"definition error: {error}", stderr)
        return EXIT_WORKFLOW_FAILED
    context = ExecutionContext(workflow_id=path.stem, env=env)
    try:
        result = program.run(argument, context=context)
    except WorkflowError as error:
        tags = ", ".join(error.tags) or "no tags"
        report_error(f"workflow failed: [{tags}] {error.message}", stderr)
        print(json.dumps(error.payload), file=stderr)
        return EXIT_WORKFLOW_FAILED
    except (Cancelled, KeyboardInterrupt):
        report_error("workflow cancelled", stderr)
        return EXIT_INTERRUPTED
    print(json.dumps(result), file=stdout)
    return EXIT_OK


def serve(arguments: argparse.Namespace, *, stdout: TextIO, stderr: TextIO) -> int:
    workflows = (
        {key: Path(value) for key, value in arguments.workflow}
        if arguments.workflow
        else default_workflow_paths(DEFAULT_WORKFLOW_DIR)
    )
    if not workflows:
        report_error(f"no workflow to serve (none in {DEFAULT_WORKFLOW_DIR})", stderr)
        return EXIT_USAGE
    try:
        server = ExecutionsServer(
            arguments.host,
            arguments.port,
            workflows=workflows,
            env=dict(arguments.env),
            project=arguments.project,
            location=arguments.location,
            grpc_port=arguments.grpc_port,
        )
    except DefinitionError as error:
        report_error(f"definition error: {error}", stderr)
        return EXIT_WORKFLOW_FAILED
    except (OSError, ValueError) as error:
        report_error(str(error), stderr)
        return EXIT_USAGE

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    logs.configure(stdout)
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    try:
        print(json.dumps({"url": server.url, "grpc_target": server.grpc_target}), file=stdout)
        stdout.flush()
        stop_requested.wait()
    finally:
        server.stop()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "run":
        return run_file(
            arguments.file,
            arguments.data,
            dict(arguments.env),
            stdout=sys.stdout,
            stderr=sys.stderr,
        )
    return serve(arguments, stdout=sys.stdout, stderr=sys.stderr)
