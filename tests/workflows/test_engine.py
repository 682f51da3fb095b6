"""The interpreter: steps, control flow, scopes, parallelism, errors, retries, limits
and the checks made before a workflow runs."""

from __future__ import annotations

import json
import textwrap
import threading
from typing import Any

import pytest

from workflows_emulator import engine
from workflows_emulator.engine import Cancelled, ExecutionContext, WorkflowProgram
from workflows_emulator.errors import DefinitionError, WorkflowError
from workflows_emulator.services import HttpRequest, HttpResponse, Services


class RecordingSleep:
    """Records requested delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float, cancel_event: threading.Event) -> None:
        self.delays.append(seconds)


class ScriptedTransport:
    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[HttpRequest] = []

    def __call__(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        status = self.statuses.pop(0)
        body = json.dumps({"status": status}).encode()
        return HttpResponse(status, {"Content-Type": "application/json"}, body)


def program(source: str) -> WorkflowProgram:
    return WorkflowProgram.from_source(textwrap.dedent(source), filename="test.yaml")


def run(source: str, argument: Any = None, **context: Any) -> Any:
    context.setdefault("services", Services(sleep=RecordingSleep()))
    return program(source).run(argument, context=ExecutionContext(**context))


def failure(source: str, argument: Any = None, **context: Any) -> WorkflowError:
    with pytest.raises(WorkflowError) as caught:
        run(source, argument, **context)
    return caught.value


def definition_error(source: str) -> DefinitionError:
    with pytest.raises(DefinitionError) as caught:
        program(source)
    return caught.value


# ---------------------------------------------------------------- basics


def test_main_receives_the_argument_and_returns() -> None:
    source = """
    main:
      params: [input]
      steps:
        - answer:
            return: ${input.n * 2}
    """
    assert run(source, {"n": 21}) == 42


def test_a_plain_list_of_steps_is_main() -> None:
    assert run("- one:\n    assign:\n      - x: 1\n- two:\n    return: ${x + 1}\n") == 2


def test_falling_off_the_end_returns_null() -> None:
    assert run("main:\n  steps:\n    - a:\n        assign:\n          - x: 1\n") is None


def test_assign_nested_keys_list_indices_and_value_semantics() -> None:
    source = """
    main:
      steps:
        - init:
            assign:
              - m: {}
              - m.a.b: 1
              - m["c"]: 2
              - xs: [1, 2, 3]
              - xs[1]: ${xs[0] + 10}
              - copy: ${xs}
              - copy[0]: 99
              - key: "dyn"
              - m[key]: ${len(xs)}
        - out:
            return: ${[m, xs, copy]}
    """
    assert run(source) == [{"a": {"b": 1}, "c": 2, "dyn": 3}, [1, 11, 3], [99, 11, 3]]


@pytest.mark.parametrize(
    ("assignment", "tag"),
    [("xs[5]: 1", "IndexError"), ("missing.key: 1", "KeyError"), ("n.key: 1", "TypeError")],
)
def test_assign_errors(assignment: str, tag: str) -> None:
    source = f"""
    main:
      steps:
        - init:
            assign:
              - xs: [1]
              - n: 5
              - {assignment}
    """
    assert failure(source).tags == [tag]


def test_subworkflows_with_defaults_and_expression_calls() -> None:
    source = """
    main:
      steps:
        - via_call:
            call: add
            args:
              a: 1
            result: first
        - via_expression:
            return: ${[first, add(1, 2), add(a=1)]}
    add:
      params: [a, b: 10]
      steps:
        - sum:
            return: ${a + b}
    """
    error = definition_error(source)
    assert error.step == "via_expression"
    assert "invalid expression" in str(error)
    fixed = source.replace(", add(a=1)", "")
    assert run(fixed) == [11, 3]


def test_subworkflow_variables_are_isolated() -> None:
    source = """
    main:
      steps:
        - set:
            assign:
              - x: 1
        - call_it:
            call: other
            result: r
        - out:
            return: ${[x, r]}
    other:
      steps:
        - set:
            assign:
              - x: 2
        - back:
            return: ${x}
    """
    assert run(source) == [1, 2]


# ---------------------------------------------------------------- control flow


def test_switch_first_true_condition_nested_steps_and_fallthrough() -> None:
    source = """
    main:
      params: [n]
      steps:
        - classify:
            switch:
              - condition: ${n < 0}
                return: "negative"
              - condition: ${n == 0}
                next: zero
              - condition: ${n > 100}
                steps:
                  - big:
                      assign:
                        - label: "big"
                  - done_big:
                      return: ${label}
        - small:
            return: "small"
        - zero:
            return: "zero"
    """
    assert [run(source, n) for n in (-1, 0, 500, 5)] == ["negative", "zero", "big", "small"]


def test_switch_condition_must_be_boolean() -> None:
    source = """
    main:
      steps:
        - s:
            switch:
              - condition: ${1}
                next: end
    """
    assert failure(source).tags == ["TypeError"]


def test_next_jumps_loop_and_end() -> None:
    source = """
    main:
      steps:
        - init:
            assign:
              - i: 0
        - again:
            assign:
              - i: ${i + 1}
        - check:
            switch:
              - condition: ${i < 5}
                next: again
            next: finish
        - never:
            raise: "skipped"
        - finish:
            steps:
              - inner:
                  switch:
                    - condition: ${i == 5}
                      next: out
              - unreachable:
                  raise: "no"
        - out:
            return: ${i}
    """
    assert run(source) == 5
    assert (
        run("main:\n  steps:\n    - a:\n        next: end\n    - b:\n        return: 1\n") is None
    )


def test_for_over_list_map_and_inclusive_range_with_index() -> None:
    source = """
    main:
      steps:
        - init:
            assign:
              - seen: []
        - over_list:
            for:
              value: v
              index: i
              in: ["a", "b"]
              steps:
                - add:
                    assign:
                      - seen: ${list.concat(seen, v + string(i))}
        - over_map:
            for:
              value: k
              in: {"x": 1, "y": 2}
              steps:
                - add_key:
                    assign:
                      - seen: ${list.concat(seen, k)}
        - over_range:
            for:
              value: n
              range: [1, 3]
              steps:
                - add_n:
                    assign:
                      - seen: ${list.concat(seen, n)}
        - out:
            return: ${seen}
    """
    assert run(source) == ["a0", "b1", "x", "y", 1, 2, 3]


def test_break_continue_and_loop_local_variables() -> None:
    source = """
    main:
      steps:
        - init:
            assign:
              - total: 0
        - loop:
            for:
              value: n
              range: [1, 10]
              steps:
                - skip_odd:
                    switch:
                      - condition: ${n % 2 == 1}
                        next: continue
                - stop:
                    switch:
                      - condition: ${n > 6}
                        next: break
                - add:
                    assign:
                      - total: ${total + n}
                      - temp: ${n}
        - out:
            return: ${total}
        - leak:
            return: ${temp}
    """
    assert run(source) == 12
    leak = source.replace("            return: ${total}\n", "            next: leak\n", 1)
    assert failure(leak).tags == ["KeyError"]


# ---------------------------------------------------------------- parallel


def test_parallel_branches_with_shared_variables() -> None:
    source = """
    main:
      steps:
        - init:
            assign:
              - results: {}
              - counter: 0
        - fan_out:
            parallel:
              shared: [results, counter]
              branches:
                - left:
                    steps:
                      - l:
                          assign:
                            - results.left: 1
                            - counter: ${counter + 1}
                - right:
                    steps:
                      - r:
                          assign:
                            - results.right: 2
                            - counter: ${counter + 1}
        - out:
            return: ${[results, counter]}
    """
    assert run(source) == [{"left": 1, "right": 2}, 2]


def test_parallel_for_with_concurrency_limit_sums_every_iteration() -> None:
    source = """
    main:
      steps:
        - init:
            assign:
              - total: 0
        - fan_out:
            parallel:
              shared: [total]
              concurrency_limit: 3
              for:
                value: n
                range: [1, 50]
                steps:
                  - add:
                      assign:
                        - total: ${total + n}
        - out:
            return: ${total}
    """
    assert run(source) == 1275


def test_parallel_assignment_to_unshared_outer_variable_is_rejected() -> None:
    source = """
    main:
      steps:
        - init:
            assign:
              - total: 0
        - fan_out:
            parallel:
              branches:
                - a:
                    steps:
                      - set_a:
                          assign:
                            - total: 1
                - b:
                    steps:
                      - set_b:
                          assign:
                            - local_only: 2
    """
    error = definition_error(source)
    assert "total" in str(error)
    assert error.step == "fan_out"


PARALLEL_FAILING = """
main:
  steps:
    - init:
        assign:
          - done: []
    - fan_out:
        parallel:
          shared: [done]
          POLICY
          for:
            value: n
            in: [1, 2, 3]
            steps:
              - maybe_fail:
                  switch:
                    - condition: ${n == 2}
                      raise:
                        message: ${"bad " + string(n)}
                        tags: ["ValueError"]
              - record:
                  assign:
                    - done: ${list.concat(done, n)}
"""


def test_parallel_default_policy_fails_with_unhandled_branch_error() -> None:
    error = failure(PARALLEL_FAILING.replace("POLICY", ""))
    assert error.tags == ["UnhandledBranchError"]
    assert error.payload["branches"][0]["error"] == {"message": "bad 2", "tags": ["ValueError"]}


def test_parallel_continue_all_collects_errors() -> None:
    error = failure(PARALLEL_FAILING.replace("POLICY", "exception_policy: continueAll"))
    assert error.tags == ["UnhandledBranchError"]
    assert error.payload["branches"] == [
        {"id": "1", "error": {"message": "bad 2", "tags": ["ValueError"]}}
    ]


def test_shared_variable_must_exist_before_the_parallel_step() -> None:
    source = """
    main:
      steps:
        - fan_out:
            parallel:
              shared: [nothing]
              branches:
                - a:
                    steps:
                      - x:
                          assign:
                            - nothing: 1
                - b:
                    steps:
                      - y:
                          assign:
                            - nothing: 2
    """
    assert failure(source).tags == ["KeyError"]


# ---------------------------------------------------------------- errors and retries


def test_raise_string_and_map_and_except_as() -> None:
    source = """
    main:
      steps:
        - guarded:
            try:
              steps:
                - boom:
                    raise: "plain text"
            except:
              as: e
              steps:
                - keep:
                    assign:
                      - first: ${e}
        - second:
            try:
              steps:
                - boom2:
                    raise:
                      code: 7
                      message: "custom"
            except:
              as: e
              steps:
                - out:
                    return: ${[first, e.code]}
    """
    assert run(source) == ["plain text", 7]


def test_uncaught_error_carries_payload_and_stack() -> None:
    source = """
    main:
      steps:
        - go:
            call: inner
    inner:
      steps:
        - divide:
            assign:
              - x: ${1 / 0}
    """
    error = failure(source)
    assert error.payload["tags"] == ["ZeroDivisionError"]
    assert error.stack[0] == {"routine": "inner", "step": "divide", "line": 8}
    assert error.stack[-1]["routine"] == "main"


RETRY = """
main:
  steps:
    - init:
        assign:
          - attempts: 0
    - flaky:
        try:
          steps:
            - count:
                assign:
                  - attempts: ${attempts + 1}
            - fail_early:
                switch:
                  - condition: ${attempts < SUCCEED_AT}
                    raise:
                      tags: ["Transient"]
                      message: "try again"
        retry:
          predicate: ${only_transient}
          max_retries: 4
          backoff:
            initial_delay: 1
            max_delay: 4
            multiplier: 2
        except:
          as: e
          steps:
            - gave_up:
                return: ${"gave up after " + string(attempts)}
    - ok:
        return: ${attempts}
only_transient:
  params: [e]
  steps:
    - decide:
        return: ${"Transient" in e.tags}
"""


def test_retry_backoff_until_success() -> None:
    sleep = RecordingSleep()
    assert run(RETRY.replace("SUCCEED_AT", "4"), services=Services(sleep=sleep)) == 4
    assert sleep.delays == [1.0, 2.0, 4.0]


def test_retry_exhaustion_goes_to_except() -> None:
    sleep = RecordingSleep()
    result = run(RETRY.replace("SUCCEED_AT", "100"), services=Services(sleep=sleep))
    assert result == "gave up after 5"
    assert sleep.delays == [1.0, 2.0, 4.0, 4.0]


def test_predicate_must_return_boolean() -> None:
    source = RETRY.replace("SUCCEED_AT", "3").replace('${"Transient" in e.tags}', "${1}")
    source = source.replace('return: ${"gave up after " + string(attempts)}', "raise: ${e}")
    assert failure(source).tags == ["TypeError"]


def test_http_default_retry_retries_503_then_succeeds() -> None:
    transport, sleep = ScriptedTransport(503, 503, 200), RecordingSleep()
    source = """
    main:
      steps:
        - get:
            try:
              call: http.get
              args:
                url: http://service.local/x
              result: response
            retry: ${http.default_retry}
        - out:
            return: ${response.body.status}
    """
    assert run(source, services=Services(transport=transport, sleep=sleep)) == 200
    assert len(transport.requests) == 3
    assert sleep.delays == [1.0, 1.25]


def test_http_default_retry_non_idempotent_does_not_retry_502() -> None:
    transport = ScriptedTransport(502)
    source = """
    main:
      steps:
        - post:
            try:
              call: http.post
              args:
                url: http://service.local/x
                body: {}
            retry: ${http.default_retry_non_idempotent}
    """
    error = failure(source, services=Services(transport=transport, sleep=RecordingSleep()))
    assert error.payload["code"] == 502
    assert len(transport.requests) == 1


# ---------------------------------------------------------------- context and services


def test_env_builtins_user_env_and_callbacks() -> None:
    steps: list[tuple[str, str]] = []
    logs: list[dict[str, Any]] = []
    source = """
    main:
      steps:
        - log:
            call: sys.log
            args:
              text: ${sys.get_env("GREETING")}
        - out:
            return:
              project: ${sys.get_env("GOOGLE_CLOUD_PROJECT_ID")}
              location: ${sys.get_env("GOOGLE_CLOUD_LOCATION")}
              workflow: ${sys.get_env("GOOGLE_CLOUD_WORKFLOW_ID")}
              execution: ${sys.get_env("GOOGLE_CLOUD_WORKFLOW_EXECUTION_ID")}
    """
    result = run(
        source,
        project_id="proj",
        location="europe-west1",
        workflow_id="wf",
        execution_id="exec-1",
        env={"GREETING": "hi"},
        on_step=lambda routine, step: steps.append((routine, step)),
        on_log=logs.append,
    )
    assert result == {
        "project": "proj",
        "location": "europe-west1",
        "workflow": "wf",
        "execution": "exec-1",
    }
    assert steps == [("main", "log"), ("main", "out")]
    assert logs == [{"severity": "DEFAULT", "text": "hi"}]


def test_cancel_interrupts_a_long_sleep() -> None:
    cancel = threading.Event()
    source = "- wait:\n    call: sys.sleep\n    args:\n      seconds: 3600\n"
    threading.Timer(0.05, cancel.set).start()
    with pytest.raises(Cancelled):
        program(source).run(context=ExecutionContext(cancel_event=cancel))


def test_cancelled_before_start_runs_no_step() -> None:
    cancel = threading.Event()
    cancel.set()
    steps: list[str] = []
    with pytest.raises(Cancelled):
        program("- a:\n    return: 1\n").run(
            context=ExecutionContext(cancel_event=cancel, on_step=lambda r, s: steps.append(s))
        )
    assert steps == []


def test_pubsub_connector_in_a_workflow() -> None:
    transport = ScriptedTransport(200)
    source = """
    main:
      steps:
        - publish:
            call: googleapis.pubsub.v1.projects.topics.publish
            args:
              topic: projects/p/topics/events
              body:
                messages:
                  - data: '${base64.encode(json.encode({"ok": true}))}'
            result: published
        - out:
            return: ${published}
    """
    result = run(
        source, pubsub_emulator_host="127.0.0.1:8085", services=Services(transport=transport)
    )
    assert result == {"status": 200}
    assert transport.requests[0].url.endswith("/v1/projects/p/topics/events:publish")


# ---------------------------------------------------------------- limits


def test_recursion_depth_limit() -> None:
    source = """
    main:
      steps:
        - start:
            call: down
            args:
              n: 0
    down:
      params: [n]
      steps:
        - deeper:
            call: down
            args:
              n: ${n + 1}
    """
    assert failure(source).tags == ["RecursionError"]


def test_step_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "MAX_STEPS", 50)
    source = "- spin:\n    next: spin\n"
    assert failure(source).tags == ["ResourceLimitError"]


def test_argument_size_limit() -> None:
    assert failure("- a:\n    return: 1\n", "x" * 40_000).tags == ["ResourceLimitError"]


# ---------------------------------------------------------------- definition errors


@pytest.mark.parametrize(
    ("source", "step", "line", "text"),
    [
        ("- a:\n    frobnicate: 1\n", "a", 1, "unknown step kind 'frobnicate'"),
        ("- a:\n    assign:\n      - x: 1\n    returns: 2\n", "a", 4, "'returns' is not allowed"),
        ("- a:\n    next: nowhere\n", "a", 1, "'nowhere'"),
        ("- a:\n    call: not_defined\n", "a", 1, "unsupported function 'not_defined'"),
        ("- a:\n    return: ${math.sqrt(4)}\n", "a", 1, "unsupported function 'math.sqrt'"),
        ('- a:\n    return: ${http.get("u")}\n', "a", 1, "blocking call"),
        ("- a:\n    next: break\n", "a", 1, "only allowed inside a for loop"),
        ("- a:\n    return: ${1 +}\n", "a", 1, "invalid expression"),
        ("- a:\n    assign:\n      - x: 1\n- a:\n    return: 2\n", "a", 4, "already used"),
        ("- a:\n    call: http.get\n    args:\n      uri: x\n", "a", 1, "no argument 'uri'"),
        ("- a:\n    call: sys.sleep\n", "a", 1, "needs argument 'seconds'"),
        (
            "- a:\n    try:\n      steps:\n        - b:\n            return: 1\n",
            "a",
            1,
            "needs 'retry', 'except'",
        ),
        (
            "- a:\n    try:\n      steps:\n        - b:\n            return: 1\n"
            "    retry: ${http.nope}\n",
            "a",
            6,
            "unknown retry policy",
        ),
        (
            "- a:\n    try:\n      steps:\n        - b:\n            return: 1\n"
            "    except:\n      as: e\n      when: always\n      steps:\n"
            "        - c:\n            return: 2\n",
            "a",
            8,
            "'when' is not allowed in 'except' (allowed: as, steps)",
        ),
        (
            "- a:\n    for:\n      value: v\n      in: [1]\n      step: 2\n"
            "      steps:\n        - b:\n            return: ${v}\n",
            "a",
            5,
            "'step' is not allowed in 'for' (allowed: in, index, range, steps, value)",
        ),
    ],
)
def test_definition_errors_name_step_and_line(source: str, step: str, line: int, text: str) -> None:
    error = definition_error(source)
    assert error.step == step
    assert error.line == line
    assert text in str(error)


def test_definition_errors_without_a_step() -> None:
    assert "no 'main'" in str(definition_error("other:\n  steps:\n    - a:\n        return: 1\n"))
    bad_yaml = definition_error("main:\n  steps: [\n")
    assert bad_yaml.line is not None
    assert "invalid YAML" in str(bad_yaml)
    assert "duplicate key" in str(definition_error("main:\n  steps: []\nmain:\n  steps: []\n"))


def test_parallel_structure_limits() -> None:
    branches = "\n".join(
        f"          - b{i}:\n              steps:\n                - s{i}:\n"
        f"                    assign:\n                      - v{i}: 1"
        for i in range(11)
    )
    source = f"- p:\n    parallel:\n      branches:\n{branches}\n"
    source = source.replace("\n          - b", "\n        - b")
    assert "at most 10 branches" in str(definition_error(source))


def test_call_missing_subworkflow_argument_is_a_definition_error() -> None:
    source = """
    main:
      steps:
        - c:
            call: helper
    helper:
      params: [needed]
      steps:
        - r:
            return: ${needed}
    """
    assert "needs argument 'needed'" in str(definition_error(source))


def test_loop_inside_a_branch_updates_the_branch_variable() -> None:
    source = """
    main:
      steps:
        - init:
            assign:
              - sums: {}
        - fan_out:
            parallel:
              shared: [sums]
              branches:
                - small:
                    steps:
                      - start_small:
                          assign:
                            - acc: 0
                      - loop_small:
                          for:
                            value: n
                            range: [1, 3]
                            steps:
                              - add_small:
                                  assign:
                                    - acc: ${acc + n}
                      - save_small:
                          assign:
                            - sums.small: ${acc}
                - big:
                    steps:
                      - save_big:
                          assign:
                            - sums.big: 100
        - out:
            return: ${sums}
    """
    assert run(source) == {"small": 6, "big": 100}


def test_bytes_cannot_be_the_result() -> None:
    error = failure('- a:\n    return: ${text.encode("x")}\n')
    assert error.tags == ["TypeError"]
    assert "base64" in error.message


def test_next_end_finishes_only_its_parallel_branch() -> None:
    source = """
    main:
      steps:
        - init:
            assign:
              - marks: []
        - fan_out:
            parallel:
              shared: [marks]
              for:
                value: n
                in: [1, 2]
                steps:
                  - stop_early:
                      switch:
                        - condition: ${n == 1}
                          next: end
                  - mark:
                      assign:
                        - marks: ${list.concat(marks, n)}
        - out:
            return: ${marks}
    """
    assert run(source) == [2]
