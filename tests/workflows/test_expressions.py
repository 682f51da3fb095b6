"""The expression language: parsing, precedence, operand types and errors."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from workflows_emulator.errors import WorkflowError
from workflows_emulator.expressions import (
    ExpressionSyntaxError,
    evaluate,
    parse_expression,
    parse_target,
)
from workflows_emulator.services import Services
from workflows_emulator.stdlib import FUNCTIONS, CallEnvironment


class DictScope:
    """Variables from a dict; functions from the standard library."""

    def __init__(self, variables: dict[str, Any] | None = None) -> None:
        self.variables = variables or {}
        self.environment = CallEnvironment(
            env={}, services=Services(), cancel_event=threading.Event()
        )

    def lookup(self, name: str) -> Any:
        if name not in self.variables:
            raise WorkflowError.tagged("KeyError", f"variable '{name}' is not defined")
        return self.variables[name]

    def call_function(self, name: str, args: list[Any]) -> Any:
        return FUNCTIONS[name].invoke(self.environment, args, {})


def run(text: str, **variables: Any) -> Any:
    return evaluate(parse_expression(text), DictScope(variables))


def error_of(text: str, **variables: Any) -> WorkflowError:
    with pytest.raises(WorkflowError) as caught:
        run(text, **variables)
    return caught.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7 / 2", 3.5),
        ("6 / 2", 3.0),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7.5 // 2", 3.0),
        ("7 % 3", 1),
        ("7.5 % 2", 1.5),
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 2 - 3", 5),
        ("2 * 3 % 4", 2),
        ("1 + 2.5", 3.5),
        ("-3 + 1", -2),
        ("- (2 + 3)", -5),
        ('"ab" + "cd"', "abcd"),
        ("1 < 2", True),
        ("2 <= 2.0", True),
        ('"abc" < "abd"', True),
        ("1 == 1.0", True),
        ('1 == "1"', False),
        ("true == 1", False),
        ("null == null", True),
        ("[1, [2]] == [1, [2]]", True),
        ('{"a": 1} != {"a": 2}', True),
        ("not true", False),
        ("not true == false", True),
        ('"n=" + 1', "n=1"),
        ('2.5 + "x"', "2.5x"),
        ('true + "!"', "true!"),
        ("true AND false OR NOT false", True),
        ("-2 * 3", -6),
        ('if(1 < 2, "yes", 1 / 0)', "yes"),
        ("if(false, 1 / 0, 2)", 2),
        ("true or false and false", True),
        ("(true or false) and false", False),
        ("2 in [1, 2, 3]", True),
        ('"k" in {"k": 1}', True),
        ('"x" in {"k": 1}', False),
        ("1 + 1 == 2 and 3 > 2", True),
        ("True and TRUE", True),
        ("1e3", 1000.0),
        ('"tab\\there"', "tab\there"),
        ("'single'", "single"),
        ('"\\u00e9"', "é"),
        ("[1, 2][1]", 2),
        ('{"a": {"b": [10, 20]}}.a.b[1]', 20),
    ],
)
def test_operators_follow_workflows_rules(text: str, expected: Any) -> None:
    result = run(text)
    assert result == expected
    assert type(result) is type(expected)


def test_member_index_and_variables() -> None:
    data = {"user": {"name": "ada", "tags": ["x", "y"]}, "key": "name"}
    assert run("data.user.name", data=data) == "ada"
    assert run("data.user[data.key]", data=data) == "ada"
    assert run('data["user"]["tags"][1]', data=data) == "y"
    assert run("len(data.user.tags) - 1", data=data) == 1


def test_and_or_short_circuit_skip_the_failing_side() -> None:
    assert run("false and missing.key") is False
    assert run("true or 1 / 0 == 1") is True
    assert error_of("true and missing").tags == ["KeyError"]


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("1 / 0", "ZeroDivisionError"),
        ("1 // 0", "ZeroDivisionError"),
        ("5 % 0", "ZeroDivisionError"),
        ("1.0 / 0.0", "ZeroDivisionError"),
        ('null + "a"', "TypeError"),
        ("true + 1", "TypeError"),
        ("not 1 == 2", "TypeError"),
        ("if(1, 2, 3)", "TypeError"),
        ("[1] + [2]", "TypeError"),
        ('"a" * 2', "TypeError"),
        ('1 < "2"', "TypeError"),
        ("null < 1", "TypeError"),
        ("1 and true", "TypeError"),
        ("not 0", "TypeError"),
        ('-"x"', "TypeError"),
        ("1 in 5", "TypeError"),
        ("1 in {}", "TypeError"),
        ('{"a": 1}.b', "KeyError"),
        ('{"a": 1}["b"]', "KeyError"),
        ("[1, 2][2]", "IndexError"),
        ("[1, 2][-1]", "IndexError"),
        ('[1, 2]["0"]', "TypeError"),
        ("(5).field", "TypeError"),
        ("undefined_variable", "KeyError"),
        ("9223372036854775807 + 1", "ValueError"),
        ("-9223372036854775807 - 2", "ValueError"),
        ("3037000500 * 3037000500", "ValueError"),
    ],
)
def test_errors_carry_workflows_tags(text: str, tag: str) -> None:
    error = error_of(text)
    assert error.tags == [tag]
    assert error.message


@pytest.mark.parametrize(
    "text",
    [
        "1 +",
        "(1",
        "[1, 2",
        '"open',
        "a.",
        "1 2",
        "f(1)(2)",
        "and x",
        "@",
        "9223372036854775808",
        '"\\q"',
        "",
    ],
)
def test_syntax_errors_are_reported(text: str) -> None:
    with pytest.raises(ExpressionSyntaxError):
        parse_expression(text)


def test_expression_length_limit() -> None:
    with pytest.raises(ExpressionSyntaxError, match="limit is 400"):
        parse_expression("1 + " * 100 + "1")


def test_never_uses_python_eval() -> None:
    # Python-only syntax must not work: the language is parsed, not eval'd.
    for text in (
        "true And false",
        "1 if true else 2",
        "[x for x in y]",
        "lambda: 1",
        "2 ** 3",
        "x is None",
    ):
        with pytest.raises(ExpressionSyntaxError):
            parse_expression(text)


def test_assignment_targets() -> None:
    target = parse_target('a.b["c"][0]')
    assert target.variable == "a"
    assert target.path[0] == "b"
    assert len(target.path) == 3
    with pytest.raises(ExpressionSyntaxError):
        parse_target("a + 1")
    with pytest.raises(ExpressionSyntaxError):
        parse_target("true")
