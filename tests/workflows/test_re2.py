"""RE2 patterns on Python's re: what is refused, what is translated, what matches."""

from __future__ import annotations

import pytest

from workflows_emulator.errors import WorkflowError
from workflows_emulator.re2 import compile_re2


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("(a)\\1", "backreferences"),
        ("(?P<x>a)(?P=x)", "backreferences"),
        ("a(?=b)", "lookahead and lookbehind"),
        ("a(?!b)", "lookahead and lookbehind"),
        ("(?<=a)b", "lookahead and lookbehind"),
        ("(?<!a)b", "lookahead and lookbehind"),
        ("(?>ab)", "atomic groups"),
        ("a*+", "possessive quantifiers"),
        ("a{2}+", "possessive quantifiers"),
        ("(a)?(?(1)b|c)", "conditional groups"),
        ("a(?#note)", "comment groups"),
        ("(?x) a", "flag 'x'"),
        ("(?U)a+", "flag 'U'"),
        ("\\pL", "does not support"),
        ("\\Qa.b\\E", "does not support"),
        ("a\\Z", "'\\Z' is not RE2 syntax"),
        ("[[:nope:]]", "unknown POSIX class"),
        ("(", "invalid regular expression"),
    ],
)
def test_constructs_outside_re2_are_value_errors_naming_them(pattern: str, problem: str) -> None:
    with pytest.raises(WorkflowError) as caught:
        compile_re2("text.match_regex", pattern)
    assert caught.value.tags == ["ValueError"]
    assert caught.value.message.startswith("text.match_regex: ")
    assert problem in caught.value.message


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("a+?b", "aab", ["aab"]),
        ("(?i)abc", "xABC", ["ABC"]),
        ("(?i:a)b", "Ab", ["Ab"]),
        ("(?<word>[a-z]+)", "hi 1", ["hi"]),
        ("(?P<word>[a-z]+)", "hi 1", ["hi"]),
        ("[[:digit:]]+", "ab123", ["123"]),
        ("[^[:alpha:]]+", "ab1-2", ["1-2"]),
        ("x\\z", "x\n", []),
        ("x$", "x\n", []),
        ("x$", "ax", ["x"]),
        ("(?m)x$", "x\ny", ["x"]),
        ("[$]", "a$", ["$"]),
        ("\\$", "a$", ["$"]),
        ("\\d+", "٣12", ["12"]),
        ("\\w+", "é_a", ["_a"]),
        ("\\(?=", "(=", ["(="]),
    ],
)
def test_re2_patterns_match_as_in_re2(pattern: str, subject: str, matches: list[str]) -> None:
    compiled = compile_re2("text.find_all_regex", pattern)
    assert [match.group(0) for match in compiled.finditer(subject)] == matches
