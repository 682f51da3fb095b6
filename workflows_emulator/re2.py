"""RE2 patterns (the syntax of the ``text.*_regex`` functions) compiled with Python's ``re``.

The service uses RE2. Python's ``re`` accepts constructs RE2 refuses (backreferences,
lookaround, atomic groups, possessive quantifiers, conditionals, comments) and reads a
few RE2 constructs differently, so a pattern is first checked and translated here:

- refused with a ValueError naming the construct: anything RE2 refuses, and the RE2
  features ``re`` cannot reproduce (``\\p{...}`` classes, ``\\C``, ``\\Q...\\E``,
  the ``U`` flag);
- translated: ``\\z`` (end of text), ``(?<name>...)``, POSIX classes such as
  ``[[:alpha:]]``, and ``$`` without the ``m`` flag, which in RE2 matches only at the
  very end (``re`` also matches before a final newline).

``\\d``, ``\\w``, ``\\s`` and ``\\b`` are ASCII-only in RE2, so patterns compile with
``re.ASCII``.
"""

from __future__ import annotations

import re

from workflows_emulator.errors import WorkflowError

_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_POSIX_CLASS = re.compile(r"\[:(\^?)([a-z]+):\]")
_GROUP_FLAGS = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?[:)]")
_QUANTIFIERS = "*+?}"


def compile_re2(function: str, pattern: str) -> re.Pattern[str]:
    """Compile an RE2 pattern, or raise the ValueError the service raises for it."""
    translated = _translate(function, pattern)
    try:
        return re.compile(translated, re.ASCII)
    except re.error as error:
        raise _refuse(function, f"invalid regular expression: {error}") from None


def _refuse(function: str, problem: str) -> WorkflowError:
    return WorkflowError.tagged("ValueError", f"{function}: {problem}")


def _translate(function: str, pattern: str) -> str:
    multiline = any("m" in (on or "") for on, _ in _GROUP_FLAGS.findall(pattern))
    out: list[str] = []
    position, after_quantifier = 0, False
    while position < len(pattern):
        char = pattern[position]
        if char == "\\":
            token = _escape(function, pattern[position : position + 2])
            out.append(token)
            position += 2
            after_quantifier = False
            continue
        if char == "[":
            end = _class_end(pattern, position)
            out.append(_character_class(function, pattern[position:end]))
            position = end
            after_quantifier = False
            continue
        if char == "(" and pattern.startswith("(?", position):
            out.append(_group_opening(function, pattern, position))
            position += 2
            after_quantifier = False
            continue
        if char == "+" and after_quantifier:
            raise _refuse(function, "possessive quantifiers (such as 'a*+') are not RE2 syntax")
        if char == "$" and not multiline:
            # RE2's '$' without the m flag is the very end; re's also matches before "\n".
            out.append("\\Z")
        else:
            out.append(char)
        after_quantifier = char in _QUANTIFIERS and not (
            char == "?" and position > 0 and pattern[position - 1] in _QUANTIFIERS
        )
        position += 1
    return "".join(out)


def _escape(function: str, token: str) -> str:
    letter = token[1:]
    if letter.isdigit() and letter != "0":
        raise _refuse(function, f"backreferences ('{token}') are not supported by RE2")
    if letter == "z":
        return "\\Z"
    if letter == "Z":
        raise _refuse(function, "'\\Z' is not RE2 syntax (use '\\z' for the end of text)")
    if letter in ("p", "P", "C", "Q", "E"):
        raise _refuse(function, f"'{token}' is RE2 syntax the local engine does not support")
    return token


def _class_end(pattern: str, start: int) -> int:
    """The index just past the character class that opens at ``start``."""
    position = start + 1
    if pattern.startswith("^", position):
        position += 1
    if pattern.startswith("]", position):
        position += 1
    while position < len(pattern):
        if pattern[position] == "\\":
            position += 2
            continue
        posix = _POSIX_CLASS.match(pattern, position)
        if posix:
            position = posix.end()
            continue
        if pattern[position] == "]":
            return position + 1
        position += 1
    return len(pattern)  # unterminated: re.compile reports it


def _character_class(function: str, text: str) -> str:
    def expand(match: re.Match[str]) -> str:
        negated, name = match.groups()
        if name not in _POSIX_CLASSES:
            raise _refuse(function, f"unknown POSIX class '[:{name}:]'")
        if negated:
            raise _refuse(function, f"negated POSIX class '[:^{name}:]' is not supported locally")
        return _POSIX_CLASSES[name]

    return _POSIX_CLASS.sub(expand, text)


def _group_opening(function: str, pattern: str, position: int) -> str:
    rest = pattern[position + 2 :]
    if rest.startswith(("=", "!", "<=", "<!")):
        raise _refuse(function, "lookahead and lookbehind are not supported by RE2")
    if rest.startswith("P="):
        raise _refuse(function, "backreferences ('(?P=name)') are not supported by RE2")
    if rest.startswith(">"):
        raise _refuse(function, "atomic groups ('(?>...)') are not RE2 syntax")
    if rest.startswith("("):
        raise _refuse(function, "conditional groups are not RE2 syntax")
    if rest.startswith("#"):
        raise _refuse(function, "comment groups ('(?#...)') are not RE2 syntax")
    if rest.startswith("<"):
        return "(?P"  # RE2's (?<name>...) is re's (?P<name>...)
    flags = _GROUP_FLAGS.match(pattern, position)
    if flags:
        unsupported = set("".join(flags.groups(""))) - set("ims")
        if unsupported:
            flag = sorted(unsupported)[0]
            raise _refuse(function, f"flag '{flag}' is not supported locally (flags: i, m, s)")
    return "(?"
