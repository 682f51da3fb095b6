"""``python -m devstack``: run the pipeline on one machine against emulators.

Progress goes to stderr; machine-readable results (endpoints, run summaries,
predictions) go to stdout as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from components.config import (
    ORCHESTRATIONS,
    ConfigError,
    StackConfig,
    load_stack_file,
)
from devstack import events, logs, runs, stack, status
from devstack.console import (
    PROGRESS_PREFIX,
    ArgumentParser,
    read_payload,
    report_error,
)
from devstack.errors import DevstackError, RunFailedError, ServiceDiedError
from devstack.plan import REPO_ROOT
from devstack.processes import log_tail
from pipeline_core import contract

DEFAULT_STACK_FILE = REPO_ROOT / "Pulumi.dev.yaml"
RUN_TIMEOUT_SECONDS = 300.0
STATE_DIR_ENV = "DEVSTACK_STATE_DIR"

Number = TypeVar("Number", int, float)


def progress(line: str) -> None:
    print(f"{PROGRESS_PREFIX}{line}", file=sys.stderr, flush=True)


def emit(document: Any) -> None:
    print(json.dumps(document, sort_keys=True), flush=True)


def load_config(stack_file: Path, orchestration: str | None) -> StackConfig:
    config = load_stack_file(stack_file)
    if orchestration is not None:
        config = dataclasses.replace(config, orchestration=orchestration)  # type: ignore[arg-type]
    return config


def positive(parse: Callable[[str], Number]) -> Callable[[str], Number]:
    """An argparse type: a number above zero, refused as a usage error otherwise (a
    negative --timeout would upload and then give up at once)."""

    def parse_positive(text: str) -> Number:
        try:
            value = parse(text)
        except ValueError:
            value = None
        # "not value > 0" also refuses nan.
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a number above 0, got '{text}'")
        return value

    return parse_positive


def json_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m devstack",
        description="The ML pipeline on one machine: Pub/Sub emulator, fake-gcs-server, "
        "every function as a functions-framework process, the Workflows emulator.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get(STATE_DIR_ENV, str(stack.DEFAULT_STATE_DIR))),
        help=f"where pids, ports and logs live (default ${STATE_DIR_ENV}, else "
        f"{stack.DEFAULT_STATE_DIR}, whatever the current directory)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stack_file_option(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--stack-file",
            type=Path,
            default=DEFAULT_STACK_FILE,
            help=f"Pulumi stack config to run (default {DEFAULT_STACK_FILE})",
        )

    def stack_options(command: argparse.ArgumentParser) -> None:
        stack_file_option(command)
        command.add_argument(
            "--orchestration",
            choices=ORCHESTRATIONS,
            help="override the stack's ml-pipeline:orchestration",
        )

    def upload_options(command: argparse.ArgumentParser, under: str) -> None:
        """The file, its object name ``under`` a prefix, and following the run it starts."""
        command.add_argument("file", type=Path)
        command.add_argument("--name", help=f"object name under {under} (default: the file name)")
        command.add_argument("--wait", action="store_true", help="follow the run to its summary")
        command.add_argument(
            "--timeout",
            type=positive(float),
            default=RUN_TIMEOUT_SECONDS,
            help="seconds --wait follows the run (default %(default).0f)",
        )

    up = commands.add_parser("up", help="start everything (foreground until Ctrl-C)")
    stack_options(up)
    up.add_argument("--detach", action="store_true", help="return once every service is healthy")
    commands.add_parser("down", help="stop everything 'up' started")
    restart = commands.add_parser("restart", help="restart one service (e.g. after it died)")
    restart.add_argument("service")
    commands.add_parser("endpoints", help="print the stack's addresses as JSON")
    upload = commands.add_parser(
        "upload", help=f"upload a file under {contract.RAW_PREFIX} (starts a run)"
    )
    upload_options(upload, contract.RAW_PREFIX)
    upload.add_argument("--bucket", help="upload to this real GCS bucket instead")
    score = commands.add_parser(
        "score", help="upload a file under the scoring prefix (starts a scoring run)"
    )
    upload_options(score, "the prefix")
    score.add_argument("--out", type=Path, help="with --wait: save the predictions CSV here")
    status_command = commands.add_parser(
        "status", help="services (pid, port, health), the champion and the latest runs"
    )
    json_option(status_command)
    json_option(commands.add_parser("runs", help="list runs and their state, oldest first"))
    logs_command = commands.add_parser(
        "logs", help="show a service's log (all services without one)"
    )
    logs_command.add_argument("service", nargs="?", help="a service, or the workflow's name")
    logs_command.add_argument("--lines", type=positive(int), default=40, help="default %(default)s")
    logs_command.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then print new lines as they are written, until Ctrl-C or the stack stops",
    )
    commands.add_parser(
        "events", help="print the run summaries published to model-events, oldest first"
    )
    report = commands.add_parser(
        "report", help="write the model history (versions, champion, uploads) as one HTML page"
    )
    report.add_argument(
        "--out", type=Path, help="the HTML file to write (default: report.html in --state-dir)"
    )
    report.add_argument(
        "--bucket", help="read this real GCS bucket (default credentials), not the local stack"
    )
    report.add_argument(
        "--metric",
        choices=contract.PROMOTION_METRICS,
        help="the metric charted (default: the local stack's promotion.metric, else f1_macro)",
    )
    predict = commands.add_parser("predict", help="call the prediction endpoint")
    predict.add_argument(
        "payload",
        help='JSON inline (\'{"instances": [{"x": 1.0}]}\'), @FILE to read it from a file, '
        "or - to read it from standard input",
    )
    demo = commands.add_parser("demo", help="start, train on iris, predict, stop")
    stack_options(demo)
    sample = commands.add_parser(
        "sample-data", help="write the demo data set (iris) as a CSV to upload"
    )
    sample.add_argument("file", type=Path, help="the CSV to create, e.g. iris.csv")
    stack_file_option(sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (DevstackError, ConfigError) as error:
        report_error(str(error))
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir.resolve()
    without_state = _WITHOUT_STATE.get(args.command)
    if without_state is not None:
        return without_state(args, state_dir)
    if args.command == "upload" and args.bucket:
        if args.wait:
            raise DevstackError(
                "--wait follows runs on the local stack only; for a cloud bucket watch the "
                "model-events topic (gcloud pubsub subscriptions pull ...)"
            )
        key = runs.upload_to_cloud(args.bucket, args.file, name=args.name)
        emit(dataclasses.asdict(key))
        return 0
    # The caller's input is read before the stack is asked anything.
    payload = read_payload(args.payload, sys.stdin) if args.command == "predict" else None
    state = stack.load_state(state_dir)
    if args.command in ("upload", "predict", "score"):
        _require_all_running(state)
    if args.command == "endpoints":
        emit(state.endpoints())
    elif args.command == "status":
        return _print_status(state, state_dir, as_json=args.json)
    elif args.command in ("upload", "score"):
        _upload(state, args)
    elif args.command == "runs":
        _print_runs(state, as_json=args.json)
    elif args.command == "logs":
        _print_logs(state, state_dir, args)
    elif args.command == "predict":
        emit(runs.predict(state, payload))
    elif args.command == "events":
        for summary in events.model_events(state):
            emit(summary)
    return 0


def _up_command(args: argparse.Namespace, state_dir: Path) -> int:
    config = load_config(args.stack_file, args.orchestration)
    return _up(config, args.stack_file.resolve(), state_dir, detach=args.detach)


def _down_command(args: argparse.Namespace, state_dir: Path) -> int:
    stack.down(state_dir, progress)
    progress("stack stopped")
    return 0


def _demo_command(args: argparse.Namespace, state_dir: Path) -> int:
    config = load_config(args.stack_file, args.orchestration)
    from devstack.demo import run_demo

    emit(run_demo(config, args.stack_file.resolve(), state_dir, progress))
    return 0


def _restart_command(args: argparse.Namespace, state_dir: Path) -> int:
    stack.restart_service(state_dir, args.service, progress)
    return 0


def _report_command(args: argparse.Namespace, state_dir: Path) -> int:
    from devstack import report

    out: Path = args.out or state_dir / report.REPORT_NAME
    if args.bucket:
        storage = report.cloud_storage(args.bucket)
        metric = args.metric or contract.DEFAULT_PROMOTION_METRIC
    else:
        state = stack.load_state(state_dir)
        storage = report.local_storage(state)
        metric = args.metric or load_stack_file(Path(state.config_path)).promotion.metric
    emit(report.write_report(storage, metric, out))
    return 0


def _sample_data_command(args: argparse.Namespace, state_dir: Path) -> int:
    emit(_write_sample_data(args.file, load_config(args.stack_file, None)))
    return 0


def _write_sample_data(path: Path, config: StackConfig) -> dict[str, Any]:
    """Write iris with the stack's target column; an existing file is never replaced."""
    from devstack.demo import write_iris_csv

    if path.exists():
        raise DevstackError(f"{path} already exists; name another file or remove it first")
    sample = write_iris_csv(path, config.target_column)
    progress(f"wrote {path}: scikit-learn's iris data set, upload it with 'upload {path}'")
    return {"file": str(path), "target_column": config.target_column, "features": list(sample)}


# Commands that need no running stack's state, by name.
_WITHOUT_STATE: dict[str, Callable[[argparse.Namespace, Path], int]] = {
    "up": _up_command,
    "down": _down_command,
    "demo": _demo_command,
    "restart": _restart_command,
    "sample-data": _sample_data_command,
    "report": _report_command,  # the local stack's state only without --bucket
}


def _up(config: StackConfig, stack_file: Path, state_dir: Path, *, detach: bool) -> int:
    progress(f"starting the {config.orchestration}-mode stack of {stack_file.name}")
    state = stack.up(config, stack_file, state_dir, progress)
    if detach:
        emit(state.endpoints())
        progress("all services healthy; stop them with 'python -m devstack down'")
        return 0
    # From here on an interrupt, wherever it lands, must stop the stack.
    try:
        emit(state.endpoints())
        progress("all services healthy; press Ctrl-C to stop")
        dead = stack.watch(state)
    except KeyboardInterrupt:
        progress("stopping")
        stack.down(state_dir, progress)
        return 0
    progress(f"service '{dead.name}' died; last lines of {dead.log}:\n{log_tail(dead.log)}")
    stack.down(state_dir, progress)
    return 1


def _upload(state: stack.StackState, args: argparse.Namespace) -> None:
    """``upload`` (training data, under raw/) and ``score`` (under the scoring prefix)."""
    prefix = state.score_prefix if args.command == "score" else contract.RAW_PREFIX
    out: Path | None = getattr(args, "out", None)
    if out is not None and not args.wait:
        raise DevstackError("--out saves the predictions once the run is done: add --wait")
    if not args.wait:
        key = runs.upload(state, args.file, name=args.name, prefix=prefix)
        emit(dataclasses.asdict(key))
        return
    try:
        summary = runs.upload_and_follow(
            state,
            args.file,
            name=args.name,
            timeout=args.timeout,
            progress=progress,
            prefix=prefix,
        )
    except RunFailedError as failure:
        emit(failure.summary)
        raise
    if out is not None:
        runs.download(state, summary["predictions_csv"], out)
        progress(f"saved {summary['predictions_csv']} to {out}")
    emit(summary)


def _require_all_running(state: stack.StackState) -> None:
    dead = stack.dead_services(state)
    if dead:
        raise ServiceDiedError(
            dead[0].name,
            "is not running",
            log_tail(dead[0].log),
            f"restart it with 'python -m devstack restart {dead[0].name}' or restart the "
            "stack with 'python -m devstack down' and 'up --detach'",
        )


def _print_status(state: stack.StackState, state_dir: Path, *, as_json: bool) -> int:
    """Exit 0 when every service is healthy, 1 otherwise (the document says which)."""
    document = status.collect(state, state_dir)
    if as_json:
        emit(document)
    else:
        print(status.render(document), flush=True)
    return 0 if document["healthy"] else 1


def _print_runs(state: stack.StackState, *, as_json: bool) -> None:
    rows = runs.list_runs(state)
    if as_json:
        emit([dataclasses.asdict(row) for row in rows])
        return
    if not rows:
        progress(
            f"no uploads yet in gs://{state.bucket}/{contract.RAW_PREFIX} or /{state.score_prefix}"
        )
        return
    print(status.runs_table(dataclasses.asdict(row) for row in rows))


def _print_logs(state: stack.StackState, state_dir: Path, args: argparse.Namespace) -> None:
    chosen = [state.logged_service(args.service)] if args.service else state.services
    if args.follow:
        try:
            logs.follow(
                {item.name: item.log for item in chosen},
                out=sys.stdout,
                last_lines=args.lines,
                keep_going=lambda: stack.still_running(state_dir),
            )
        except KeyboardInterrupt:
            return  # Ctrl-C is how one stops following
        progress("the stack stopped; no more lines will come")
        return
    for item in chosen:
        if not args.service:
            print(f"==> {item.name} ({item.log}) <==")
        print(log_tail(item.log, args.lines))
