"""Runs a Cloud Workflows program: the public face of the local engine.

``WorkflowProgram.from_source`` parses and validates a definition (raising
``DefinitionError``); ``run`` executes it with an ``ExecutionContext`` and returns the
result, raises ``WorkflowError`` for an uncaught error, or ``Cancelled``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workflows_emulator.definition import (
    AssignStep,
    Block,
    CallStep,
    ForStep,
    Loop,
    NextStep,
    ParallelStep,
    Program,
    RaiseStep,
    RetrySpec,
    ReturnStep,
    Step,
    StepsStep,
    Subworkflow,
    SwitchStep,
    TryStep,
    parse_program,
)
from workflows_emulator.errors import Cancelled, DefinitionError, WorkflowError
from workflows_emulator.expressions import Target, evaluate, get_index, get_member
from workflows_emulator.services import Services
from workflows_emulator.stdlib import FUNCTIONS, CallEnvironment, sleep_for
from workflows_emulator.values import (
    estimated_size,
    is_int,
    is_number,
    reject_long_strings,
    to_json_text,
    type_name,
)

__all__ = [
    "Cancelled",
    "DefinitionError",
    "ExecutionContext",
    "WorkflowError",
    "WorkflowProgram",
]

MAX_STEPS = 100_000
MAX_CALL_DEPTH = 20
MAX_VARIABLE_BYTES = 512 * 1024
MAX_ARGUMENT_BYTES = 32 * 1024
MAX_UNHANDLED_BRANCH_ERRORS = 100


@dataclass
class ExecutionContext:
    workflow_id: str = "workflow"
    execution_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    project_id: str = "local-project"
    location: str = "us-central1"
    # User env vars (sys.get_env); the engine adds the GOOGLE_CLOUD_* built-ins.
    env: Mapping[str, str] = field(default_factory=dict)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    # (subworkflow name, step name) as each step starts (feeds status.currentSteps).
    on_step: Callable[[str, str], None] | None = None
    # Each sys.log entry {"severity", "text"/"json", ...}.
    on_log: Callable[[dict[str, Any]], None] | None = None
    pubsub_emulator_host: str | None = field(
        default_factory=lambda: os.environ.get("PUBSUB_EMULATOR_HOST")
    )
    # HTTP transport, sleep and clock; tests inject fakes to stay fast and deterministic.
    services: Services = field(default_factory=Services)


class WorkflowProgram:
    """A parsed and validated workflow definition; safe to run many times at once."""

    def __init__(self, program: Program, source: str) -> None:
        self._program = program
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        # Same shape as the service's revision ids ("000001-a1b").
        self.revision_id = f"000001-{digest[:3]}"

    @classmethod
    def from_source(cls, source: str, *, filename: str = "<workflow>") -> WorkflowProgram:
        return cls(parse_program(source, filename), source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> WorkflowProgram:
        file = Path(path)
        try:
            source = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise DefinitionError(
                f"cannot read the workflow: {error}", filename=str(file)
            ) from None
        return cls.from_source(source, filename=str(file))

    @property
    def subworkflow_names(self) -> tuple[str, ...]:
        return tuple(self._program.subworkflows)

    def run(self, argument: Any = None, *, context: ExecutionContext | None = None) -> Any:
        """Execute ``main`` with ``argument``; returns its result."""
        context = context or ExecutionContext()
        if estimated_size(argument) > MAX_ARGUMENT_BYTES:
            raise WorkflowError.tagged(
                "ResourceLimitError",
                f"the execution argument exceeds {MAX_ARGUMENT_BYTES // 1024} KB",
            )
        execution = _Execution(self._program, context, self.revision_id)
        main = self._program.main
        arguments = {main.params[0].name: copy.deepcopy(argument)} if main.params else {}
        result = execution.call_subworkflow(main, arguments, depth=0)
        reject_long_strings(result)
        try:
            to_json_text(result)
        except WorkflowError:
            raise WorkflowError.tagged(
                "TypeError",
                "the workflow result contains bytes, which cannot be returned; "
                "encode them with base64.encode or text.decode",
            ) from None
        return result


# ---------------------------------------------------------------- control flow


class _Return(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, value: Any) -> None:
        self.value = value


class _Jump(Exception):  # noqa: N818 - control flow, not an error
    """``next`` to a step of an enclosing list, or to end/break/continue."""

    def __init__(self, target: str) -> None:
        self.target = target


class _BranchAborted(Exception):  # noqa: N818 - control flow, not an error
    """Another branch of the same parallel step failed; this one stops."""


# ---------------------------------------------------------------- variables


class _Variables:
    """One scope. Lookups fall through to the parent; assignments update the scope that
    already holds the name (only ``shared`` names cross a parallel branch boundary),
    otherwise they create the name here."""

    def __init__(
        self, parent: _Variables | None = None, *, shared: frozenset[str] | None = None
    ) -> None:
        self.parent = parent
        self.values: dict[str, Any] = {}
        self.sizes: dict[str, int] = {}
        self.shared = shared  # None: not a branch; names that pass through otherwise

    def owner_of(self, name: str) -> _Variables | None:
        scope: _Variables | None = self
        while scope is not None:
            if name in scope.values:
                return scope
            if scope.shared is not None and name not in scope.shared:
                return None
            scope = scope.parent
        return None

    def lookup(self, name: str) -> Any:
        scope: _Variables | None = self
        while scope is not None:
            if name in scope.values:
                return scope.values[name]
            scope = scope.parent
        raise WorkflowError.tagged("KeyError", f"variable '{name}' is not defined")

    def total_size(self) -> int:
        total, scope = 0, self
        while scope is not None:
            total += sum(scope.sizes.values())
            scope = scope.parent  # type: ignore[assignment]
        return total


@dataclass
class _Frame:
    """The state of one subworkflow invocation (or one parallel branch of it)."""

    routine: str
    variables: _Variables
    depth: int
    aborts: tuple[threading.Event, ...] = ()
    in_parallel: bool = False


# ---------------------------------------------------------------- execution


class _Execution:
    def __init__(self, program: Program, context: ExecutionContext, revision_id: str) -> None:
        self.program = program
        self.context = context
        self.steps_taken = 0
        self.counter_lock = threading.Lock()
        # Assignments inside parallel branches are atomic with respect to each other.
        self.shared_lock = threading.RLock()
        env = dict(context.env)
        env.update(
            {
                "GOOGLE_CLOUD_PROJECT_ID": context.project_id,
                "GOOGLE_CLOUD_PROJECT_NUMBER": _project_number(context.project_id),
                "GOOGLE_CLOUD_LOCATION": context.location,
                "GOOGLE_CLOUD_WORKFLOW_ID": context.workflow_id,
                "GOOGLE_CLOUD_WORKFLOW_REVISION_ID": revision_id,
                "GOOGLE_CLOUD_WORKFLOW_EXECUTION_ID": context.execution_id,
            }
        )
        self.environment = CallEnvironment(
            env=env,
            services=context.services,
            cancel_event=context.cancel_event,
            on_log=context.on_log,
            pubsub_emulator_host=context.pubsub_emulator_host,
        )

    # -- subworkflows and functions

    def call_subworkflow(
        self, subworkflow: Subworkflow, arguments: dict[str, Any], *, depth: int
    ) -> Any:
        if depth >= MAX_CALL_DEPTH:
            raise WorkflowError.tagged(
                "RecursionError",
                f"maximum call stack depth ({MAX_CALL_DEPTH}) exceeded calling "
                f"'{subworkflow.name}'",
            )
        frame = _Frame(subworkflow.name, _Variables(), depth + 1)
        for param in subworkflow.params:
            if param.name in arguments:
                value = arguments[param.name]
            elif param.default is not None:
                value = param.default.evaluate(_Scope(self, frame))
            else:
                raise WorkflowError.tagged(
                    "TypeError", f"subworkflow '{subworkflow.name}' needs argument '{param.name}'"
                )
            self.store(frame, Target(param.name, ()), value)
        try:
            self.run_block(subworkflow.body, frame)
        except _Return as returned:
            return returned.value
        except _Jump as jump:
            if jump.target != "end":
                raise AssertionError(f"unresolved jump to {jump.target}") from None
        return None

    def call_function(
        self, name: str, positional: list[Any], named: Mapping[str, Any], frame: _Frame
    ) -> Any:
        subworkflow = self.program.subworkflows.get(name)
        if subworkflow is not None:
            arguments = dict(zip((p.name for p in subworkflow.params), positional, strict=False))
            arguments.update(named)
            return self.call_subworkflow(subworkflow, copy.deepcopy(arguments), depth=frame.depth)
        function = FUNCTIONS[name]
        result = function.invoke(self.environment, positional, named)
        self.check_running(frame)
        return result

    # -- blocks and steps

    def run_block(self, block: Block, frame: _Frame) -> None:
        position = 0
        while position < len(block.steps):
            step = block.steps[position]
            try:
                target = self.run_step(step, frame)
            except _Jump as jump:
                if jump.target not in block.positions:
                    raise
                position = block.positions[jump.target]
                continue
            if target is None:
                position += 1
            elif target in block.positions:
                position = block.positions[target]
            else:
                raise _Jump(target)

    def run_step(self, step: Step, frame: _Frame) -> str | None:
        """Run one step; returns the name of an explicit next step, or None."""
        self.check_running(frame)
        with self.counter_lock:
            self.steps_taken += 1
            if self.steps_taken > MAX_STEPS:
                raise WorkflowError.tagged(
                    "ResourceLimitError", f"the execution exceeded {MAX_STEPS} steps"
                )
        if self.context.on_step is not None:
            self.context.on_step(frame.routine, step.name)
        try:
            return self.dispatch(step, frame)
        except WorkflowError as error:
            error.add_frame(frame.routine, step.name, step.line)
            raise

    def dispatch(self, step: Step, frame: _Frame) -> str | None:
        handler = _STEP_HANDLERS[type(step)]
        outcome = handler(self, step, frame)
        return outcome if outcome is not None else step.next

    def run_assign(self, step: AssignStep, frame: _Frame) -> None:
        if frame.in_parallel:
            with self.shared_lock:
                self.assign_all(step, frame)
        else:
            self.assign_all(step, frame)

    def assign_all(self, step: AssignStep, frame: _Frame) -> None:
        scope = _Scope(self, frame)
        for assignment in step.assignments:
            self.store(frame, assignment.target, assignment.value.evaluate(scope))

    def run_call(self, step: CallStep, frame: _Frame) -> None:
        scope = _Scope(self, frame)
        args = {name: template.evaluate(scope) for name, template in step.args.items()}
        result = self.call_function(step.function, [], args, frame)
        if step.result is not None:
            self.store(frame, step.result, result)

    def run_switch(self, step: SwitchStep, frame: _Frame) -> str | None:
        scope = _Scope(self, frame)
        for condition in step.conditions:
            matched = condition.test.evaluate(scope)
            if not isinstance(matched, bool):
                raise WorkflowError.tagged(
                    "TypeError", f"a switch condition must be a boolean, got {type_name(matched)}"
                )
            if matched:
                if condition.body is not None:
                    inline_next = self.dispatch(condition.body, frame)
                    if inline_next is not None:
                        return inline_next
                return condition.next or step.next
        return None

    def run_for(self, step: ForStep, frame: _Frame) -> None:
        for index, value in enumerate(self.loop_values(step.loop, frame)):
            iteration = self.loop_frame(step.loop, frame, index, value, shared=None)
            try:
                self.run_block(step.loop.body, iteration)
            except _Jump as jump:
                if jump.target == "break":
                    break
                if jump.target != "continue":
                    raise

    def loop_values(self, loop: Loop, frame: _Frame) -> list[Any]:
        scope = _Scope(self, frame)
        if loop.items is not None:
            items = loop.items.evaluate(scope)
            if isinstance(items, dict):
                return list(items)
            if not isinstance(items, list):
                raise WorkflowError.tagged(
                    "TypeError", f"'for ... in' needs a list or a map, got {type_name(items)}"
                )
            return list(items)
        assert loop.range is not None
        start, end = (bound.evaluate(scope) for bound in loop.range)
        if not (is_number(start) and is_number(end)):
            raise WorkflowError.tagged(
                "TypeError",
                f"'range' bounds must be numbers, got {type_name(start)} and {type_name(end)}",
            )
        count = int(end - start) + 1 if end >= start else 0
        if count > MAX_STEPS:
            raise WorkflowError.tagged("ResourceLimitError", f"range of {count} values is too long")
        both_int = is_int(start) and is_int(end)
        return [start + offset if both_int else float(start + offset) for offset in range(count)]

    def loop_frame(
        self, loop: Loop, frame: _Frame, index: int, value: Any, *, shared: frozenset[str] | None
    ) -> _Frame:
        # Loop variables and any variable first created in the body are local to it.
        variables = _Variables(frame.variables, shared=shared)
        iteration = _Frame(frame.routine, variables, frame.depth, frame.aborts, frame.in_parallel)
        self.store(iteration, Target(loop.value, ()), value, local=True)
        if loop.index is not None:
            self.store(iteration, Target(loop.index, ()), index, local=True)
        return iteration

    def run_parallel(self, step: ParallelStep, frame: _Frame) -> None:
        for name in step.shared:
            if frame.variables.owner_of(name) is None:
                raise WorkflowError.tagged(
                    "KeyError",
                    f"shared variable '{name}' must be assigned before the parallel step",
                )
        shared = frozenset(step.shared)
        abort = threading.Event()
        aborts = (*frame.aborts, abort)
        tasks: list[tuple[str, Callable[[], None]]] = []
        if step.branches is not None:
            for branch in step.branches:
                branch_frame = _Frame(
                    frame.routine,
                    _Variables(frame.variables, shared=shared),
                    frame.depth,
                    aborts,
                    True,
                )
                tasks.append((branch.name, _bind_block(self, branch.body, branch_frame)))
        else:
            assert step.loop is not None
            for index, value in enumerate(self.loop_values(step.loop, frame)):
                iteration = self.loop_frame(step.loop, frame, index, value, shared=shared)
                iteration.aborts, iteration.in_parallel = aborts, True
                tasks.append((str(index), _bind_loop_body(self, step.loop.body, iteration)))
        self.run_concurrently(step, tasks, abort)

    def run_concurrently(
        self,
        step: ParallelStep,
        tasks: list[tuple[str, Callable[[], None]]],
        abort: threading.Event,
    ) -> None:
        errors: list[tuple[str, WorkflowError]] = []
        fatal: list[BaseException] = []
        record_lock = threading.Lock()

        def run(task_id: str, task: Callable[[], None]) -> None:
            try:
                task()
            except _BranchAborted:
                pass
            except WorkflowError as error:
                with record_lock:
                    errors.append((task_id, error))
                if not step.continue_all:
                    abort.set()
            except BaseException as error:  # Cancelled, or a bug: stop every branch
                with record_lock:
                    fatal.append(error)
                abort.set()

        with ThreadPoolExecutor(max_workers=step.concurrency_limit) as pool:
            for task_id, task in tasks:
                pool.submit(run, task_id, task)
        if fatal:
            raise fatal[0]
        if not errors:
            return
        # Under either policy the step fails with one UnhandledBranchError; the default
        # policy only differs in stopping the other branches at once.
        raise WorkflowError.tagged(
            "UnhandledBranchError",
            "UnhandledBranchError: one or more branches or iterations encountered an unhandled "
            "runtime error",
            branches=[
                {"id": task_id, "error": error.payload}
                for task_id, error in errors[:MAX_UNHANDLED_BRANCH_ERRORS]
            ],
            truncated=len(errors) > MAX_UNHANDLED_BRANCH_ERRORS,
        )

    def run_try(self, step: TryStep, frame: _Frame) -> None:
        attempt = 0
        delay: float | None = None
        while True:
            try:
                self.run_block(step.body, frame)
                return
            except WorkflowError as error:
                caught = error
            if step.retry is not None:
                policy = self.retry_settings(step.retry, frame)
                if attempt < policy[0] and self.should_retry(step.retry, caught, frame):
                    delay = policy[1] if delay is None else min(delay * policy[3], policy[2])
                    attempt += 1
                    sleep_for(self.environment, delay)
                    self.check_running(frame)
                    continue
            if step.handler is None:
                raise caught
            if step.error_variable is not None:
                self.store(frame, Target(step.error_variable, ()), caught.payload)
            self.run_block(step.handler, frame)
            return

    def retry_settings(self, retry: RetrySpec, frame: _Frame) -> tuple[int, float, float, float]:
        scope = _Scope(self, frame)
        max_retries = retry.max_retries.evaluate(scope)
        values = [
            t.evaluate(scope) for t in (retry.initial_delay, retry.max_delay, retry.multiplier)
        ]
        if not is_int(max_retries) or max_retries < 0:
            raise WorkflowError.tagged(
                "ValueError", "retry: max_retries must be a non-negative integer"
            )
        if not all(is_number(value) and value >= 0 for value in values):
            raise WorkflowError.tagged(
                "ValueError", "retry: backoff values must be non-negative numbers"
            )
        return max_retries, float(values[0]), float(values[1]), float(values[2])

    def should_retry(self, retry: RetrySpec, error: WorkflowError, frame: _Frame) -> bool:
        decision = self.call_function(retry.predicate, [copy.deepcopy(error.payload)], {}, frame)
        if not isinstance(decision, bool):
            raise WorkflowError.tagged(
                "TypeError",
                f"retry predicate '{retry.predicate}' must return a boolean, got "
                f"{type_name(decision)}",
            )
        return decision

    def run_raise(self, step: RaiseStep, frame: _Frame) -> None:
        raise WorkflowError(step.value.evaluate(_Scope(self, frame)))

    def run_return(self, step: ReturnStep, frame: _Frame) -> None:
        raise _Return(step.value.evaluate(_Scope(self, frame)))

    def run_steps(self, step: StepsStep, frame: _Frame) -> None:
        self.run_block(step.body, frame)

    def run_next(self, step: NextStep, frame: _Frame) -> None:
        return None

    # -- variables

    def store(self, frame: _Frame, target: Target, value: Any, *, local: bool = False) -> None:
        """Assign with value semantics: the stored value is a copy of ``value``."""
        if frame.in_parallel:
            with self.shared_lock:
                self.store_unlocked(frame, target, copy.deepcopy(value), local=local)
        else:
            self.store_unlocked(frame, target, copy.deepcopy(value), local=local)

    def store_unlocked(self, frame: _Frame, target: Target, value: Any, *, local: bool) -> None:
        reject_long_strings(value)
        variables = frame.variables
        owner = variables if local else (variables.owner_of(target.variable) or variables)
        if target.path:
            if target.variable not in owner.values:
                raise WorkflowError.tagged(
                    "KeyError", f"variable '{target.variable}' is not defined"
                )
            container = owner.values[target.variable]
            scope = _Scope(self, frame)
            keys = [
                part if isinstance(part, str) else evaluate(part, scope) for part in target.path
            ]
            for key in keys[:-1]:
                container = _child_for_assignment(container, key)
            _set_item(container, keys[-1], value)
        else:
            owner.values[target.variable] = value
        owner.sizes[target.variable] = estimated_size(owner.values[target.variable])
        if variables.total_size() > MAX_VARIABLE_BYTES:
            raise WorkflowError.tagged(
                "ResourceLimitError",
                f"variables exceed the memory limit of {MAX_VARIABLE_BYTES // 1024} KB",
            )

    # -- cancellation

    def check_running(self, frame: _Frame) -> None:
        if self.context.cancel_event.is_set():
            raise Cancelled(f"execution {self.context.execution_id} was cancelled")
        if any(abort.is_set() for abort in frame.aborts):
            raise _BranchAborted()


def _child_for_assignment(container: Any, key: Any) -> Any:
    """The container one level down, creating missing map keys as empty maps."""
    if isinstance(container, dict) and isinstance(key, str) and key not in container:
        container[key] = {}
        return container[key]
    if isinstance(container, dict) and isinstance(key, str):
        return get_member(container, key)
    return get_index(container, key)


def _set_item(container: Any, key: Any, value: Any) -> None:
    if isinstance(container, dict):
        if not isinstance(key, str):
            raise WorkflowError.tagged("TypeError", f"map keys are strings, got {type_name(key)}")
        container[key] = value
    elif isinstance(container, list):
        get_index(container, key)  # raises the right IndexError/TypeError
        container[key] = value
    else:
        raise WorkflowError.tagged(
            "TypeError", f"cannot assign into a {type_name(container)} value"
        )


def _bind_block(execution: _Execution, block: Block, frame: _Frame) -> Callable[[], None]:
    return _bind_loop_body(execution, block, frame, ends=("end",))


def _bind_loop_body(
    execution: _Execution,
    block: Block,
    frame: _Frame,
    *,
    ends: tuple[str, ...] = ("end", "continue"),
) -> Callable[[], None]:
    """A branch or iteration as a task; ``next: end`` (and ``continue`` in a loop) only
    finish that branch or iteration."""

    def run() -> None:
        try:
            execution.run_block(block, frame)
        except _Jump as jump:
            if jump.target not in ends:
                raise

    return run


class _Scope:
    """The expression view of a frame."""

    def __init__(self, execution: _Execution, frame: _Frame) -> None:
        self.execution = execution
        self.frame = frame

    def lookup(self, name: str) -> Any:
        return self.frame.variables.lookup(name)

    def call_function(self, name: str, args: list[Any]) -> Any:
        return self.execution.call_function(name, args, {}, self.frame)


def _project_number(project_id: str) -> str:
    # A stable 12-digit number per project id: there is no real project behind it.
    digest = hashlib.sha256(project_id.encode("utf-8")).hexdigest()
    return str(int(digest[:12], 16) % 10**12).rjust(12, "0")


_STEP_HANDLERS: dict[type[Step], Callable[[_Execution, Any, _Frame], str | None]] = {
    AssignStep: _Execution.run_assign,
    CallStep: _Execution.run_call,
    SwitchStep: _Execution.run_switch,
    ForStep: _Execution.run_for,
    ParallelStep: _Execution.run_parallel,
    TryStep: _Execution.run_try,
    RaiseStep: _Execution.run_raise,
    ReturnStep: _Execution.run_return,
    StepsStep: _Execution.run_steps,
    NextStep: _Execution.run_next,
}
