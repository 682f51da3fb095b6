"""The Workflows expression language: a tokenizer, a precedence-climbing parser and an
evaluator. Nothing here uses Python's ``eval``.

Precedence (the data-types reference), loosest first: ``or``; ``and``; comparisons and
``in``; ``+ -``; ``* / // %``; unary ``-``; ``not``; then member access ``a.b``,
indexing ``a[i]`` and calls ``pkg.func(...)``. Operands follow the reference's tables:
numbers with numbers (int op int stays int except ``/``), ``+`` with a string on either
side concatenates a string, integer, double or boolean, comparisons need two numbers or
two strings, ``and``/``or``/``not`` need booleans.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import add, floordiv, mod, mul, sub
from typing import Any, Protocol

from workflows_emulator.errors import WorkflowError
from workflows_emulator.values import (
    INT64_MAX,
    checked_double,
    checked_int,
    format_double,
    is_int,
    is_number,
    type_name,
    values_equal,
)

MAX_EXPRESSION_LENGTH = 400


class ExpressionSyntaxError(Exception):
    """An expression that does not parse; the message says where and why."""


# ---------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Token:
    kind: str  # "int", "double", "string", "name", "op", "end"
    value: Any
    position: int


_OPERATORS = (
    "//",
    "==",
    "!=",
    "<=",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "<",
    ">",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    ":",
)
_NUMBER = re.compile(r"\d+(\.\d+)?([eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "b": "\b",
    "f": "\f",
    "\\": "\\",
    '"': '"',
    "'": "'",
    "/": "/",
}


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
            continue
        if char in "\"'":
            value, position_after = _read_string(text, position)
            tokens.append(Token("string", value, position))
            position = position_after
            continue
        number = _NUMBER.match(text, position)
        if number:
            literal = number.group(0)
            if number.group(1) or number.group(2):
                tokens.append(Token("double", float(literal), position))
            else:
                if int(literal) > INT64_MAX:
                    raise ExpressionSyntaxError(
                        f"integer literal {literal} does not fit in 64 bits"
                    )
                tokens.append(Token("int", int(literal), position))
            position = number.end()
            continue
        name = _NAME.match(text, position)
        if name:
            tokens.append(Token("name", name.group(0), position))
            position = name.end()
            continue
        for operator in _OPERATORS:
            if text.startswith(operator, position):
                tokens.append(Token("op", operator, position))
                position += len(operator)
                break
        else:
            raise ExpressionSyntaxError(f"unexpected character {char!r} at position {position}")
    tokens.append(Token("end", None, len(text)))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    chars: list[str] = []
    position = start + 1
    while position < len(text):
        char = text[position]
        if char == quote:
            return "".join(chars), position + 1
        if char == "\\":
            if position + 1 >= len(text):
                break
            escape = text[position + 1]
            if escape == "u":
                digits = text[position + 2 : position + 6]
                if not re.fullmatch(r"[0-9a-fA-F]{4}", digits):
                    raise ExpressionSyntaxError(f"bad \\u escape at position {position}")
                chars.append(chr(int(digits, 16)))
                position += 6
                continue
            if escape not in _ESCAPES:
                raise ExpressionSyntaxError(f"unknown escape \\{escape} at position {position}")
            chars.append(_ESCAPES[escape])
            position += 2
            continue
        chars.append(char)
        position += 1
    raise ExpressionSyntaxError(f"unterminated string starting at position {start}")


# ---------------------------------------------------------------- syntax tree


class Node:
    """A node of the expression tree."""

    def children(self) -> tuple[Node, ...]:
        return ()


@dataclass(frozen=True)
class Literal(Node):
    value: Any


@dataclass(frozen=True)
class ListLiteral(Node):
    items: tuple[Node, ...]

    def children(self) -> tuple[Node, ...]:
        return self.items


@dataclass(frozen=True)
class MapLiteral(Node):
    entries: tuple[tuple[Node, Node], ...]

    def children(self) -> tuple[Node, ...]:
        return tuple(part for entry in self.entries for part in entry)


@dataclass(frozen=True)
class Variable(Node):
    name: str


@dataclass(frozen=True)
class Member(Node):
    target: Node
    name: str

    def children(self) -> tuple[Node, ...]:
        return (self.target,)


@dataclass(frozen=True)
class Index(Node):
    target: Node
    index: Node

    def children(self) -> tuple[Node, ...]:
        return (self.target, self.index)


@dataclass(frozen=True)
class Call(Node):
    function: str
    args: tuple[Node, ...]

    def children(self) -> tuple[Node, ...]:
        return self.args


@dataclass(frozen=True)
class Unary(Node):
    operator: str  # "-" or "not"
    operand: Node

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class Binary(Node):
    operator: str
    left: Node
    right: Node

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children():
        yield from walk(child)


def dotted_name(node: Node) -> str | None:
    """``a.b.c`` as text when the node is only names joined by dots, else None."""
    if isinstance(node, Variable):
        return node.name
    if isinstance(node, Member):
        prefix = dotted_name(node.target)
        return None if prefix is None else f"{prefix}.{node.name}"
    return None


# ---------------------------------------------------------------- parser

_KEYWORD_LITERALS = {
    "true": True,
    "True": True,
    "TRUE": True,
    "false": False,
    "False": False,
    "FALSE": False,
    "null": None,
}
_COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.position = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.position]

    def advance(self) -> Token:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def at(self, kind: str, value: Any = None) -> bool:
        token = self.current
        return token.kind == kind and (value is None or token.value == value)

    def at_keyword(self, word: str) -> bool:
        # and/or/not may be written lower-case or upper-case, never mixed (datatypes page).
        return self.at("name", word) or self.at("name", word.upper())

    def expect(self, kind: str, value: Any = None) -> Token:
        if not self.at(kind, value):
            wanted = value if value is not None else kind
            raise ExpressionSyntaxError(
                f"expected {wanted!r} at position {self.current.position}, "
                f"found {self._describe(self.current)}"
            )
        return self.advance()

    @staticmethod
    def _describe(token: Token) -> str:
        return "end of expression" if token.kind == "end" else repr(token.value)

    def parse(self) -> Node:
        node = self.parse_or()
        if not self.at("end"):
            raise ExpressionSyntaxError(
                f"unexpected {self._describe(self.current)} at position {self.current.position}"
            )
        return node

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self.at_keyword("or"):
            self.advance()
            node = Binary("or", node, self.parse_and())
        return node

    def parse_and(self) -> Node:
        node = self.parse_comparison()
        while self.at_keyword("and"):
            self.advance()
            node = Binary("and", node, self.parse_comparison())
        return node

    def parse_comparison(self) -> Node:
        node = self.parse_additive()
        while (self.at("op") and self.current.value in _COMPARISONS) or self.at_keyword("in"):
            operator = self.advance().value
            node = Binary(operator, node, self.parse_additive())
        return node

    def parse_additive(self) -> Node:
        node = self.parse_multiplicative()
        while self.at("op", "+") or self.at("op", "-"):
            operator = self.advance().value
            node = Binary(operator, node, self.parse_multiplicative())
        return node

    def parse_multiplicative(self) -> Node:
        node = self.parse_unary()
        while self.at("op") and self.current.value in ("*", "/", "//", "%"):
            operator = self.advance().value
            node = Binary(operator, node, self.parse_unary())
        return node

    def parse_unary(self) -> Node:
        if self.at_keyword("not"):
            self.advance()
            return Unary("not", self.parse_unary())
        if self.at("op", "-"):
            self.advance()
            operand = self.parse_unary()
            if isinstance(operand, Literal) and is_number(operand.value):
                return Literal(-operand.value)
            return Unary("-", operand)
        if self.at("op", "+"):
            self.advance()
            return self.parse_unary()
        return self.parse_postfix()

    def parse_postfix(self) -> Node:
        node = self.parse_primary()
        while True:
            if self.at("op", "."):
                self.advance()
                node = Member(node, self.expect("name").value)
            elif self.at("op", "["):
                self.advance()
                index = self.parse_or()
                self.expect("op", "]")
                node = Index(node, index)
            elif self.at("op", "("):
                position = self.current.position
                function = dotted_name(node)
                if function is None:
                    raise ExpressionSyntaxError(
                        f"only named functions can be called (position {position})"
                    )
                self.advance()
                node = Call(function, tuple(self.parse_sequence(")")))
            else:
                return node

    def parse_sequence(self, closing: str) -> list[Node]:
        items: list[Node] = []
        while not self.at("op", closing):
            items.append(self.parse_or())
            if not self.at("op", closing):
                self.expect("op", ",")
        self.advance()
        return items

    def parse_primary(self) -> Node:
        token = self.current
        if token.kind in ("int", "double", "string"):
            self.advance()
            return Literal(token.value)
        if token.kind == "name":
            self.advance()
            if token.value in _KEYWORD_LITERALS:
                return Literal(_KEYWORD_LITERALS[token.value])
            if token.value in ("and", "or", "in", "AND", "OR"):
                raise ExpressionSyntaxError(
                    f"operator '{token.value}' needs a left operand (position {token.position})"
                )
            return Variable(token.value)
        if self.at("op", "("):
            self.advance()
            node = self.parse_or()
            self.expect("op", ")")
            return node
        if self.at("op", "["):
            self.advance()
            return ListLiteral(tuple(self.parse_sequence("]")))
        if self.at("op", "{"):
            self.advance()
            return MapLiteral(tuple(self.parse_map_entries()))
        raise ExpressionSyntaxError(
            f"unexpected {self._describe(token)} at position {token.position}"
        )

    def parse_map_entries(self) -> list[tuple[Node, Node]]:
        entries: list[tuple[Node, Node]] = []
        while not self.at("op", "}"):
            key = self.parse_or()
            self.expect("op", ":")
            entries.append((key, self.parse_or()))
            if not self.at("op", "}"):
                self.expect("op", ",")
        self.advance()
        return entries


def parse_expression(text: str) -> Node:
    """Parse the inside of ``${...}``; raises ExpressionSyntaxError."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionSyntaxError(
            f"expression is {len(text)} characters long; the limit is {MAX_EXPRESSION_LENGTH}"
        )
    if not text.strip():
        raise ExpressionSyntaxError("empty expression")
    return _Parser(text).parse()


@dataclass(frozen=True)
class Target:
    """The left side of an assignment: a variable and the keys/indices below it."""

    variable: str
    path: tuple[str | Node, ...]  # a str is a member name, a Node an index expression


def parse_target(text: str) -> Target:
    """Parse ``name``, ``name.key``, ``name[expr]`` and chains of them."""
    parser = _Parser(text)
    variable = parser.expect("name").value
    if variable in _KEYWORD_LITERALS or variable.lower() in ("and", "or", "not", "in"):
        raise ExpressionSyntaxError(f"'{variable}' is a keyword, not a variable name")
    path: list[str | Node] = []
    while not parser.at("end"):
        if parser.at("op", "."):
            parser.advance()
            path.append(parser.expect("name").value)
        elif parser.at("op", "["):
            parser.advance()
            path.append(parser.parse_or())
            parser.expect("op", "]")
        else:
            raise ExpressionSyntaxError(
                f"unexpected {parser._describe(parser.current)} in assignment target "
                f"at position {parser.current.position}"
            )
    return Target(variable, tuple(path))


# ---------------------------------------------------------------- evaluation


class Scope(Protocol):
    """What an expression can see: variables and callable functions."""

    def lookup(self, name: str) -> Any: ...

    def call_function(self, name: str, args: list[Any]) -> Any: ...


def evaluate(node: Node, scope: Scope) -> Any:
    return _EVALUATORS[type(node)](node, scope)


def _evaluate_map(node: MapLiteral, scope: Scope) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key_node, value_node in node.entries:
        key = evaluate(key_node, scope)
        if not isinstance(key, str):
            raise WorkflowError.tagged(
                "TypeError", f"map keys must be strings, got {type_name(key)}"
            )
        result[key] = evaluate(value_node, scope)
    return result


def _evaluate_call(node: Call, scope: Scope) -> Any:
    if node.function == "if" and len(node.args) == 3:
        # if() evaluates only the chosen branch, so it can guard a failing expression.
        condition = evaluate(node.args[0], scope)
        if not isinstance(condition, bool):
            raise WorkflowError.tagged(
                "TypeError", f"if: the condition must be a boolean, got {type_name(condition)}"
            )
        return evaluate(node.args[1] if condition else node.args[2], scope)
    return scope.call_function(node.function, [evaluate(arg, scope) for arg in node.args])


def _evaluate_binary(node: Binary, scope: Scope) -> Any:
    if node.operator in ("and", "or"):
        return _logical(node, scope)
    return binary(node.operator, evaluate(node.left, scope), evaluate(node.right, scope))


_EVALUATORS: dict[type[Node], Callable[[Any, Scope], Any]] = {
    Literal: lambda node, scope: node.value,
    Variable: lambda node, scope: scope.lookup(node.name),
    Member: lambda node, scope: get_member(evaluate(node.target, scope), node.name),
    Index: lambda node, scope: get_index(evaluate(node.target, scope), evaluate(node.index, scope)),
    Call: _evaluate_call,
    Unary: lambda node, scope: _unary(node.operator, evaluate(node.operand, scope)),
    Binary: _evaluate_binary,
    ListLiteral: lambda node, scope: [evaluate(item, scope) for item in node.items],
    MapLiteral: _evaluate_map,
}


def get_member(value: Any, name: str) -> Any:
    if not isinstance(value, dict):
        raise WorkflowError.tagged(
            "TypeError", f"cannot read key '{name}' of a {type_name(value)} value"
        )
    if name not in value:
        raise WorkflowError.tagged("KeyError", f"key not found: {name}")
    return value[name]


def get_index(value: Any, index: Any) -> Any:
    if isinstance(value, dict):
        if not isinstance(index, str):
            raise WorkflowError.tagged(
                "TypeError", f"map keys are strings; cannot index a map with {type_name(index)}"
            )
        return get_member(value, index)
    if isinstance(value, list):
        if not is_int(index):
            raise WorkflowError.tagged(
                "TypeError", f"list indices must be integers, got {type_name(index)}"
            )
        if not 0 <= index < len(value):
            raise WorkflowError.tagged(
                "IndexError", f"list index {index} out of range (length {len(value)})"
            )
        return value[index]
    raise WorkflowError.tagged("TypeError", f"cannot index a {type_name(value)} value")


def _logical(node: Binary, scope: Scope) -> bool:
    left = _require_bool(node.operator, evaluate(node.left, scope))
    if node.operator == "and" and not left:
        return False
    if node.operator == "or" and left:
        return True
    return _require_bool(node.operator, evaluate(node.right, scope))


def _require_bool(operator: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise WorkflowError.tagged(
            "TypeError", f"operator '{operator}' needs booleans, got {type_name(value)}"
        )
    return value


def _unary(operator: str, value: Any) -> Any:
    if operator == "not":
        return not _require_bool("not", value)
    if is_int(value):
        return checked_int(-value)
    if isinstance(value, float):
        return -value
    raise WorkflowError.tagged("TypeError", f"unary '-' needs a number, got {type_name(value)}")


def binary(operator: str, left: Any, right: Any) -> Any:
    """Apply a non-logical binary operator with Workflows' operand-type rules."""
    if operator == "==":
        return values_equal(left, right)
    if operator == "!=":
        return not values_equal(left, right)
    if operator == "in":
        return _contains(left, right)
    if operator in ("<", "<=", ">", ">="):
        return _compare(operator, left, right)
    if operator == "+" and (isinstance(left, str) or isinstance(right, str)):
        return _concatenate(left, right)
    if not (is_number(left) and is_number(right)):
        raise WorkflowError.tagged(
            "TypeError",
            f"unsupported operand types for '{operator}': {type_name(left)} and {type_name(right)}",
        )
    return _arithmetic(operator, left, right)


def _concatenate(left: Any, right: Any) -> str:
    parts = []
    for value in (left, right):
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, bool):
            parts.append("true" if value else "false")
        elif is_int(value):
            parts.append(str(value))
        elif isinstance(value, float):
            parts.append(format_double(value))
        else:
            raise WorkflowError.tagged(
                "TypeError",
                f"unsupported operand types for '+': {type_name(left)} and {type_name(right)}",
            )
    return parts[0] + parts[1]


def _arithmetic(symbol: str, left: int | float, right: int | float) -> int | float:
    both_int = is_int(left) and is_int(right)
    if symbol in ("/", "//", "%") and right == 0:
        raise WorkflowError.tagged("ZeroDivisionError", f"division by zero in '{symbol}'")
    if symbol == "/":
        return checked_double(left / right)
    if both_int:
        return checked_int(_INT_OPERATIONS[symbol](left, right))
    return checked_double(float(_DOUBLE_OPERATIONS[symbol](left, right)))


def _floor_modulo(left: float, right: float) -> float:
    # Same sign convention as '//' so that a == (a // b) * b + a % b holds.
    return left - right * math.floor(left / right)


_INT_OPERATIONS: dict[str, Callable[[Any, Any], int]] = {
    "+": add,
    "-": sub,
    "*": mul,
    "//": floordiv,
    "%": mod,
}
_DOUBLE_OPERATIONS: dict[str, Callable[[Any, Any], float]] = {
    "+": add,
    "-": sub,
    "*": mul,
    "//": lambda left, right: float(math.floor(left / right)),
    "%": _floor_modulo,
}


def _compare(operator: str, left: Any, right: Any) -> bool:
    comparable = (is_number(left) and is_number(right)) or (
        isinstance(left, str) and isinstance(right, str)
    )
    if not comparable:
        raise WorkflowError.tagged(
            "TypeError",
            f"cannot compare {type_name(left)} and {type_name(right)} with '{operator}'",
        )
    if operator == "<":
        return bool(left < right)
    if operator == "<=":
        return bool(left <= right)
    if operator == ">":
        return bool(left > right)
    return bool(left >= right)


def _contains(item: Any, container: Any) -> bool:
    if isinstance(container, list):
        return any(values_equal(item, element) for element in container)
    if isinstance(container, dict):
        if not isinstance(item, str):
            raise WorkflowError.tagged(
                "TypeError", f"map keys are strings; 'in' got a {type_name(item)}"
            )
        return item in container
    raise WorkflowError.tagged(
        "TypeError", f"'in' needs a list or a map on its right, got {type_name(container)}"
    )
