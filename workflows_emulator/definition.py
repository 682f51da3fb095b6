"""Turns workflow source into a checked program model.

Everything that can be known before running is checked here and reported as a
``DefinitionError`` naming the step and line: unknown step kinds and keys, ``next`` to
a missing step, ``break``/``continue`` outside a loop, calls to missing subworkflows or
unsupported functions, wrong arguments, bad expressions, blocking calls inside
expressions, and the documented structural limits. Nothing is silently ignored.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from workflows_emulator.errors import DefinitionError
from workflows_emulator.expressions import (
    Call,
    ExpressionSyntaxError,
    Target,
    dotted_name,
    parse_expression,
    parse_target,
)
from workflows_emulator.source import SourceList, SourceMap, load_source
from workflows_emulator.stdlib import DEFAULT_BACKOFF, FUNCTIONS, RETRY_POLICIES
from workflows_emulator.templates import (
    ExpressionTemplate,
    LiteralTemplate,
    Template,
    compile_template,
    expression_text,
)

MAX_SOURCE_BYTES = 128 * 1024
MAX_ASSIGNMENTS_PER_STEP = 50
MAX_SWITCH_CONDITIONS = 50
MAX_PARALLEL_BRANCHES = 10
MAX_PARALLEL_DEPTH = 2
MAX_CONCURRENCY = 20
CONTROL_TARGETS = ("end", "break", "continue")


# ---------------------------------------------------------------- model


@dataclass
class Step:
    name: str
    line: int
    next: str | None = field(default=None, kw_only=True)


@dataclass
class Block:
    steps: list[Step]

    def __post_init__(self) -> None:
        self.positions = {step.name: position for position, step in enumerate(self.steps)}


@dataclass
class Assignment:
    target: Target
    text: str
    value: Template


@dataclass
class AssignStep(Step):
    assignments: list[Assignment]


@dataclass
class CallStep(Step):
    function: str
    args: dict[str, Template]
    result: Target | None


@dataclass
class Condition:
    line: int
    test: Template
    body: Step | None
    next: str | None


@dataclass
class SwitchStep(Step):
    conditions: list[Condition]


@dataclass
class Loop:
    value: str
    index: str | None
    items: Template | None
    range: tuple[Template, Template] | None
    body: Block


@dataclass
class ForStep(Step):
    loop: Loop


@dataclass
class Branch:
    name: str
    line: int
    body: Block


@dataclass
class ParallelStep(Step):
    shared: list[str]
    concurrency_limit: int
    continue_all: bool
    branches: list[Branch] | None
    loop: Loop | None


@dataclass
class RetrySpec:
    predicate: str
    max_retries: Template
    initial_delay: Template
    max_delay: Template
    multiplier: Template


@dataclass
class TryStep(Step):
    body: Block
    retry: RetrySpec | None
    error_variable: str | None
    handler: Block | None
    inline_body: bool = False  # try: {call: ...} written without a steps list


@dataclass
class RaiseStep(Step):
    value: Template


@dataclass
class ReturnStep(Step):
    value: Template


@dataclass
class StepsStep(Step):
    body: Block


@dataclass
class NextStep(Step):
    """A step with only ``next``: a jump."""


@dataclass
class Parameter:
    name: str
    default: Template | None


@dataclass
class Subworkflow:
    name: str
    line: int
    params: list[Parameter]
    body: Block

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.params if p.name == name), None)


@dataclass
class Program:
    filename: str
    subworkflows: dict[str, Subworkflow]

    @property
    def main(self) -> Subworkflow:
        return self.subworkflows["main"]


# ---------------------------------------------------------------- parsing

_STEP_KINDS = ("assign", "call", "switch", "for", "parallel", "try", "raise", "return", "steps")
_KIND_KEYS: dict[str, set[str]] = {
    "assign": {"assign", "next"},
    "call": {"call", "args", "result", "next"},
    "switch": {"switch", "next"},
    "for": {"for", "next"},
    "parallel": {"parallel", "next"},
    "try": {"try", "retry", "except", "next"},
    "raise": {"raise"},
    "return": {"return"},
    "steps": {"steps", "next"},
}


class _Parser:
    def __init__(self, filename: str) -> None:
        self.filename = filename

    def fail(self, problem: str, step: str | None, line: int | None) -> DefinitionError:
        return DefinitionError(problem, step=step, line=line, filename=self.filename)

    def refuse_unknown_keys(
        self, raw: SourceMap, allowed: Collection[str], where: str, step: str
    ) -> None:
        """Fail at the first key of ``raw`` (sorted) that ``where`` does not allow."""
        unknown = sorted(set(raw) - set(allowed))
        if unknown:
            raise self.fail(
                f"'{unknown[0]}' is not allowed in {where} (allowed: {', '.join(sorted(allowed))})",
                step,
                raw.line_of(unknown[0]),
            )

    # -- program and subworkflows

    def program(self, document: Any) -> Program:
        if isinstance(document, list):
            steps = self.block(document, "main", getattr(document, "line", 1))
            main = Subworkflow("main", getattr(document, "line", 1), [], steps)
            return Program(self.filename, {"main": main})
        if not isinstance(document, SourceMap):
            raise self.fail("a workflow is a list of steps or a map of subworkflows", None, 1)
        subworkflows = {
            name: self.subworkflow(name, body, document.line_of(name))
            for name, body in document.items()
        }
        if "main" not in subworkflows:
            raise self.fail("the workflow has no 'main' subworkflow", None, document.line)
        if len(subworkflows["main"].params) > 1:
            raise self.fail(
                "'main' takes at most one parameter (the execution argument)",
                "main",
                subworkflows["main"].line,
            )
        return Program(self.filename, subworkflows)

    def subworkflow(self, name: str, body: Any, line: int) -> Subworkflow:
        if not name.isidentifier():
            raise self.fail(f"'{name}' is not a valid subworkflow name", name, line)
        if name in FUNCTIONS:
            raise self.fail(
                f"subworkflow '{name}' has the name of a standard-library function", name, line
            )
        if not isinstance(body, SourceMap) or "steps" not in body:
            raise self.fail(f"subworkflow '{name}' needs a 'steps' list", name, line)
        unknown = set(body) - {"params", "steps"}
        if unknown:
            raise self.fail(
                f"subworkflow '{name}' has unknown key '{sorted(unknown)[0]}' "
                "(allowed: params, steps)",
                name,
                body.line_of(sorted(unknown)[0]),
            )
        params = self.params(name, body.get("params", []), body.line_of("params"))
        return Subworkflow(
            name, line, params, self.block(body["steps"], name, body.line_of("steps"))
        )

    def params(self, owner: str, raw: Any, line: int) -> list[Parameter]:
        if not isinstance(raw, list):
            raise self.fail("'params' must be a list", owner, line)
        params: list[Parameter] = []
        for item in raw:
            if isinstance(item, str):
                params.append(Parameter(item, None))
            elif isinstance(item, dict) and len(item) == 1:
                ((name, default),) = item.items()
                params.append(Parameter(name, self.template(default, owner, line)))
            else:
                raise self.fail(
                    "each parameter is a name or a single-key map {name: default}", owner, line
                )
        names = [param.name for param in params]
        for name in names:
            if not name.isidentifier():
                raise self.fail(f"'{name}' is not a valid parameter name", owner, line)
            if names.count(name) > 1:
                raise self.fail(f"parameter '{name}' is declared twice", owner, line)
        return params

    # -- steps

    def block(self, raw: Any, owner: str, line: int) -> Block:
        if not isinstance(raw, SourceList) or not raw:
            raise self.fail("'steps' must be a non-empty list of steps", owner, line)
        items = self.single_key_items(
            raw, owner, "step is a map with exactly one key, the step name"
        )
        return Block([self.step(name, body, line) for name, body, line in items])

    def single_key_items(
        self, raw: SourceList, owner: str, shape: str
    ) -> Iterator[tuple[str, Any, int]]:
        """The (key, value, line) of each one-key map of a list of steps, assignments or
        branches; any other item is a definition error saying what ``shape`` it needs."""
        for item, item_line in zip(raw, raw.item_lines, strict=True):
            if not isinstance(item, SourceMap) or len(item) != 1:
                raise self.fail(f"each {shape}", owner, item_line)
            ((key, value),) = item.items()
            yield key, value, item.line_of(key)

    def step(self, name: str, body: Any, line: int) -> Step:
        if not isinstance(body, SourceMap):
            raise self.fail("a step's body must be a map", name, line)
        kinds = [kind for kind in _STEP_KINDS if kind in body]
        if not kinds:
            if set(body) == {"next"}:
                return NextStep(name, line, next=self.next_target(body["next"], name, line))
            unknown = sorted(set(body) - {"next"})
            raise self.fail(
                f"unknown step kind '{unknown[0] if unknown else '(empty)'}' (expected one of "
                f"{', '.join(_STEP_KINDS)})",
                name,
                line,
            )
        if len(kinds) > 1:
            raise self.fail(f"a step cannot be both '{kinds[0]}' and '{kinds[1]}'", name, line)
        kind = kinds[0]
        self.refuse_unknown_keys(body, _KIND_KEYS[kind], f"a {kind} step", name)
        next_target = self.next_target(body["next"], name, line) if "next" in body else None
        step = getattr(self, f"{kind}_step")(name, body, line)
        step.next = next_target
        return step  # type: ignore[no-any-return]

    def next_target(self, raw: Any, step: str, line: int) -> str:
        if not isinstance(raw, str) or not raw:
            raise self.fail("'next' must be a step name, end, break or continue", step, line)
        return raw

    def template(self, raw: Any, step: str, line: int) -> Template:
        try:
            return compile_template(raw)
        except ExpressionSyntaxError as error:
            raise self.fail(f"invalid expression: {error}", step, line) from None

    def target(self, text: Any, step: str, line: int) -> Target:
        if not isinstance(text, str):
            raise self.fail("an assignment target must be a variable name", step, line)
        try:
            return parse_target(text)
        except ExpressionSyntaxError as error:
            raise self.fail(f"invalid assignment target '{text}': {error}", step, line) from None

    def assign_step(self, name: str, body: SourceMap, line: int) -> AssignStep:
        raw = body["assign"]
        if not isinstance(raw, SourceList) or not raw:
            raise self.fail("'assign' must be a non-empty list of {variable: value}", name, line)
        if len(raw) > MAX_ASSIGNMENTS_PER_STEP:
            raise self.fail(
                f"an assign step holds at most {MAX_ASSIGNMENTS_PER_STEP} assignments, "
                f"this one has {len(raw)}",
                name,
                line,
            )
        assignments = []
        items = self.single_key_items(raw, name, "assignment is a single-key map {variable: value}")
        for text, value, item_line in items:
            assignments.append(
                Assignment(
                    self.target(text, name, item_line), text, self.template(value, name, item_line)
                )
            )
        return AssignStep(name, line, assignments)

    def call_step(self, name: str, body: SourceMap, line: int) -> CallStep:
        function = body["call"]
        if not isinstance(function, str) or expression_text(function) is not None:
            raise self.fail("'call' must name a subworkflow or a library function", name, line)
        raw_args = body.get("args", {})
        if not isinstance(raw_args, dict):
            raise self.fail("'args' must be a map of argument names to values", name, line)
        args = {
            key: self.template(value, name, body.line_of("args")) for key, value in raw_args.items()
        }
        result = body.get("result")
        result_target = (
            None if result is None else self.target(result, name, body.line_of("result"))
        )
        return CallStep(name, line, function, args, result_target)

    def switch_step(self, name: str, body: SourceMap, line: int) -> SwitchStep:
        raw = body["switch"]
        if not isinstance(raw, SourceList) or not raw:
            raise self.fail("'switch' must be a non-empty list of conditions", name, line)
        if len(raw) > MAX_SWITCH_CONDITIONS:
            raise self.fail(
                f"a switch holds at most {MAX_SWITCH_CONDITIONS} conditions", name, line
            )
        conditions = []
        for item, item_line in zip(raw, raw.item_lines, strict=True):
            if not isinstance(item, SourceMap) or "condition" not in item:
                raise self.fail("each switch entry needs a 'condition'", name, item_line)
            rest = SourceMap(item.line)
            for key, value in item.items():
                if key not in ("condition", "next"):
                    rest[key] = value
                    rest.key_lines[key] = item.line_of(key)
            if not rest and "next" not in item:
                raise self.fail("a switch condition needs 'next' or steps to run", name, item_line)
            condition_body = self.step(name, rest, item_line) if rest else None
            conditions.append(
                Condition(
                    item_line,
                    self.template(item["condition"], name, item_line),
                    condition_body,
                    self.next_target(item["next"], name, item_line) if "next" in item else None,
                )
            )
        return SwitchStep(name, line, conditions)

    def loop(self, name: str, raw: Any, line: int) -> Loop:
        if not isinstance(raw, SourceMap):
            raise self.fail("'for' must be a map with value, in/range and steps", name, line)
        self.refuse_unknown_keys(raw, ("value", "index", "in", "range", "steps"), "'for'", name)
        value = raw.get("value")
        if not isinstance(value, str) or not value.isidentifier():
            raise self.fail("'for' needs 'value', the name of the loop variable", name, line)
        index = raw.get("index")
        if index is not None and (not isinstance(index, str) or not index.isidentifier()):
            raise self.fail("'index' must be a variable name", name, line)
        if ("in" in raw) == ("range" in raw):
            raise self.fail("'for' needs exactly one of 'in' and 'range'", name, line)
        loop_range = None
        if "range" in raw:
            bounds = raw["range"]
            if isinstance(bounds, list) and len(bounds) == 2:
                loop_range = (
                    self.template(bounds[0], name, line),
                    self.template(bounds[1], name, line),
                )
            else:
                raise self.fail("'range' must be a list [start, end]", name, raw.line_of("range"))
        items = self.template(raw["in"], name, raw.line_of("in")) if "in" in raw else None
        if "steps" not in raw:
            raise self.fail("'for' needs 'steps'", name, line)
        return Loop(
            value, index, items, loop_range, self.block(raw["steps"], name, raw.line_of("steps"))
        )

    def for_step(self, name: str, body: SourceMap, line: int) -> ForStep:
        return ForStep(name, line, self.loop(name, body["for"], line))

    def parallel_step(self, name: str, body: SourceMap, line: int) -> ParallelStep:
        raw = body["parallel"]
        if not isinstance(raw, SourceMap):
            raise self.fail("'parallel' must be a map with branches or for", name, line)
        self.refuse_unknown_keys(
            raw,
            ("shared", "concurrency_limit", "exception_policy", "branches", "for"),
            "'parallel'",
            name,
        )
        if ("branches" in raw) == ("for" in raw):
            raise self.fail("'parallel' needs exactly one of 'branches' and 'for'", name, line)
        shared = raw.get("shared", [])
        if not isinstance(shared, list) or not all(
            isinstance(item, str) and item.isidentifier() for item in shared
        ):
            raise self.fail("'shared' must be a list of variable names", name, line)
        limit = raw.get("concurrency_limit", MAX_CONCURRENCY)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_CONCURRENCY
        ):
            raise self.fail(
                f"'concurrency_limit' must be an integer from 1 to {MAX_CONCURRENCY}", name, line
            )
        policy = raw.get("exception_policy")
        if policy not in (None, "continueAll"):
            raise self.fail("'exception_policy' can only be continueAll", name, line)
        branches = None
        if "branches" in raw:
            branches = self.branches(name, raw["branches"], raw.line_of("branches"))
        loop = self.loop(name, raw["for"], raw.line_of("for")) if "for" in raw else None
        return ParallelStep(
            name, line, list(shared), limit, policy == "continueAll", branches, loop
        )

    def branches(self, name: str, raw: Any, line: int) -> list[Branch]:
        if not isinstance(raw, SourceList) or len(raw) < 2:
            raise self.fail("'branches' must list at least two branches", name, line)
        if len(raw) > MAX_PARALLEL_BRANCHES:
            raise self.fail(
                f"a parallel step has at most {MAX_PARALLEL_BRANCHES} branches", name, line
            )
        branches = []
        items = self.single_key_items(raw, name, "branch is a map {branch_name: {steps: [...]}}")
        for branch_name, branch_body, item_line in items:
            if not isinstance(branch_body, SourceMap) or set(branch_body) != {"steps"}:
                raise self.fail("a branch holds only 'steps'", branch_name, item_line)
            branches.append(
                Branch(
                    branch_name, item_line, self.block(branch_body["steps"], branch_name, item_line)
                )
            )
        return branches

    def try_step(self, name: str, body: SourceMap, line: int) -> TryStep:
        raw_try = body["try"]
        if isinstance(raw_try, SourceMap) and set(raw_try) == {"steps"}:
            try_block = self.block(raw_try["steps"], name, body.line_of("try"))
        elif isinstance(raw_try, SourceMap):
            # A single step written inline: try: {call: ..., args: ..., result: ...}.
            try_block = Block([self.step(name, raw_try, body.line_of("try"))])
        else:
            raise self.fail("'try' must hold steps or a single step", name, line)
        retry = self.retry(name, body["retry"], body.line_of("retry")) if "retry" in body else None
        error_variable, handler = None, None
        if "except" in body:
            raw_except = body["except"]
            if not isinstance(raw_except, SourceMap) or "steps" not in raw_except:
                raise self.fail("'except' needs 'steps' (and optionally 'as')", name, line)
            self.refuse_unknown_keys(raw_except, ("as", "steps"), "'except'", name)
            error_variable = raw_except.get("as")
            if error_variable is not None and (
                not isinstance(error_variable, str) or not error_variable.isidentifier()
            ):
                raise self.fail("'as' must be a variable name", name, line)
            handler = self.block(raw_except["steps"], name, raw_except.line_of("steps"))
        if retry is None and handler is None:
            raise self.fail("'try' needs 'retry', 'except' or both", name, line)
        inline = not (isinstance(raw_try, SourceMap) and set(raw_try) == {"steps"})
        return TryStep(name, line, try_block, retry, error_variable, handler, inline)

    def retry(self, name: str, raw: Any, line: int) -> RetrySpec:
        reference = self.reference(raw)
        if reference is not None:
            policy = RETRY_POLICIES.get(reference)
            if policy is None:
                raise self.fail(
                    f"unknown retry policy '{reference}' (use http.default_retry, "
                    "http.default_retry_non_idempotent or a map with predicate, max_retries "
                    "and backoff)",
                    name,
                    line,
                )
            return RetrySpec(
                policy.predicate,
                LiteralTemplate(policy.max_retries),
                LiteralTemplate(policy.initial_delay),
                LiteralTemplate(policy.max_delay),
                LiteralTemplate(policy.multiplier),
            )
        if not isinstance(raw, SourceMap):
            raise self.fail("'retry' must be a policy expression or a map", name, line)
        self.refuse_unknown_keys(raw, ("predicate", "max_retries", "backoff"), "'retry'", name)
        for required in ("predicate", "max_retries"):
            if required not in raw:
                raise self.fail(f"'retry' needs '{required}'", name, line)
        predicate = self.reference(raw["predicate"])
        if predicate is None:
            raise self.fail("'predicate' must be ${name} of a predicate or subworkflow", name, line)
        backoff = raw.get("backoff", DEFAULT_BACKOFF)
        if self.reference(backoff) == "retry.default_backoff":
            backoff = DEFAULT_BACKOFF
        if not isinstance(backoff, dict) or set(backoff) != set(DEFAULT_BACKOFF):
            raise self.fail(
                "'backoff' needs exactly initial_delay, max_delay and multiplier", name, line
            )
        return RetrySpec(
            predicate,
            self.template(raw["max_retries"], name, line),
            self.template(backoff["initial_delay"], name, line),
            self.template(backoff["max_delay"], name, line),
            self.template(backoff["multiplier"], name, line),
        )

    @staticmethod
    def reference(raw: Any) -> str | None:
        """``${a.b}`` as ``a.b`` when it only names something; else None."""
        text = expression_text(raw)
        if text is None:
            return None
        try:
            return dotted_name(parse_expression(text))
        except ExpressionSyntaxError:
            return None

    def raise_step(self, name: str, body: SourceMap, line: int) -> RaiseStep:
        return RaiseStep(name, line, self.template(body["raise"], name, line))

    def return_step(self, name: str, body: SourceMap, line: int) -> ReturnStep:
        return ReturnStep(name, line, self.template(body["return"], name, line))

    def steps_step(self, name: str, body: SourceMap, line: int) -> StepsStep:
        return StepsStep(name, line, self.block(body["steps"], name, body.line_of("steps")))


# ---------------------------------------------------------------- validation


def nested_blocks(step: Step) -> Iterator[tuple[Block, str]]:
    """Blocks inside a step with their kind: "same" (jumps may leave them), "loop" or
    "branch" (jumps may not leave them)."""
    if isinstance(step, StepsStep):
        yield step.body, "same"
    elif isinstance(step, TryStep):
        yield step.body, "inline" if step.inline_body else "same"
        if step.handler is not None:
            yield step.handler, "same"
    elif isinstance(step, ForStep):
        yield step.loop.body, "loop"
    elif isinstance(step, SwitchStep):
        for condition in step.conditions:
            if condition.body is not None:
                yield Block([condition.body]), "inline"
    elif isinstance(step, ParallelStep):
        for branch in step.branches or []:
            yield branch.body, "branch"
        if step.loop is not None:
            yield step.loop.body, "parallel-loop"


def step_templates(step: Step) -> Iterator[Template]:
    if isinstance(step, AssignStep):
        for assignment in step.assignments:
            yield assignment.value
            for part in assignment.target.path:
                if not isinstance(part, str):
                    yield ExpressionTemplate("", part)
    elif isinstance(step, CallStep):
        yield from step.args.values()
    elif isinstance(step, SwitchStep):
        yield from (condition.test for condition in step.conditions)
    elif isinstance(step, ForStep | ParallelStep):
        loop = step.loop
        if loop is not None:
            if loop.items is not None:
                yield loop.items
            if loop.range is not None:
                yield from loop.range
    elif isinstance(step, RaiseStep | ReturnStep):
        yield step.value
    elif isinstance(step, TryStep) and step.retry is not None:
        retry = step.retry
        yield from (retry.max_retries, retry.initial_delay, retry.max_delay, retry.multiplier)


def assigned_names(block: Block) -> set[str]:
    """Variables a block assigns anywhere inside it (including nested blocks)."""
    return _assigned_outside(block, None)


class _Validator:
    def __init__(self, program: Program) -> None:
        self.program = program

    def fail(self, problem: str, step: Step | str, line: int) -> DefinitionError:
        name = step if isinstance(step, str) else step.name
        return DefinitionError(problem, step=name, line=line, filename=self.program.filename)

    def validate(self) -> None:
        for subworkflow in self.program.subworkflows.values():
            seen: dict[str, int] = {}
            self.check_unique(subworkflow.body, seen)
            for param in subworkflow.params:
                if param.default is not None:
                    self.check_templates([param.default], subworkflow.name, subworkflow.line)
            self.check_block(subworkflow.body, [subworkflow.body], in_loop=False, depth=0)

    def check_unique(self, block: Block, seen: dict[str, int]) -> None:
        for step in block.steps:
            if step.name in seen:
                raise self.fail(
                    f"step name '{step.name}' is already used on line {seen[step.name]}",
                    step,
                    step.line,
                )
            seen[step.name] = step.line
            for nested, kind in nested_blocks(step):
                if kind != "inline":
                    self.check_unique(nested, seen)
            if isinstance(step, ParallelStep):
                for branch in step.branches or []:
                    seen.setdefault(branch.name, branch.line)

    def check_block(
        self,
        block: Block,
        visible: list[Block],
        *,
        in_loop: bool,
        depth: int,
        parallel_loop: bool = False,
    ) -> None:
        for step in block.steps:
            self.check_next(step, step.next, visible, in_loop, parallel_loop)
            if isinstance(step, SwitchStep):
                for condition in step.conditions:
                    self.check_next(step, condition.next, visible, in_loop, parallel_loop)
            self.check_templates(step_templates(step), step, step.line)
            if isinstance(step, CallStep):
                self.check_call(step)
            if isinstance(step, TryStep) and step.retry is not None:
                self.check_predicate(step, step.retry.predicate)
            if isinstance(step, ParallelStep):
                self.check_parallel(step, block, depth)
            self.check_nested(
                step, visible, in_loop=in_loop, depth=depth, parallel_loop=parallel_loop
            )
            if depth > 0 and isinstance(step, ReturnStep):
                raise self.fail("'return' is not allowed inside a parallel branch", step, step.line)

    def check_nested(
        self, step: Step, visible: list[Block], *, in_loop: bool, depth: int, parallel_loop: bool
    ) -> None:
        for nested, kind in nested_blocks(step):
            if kind == "same":
                self.check_block(
                    nested,
                    [*visible, nested],
                    in_loop=in_loop,
                    depth=depth,
                    parallel_loop=parallel_loop,
                )
            elif kind == "inline":
                self.check_block(
                    nested, visible, in_loop=in_loop, depth=depth, parallel_loop=parallel_loop
                )
            elif kind == "loop":
                self.check_block(nested, [nested], in_loop=True, depth=depth)
            elif kind == "parallel-loop":
                self.check_block(
                    nested, [nested], in_loop=True, depth=depth + 1, parallel_loop=True
                )
            else:
                self.check_block(nested, [nested], in_loop=False, depth=depth + 1)

    def check_next(
        self,
        step: Step,
        target: str | None,
        visible: list[Block],
        in_loop: bool,
        parallel_loop: bool,
    ) -> None:
        if target is None or target == "end":
            return
        if target in ("break", "continue"):
            if not in_loop:
                raise self.fail(
                    f"'next: {target}' is only allowed inside a for loop", step, step.line
                )
            if target == "break" and parallel_loop:
                raise self.fail(
                    "'next: break' is not allowed in a parallel for loop", step, step.line
                )
            return
        if not any(target in block.positions for block in visible):
            raise self.fail(
                f"'next' refers to step '{target}', which does not exist here (a step can jump "
                "to steps of its own list or an enclosing one, not into or out of loops and "
                "branches)",
                step,
                step.line,
            )

    def check_templates(self, templates: Any, step: Step | str, line: int) -> None:
        for template in templates:
            for node in template.nodes():
                if isinstance(node, Call):
                    self.check_expression_call(node, step, line)

    def check_expression_call(self, node: Call, step: Step | str, line: int) -> None:
        subworkflow = self.program.subworkflows.get(node.function)
        if subworkflow is not None:
            required = [p for p in subworkflow.params if p.default is None]
            if not len(required) <= len(node.args) <= len(subworkflow.params):
                raise self.fail(
                    f"subworkflow '{node.function}' takes {len(required)} to "
                    f"{len(subworkflow.params)} arguments, got {len(node.args)}",
                    step,
                    line,
                )
            return
        function = FUNCTIONS.get(node.function)
        if function is None:
            raise self.fail(f"unsupported function '{node.function}'", step, line)
        if function.blocking:
            raise self.fail(
                f"'{node.function}' is a blocking call and can only be used in a call step",
                step,
                line,
            )
        problem = function.signature_problem(positional=len(node.args))
        if problem:
            raise self.fail(problem, step, line)

    def check_call(self, step: CallStep) -> None:
        subworkflow = self.program.subworkflows.get(step.function)
        if subworkflow is not None:
            for name in step.args:
                if subworkflow.parameter(name) is None:
                    raise self.fail(
                        f"subworkflow '{step.function}' has no parameter '{name}'", step, step.line
                    )
            for param in subworkflow.params:
                if param.default is None and param.name not in step.args:
                    raise self.fail(
                        f"subworkflow '{step.function}' needs argument '{param.name}'",
                        step,
                        step.line,
                    )
            return
        function = FUNCTIONS.get(step.function)
        if function is None:
            raise self.fail(
                f"unsupported function '{step.function}' (neither a subworkflow nor a supported "
                "library function or connector)",
                step,
                step.line,
            )
        problem = function.signature_problem(named=tuple(step.args))
        if problem:
            raise self.fail(problem, step, step.line)

    def check_predicate(self, step: Step, predicate: str) -> None:
        subworkflow = self.program.subworkflows.get(predicate)
        if subworkflow is not None:
            if not subworkflow.params:
                raise self.fail(
                    f"retry predicate '{predicate}' must take one parameter (the error)",
                    step,
                    step.line,
                )
            return
        function = FUNCTIONS.get(predicate)
        if function is None or function.parameter_names != ("e",):
            raise self.fail(f"unknown retry predicate '{predicate}'", step, step.line)

    def check_parallel(self, step: ParallelStep, enclosing: Block, depth: int) -> None:
        if depth + 1 > MAX_PARALLEL_DEPTH:
            raise self.fail(
                f"parallel steps nest at most {MAX_PARALLEL_DEPTH} deep (ParallelNestingError)",
                step,
                step.line,
            )
        bodies = [branch.body for branch in step.branches or []]
        if step.loop is not None:
            bodies.append(step.loop.body)
        outer = self.outer_names(step)
        local = {step.loop.value, step.loop.index} if step.loop is not None else set()
        for body in bodies:
            for name in sorted(assigned_names(body) & outer - set(step.shared) - local):
                raise self.fail(
                    f"a parallel branch assigns '{name}', a variable of the enclosing scope; "
                    "declare it in 'shared'",
                    step,
                    step.line,
                )

    def outer_names(self, parallel: ParallelStep) -> set[str]:
        """Variables assigned in the subworkflow outside this parallel step."""
        for subworkflow in self.program.subworkflows.values():
            if _contains_step(subworkflow.body, parallel):
                names = _assigned_outside(subworkflow.body, parallel)
                return names | {p.name for p in subworkflow.params}
        return set()


def _contains_step(block: Block, wanted: Step) -> bool:
    return any(
        step is wanted or any(_contains_step(nested, wanted) for nested, _ in nested_blocks(step))
        for step in block.steps
    )


def _assigned_outside(block: Block, excluded: Step | None) -> set[str]:
    """Variables assigned anywhere inside the block, except inside ``excluded``."""
    names: set[str] = set()
    for step in block.steps:
        if step is excluded:
            continue
        if isinstance(step, AssignStep):
            names.update(a.target.variable for a in step.assignments)
        elif isinstance(step, CallStep) and step.result is not None:
            names.add(step.result.variable)
        elif isinstance(step, TryStep) and step.error_variable:
            names.add(step.error_variable)
        for nested, _ in nested_blocks(step):
            names.update(_assigned_outside(nested, excluded))
    return names


def parse_program(source: str, filename: str) -> Program:
    """Parse and validate a workflow; raises DefinitionError."""
    if len(source.encode("utf-8")) > MAX_SOURCE_BYTES:
        raise DefinitionError(
            f"the workflow source exceeds {MAX_SOURCE_BYTES // 1024} KB", filename=filename
        )
    program = _Parser(filename).program(load_source(source, filename))
    _Validator(program).validate()
    return program
