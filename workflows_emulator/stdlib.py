"""The Workflows standard library, expression helpers and the connectors the pipeline
uses.

Every function declares its parameters, so calls are checked before a workflow runs:
``call`` steps pass ``args`` by name, expressions pass them by position in the
documented order. Blocking functions (HTTP, sleeping, logging, connectors) may only be
used in ``call`` steps, as in the service.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import hmac
import json
import logging
import math
import re
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from workflows_emulator.errors import Cancelled, WorkflowError
from workflows_emulator.logs import LOGGER_NAME
from workflows_emulator.re2 import compile_re2
from workflows_emulator.services import (
    HttpRequest,
    HttpResponse,
    Services,
    TransportConnectionBrokenError,
    TransportConnectionFailedError,
    TransportTimeoutError,
)
from workflows_emulator.values import (
    INT64_MAX,
    INT64_MIN,
    checked_int,
    format_double,
    is_int,
    is_number,
    require_type,
    to_json_text,
    type_name,
)

_log = logging.getLogger(LOGGER_NAME)

HTTP_DEFAULT_TIMEOUT = 300.0
HTTP_MAX_TIMEOUT = 1800.0
HTTP_MAX_RESPONSE_BYTES = 2 * 1024 * 1024
_CANCEL_POLL_SECONDS = 0.05
LOG_SEVERITIES = (
    "DEFAULT",
    "DEBUG",
    "INFO",
    "NOTICE",
    "WARNING",
    "ERROR",
    "CRITICAL",
    "ALERT",
    "EMERGENCY",
)


@dataclass
class CallEnvironment:
    """What library functions may use from the running execution."""

    env: Mapping[str, str]
    services: Services
    cancel_event: threading.Event
    on_log: Callable[[dict[str, Any]], None] | None = None
    pubsub_emulator_host: str | None = None
    log_lock: threading.Lock = field(default_factory=threading.Lock)


_REQUIRED = object()


@dataclass(frozen=True)
class Parameter:
    name: str
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


Implementation = Callable[[CallEnvironment, dict[str, Any]], Any]


@dataclass(frozen=True)
class LibraryFunction:
    name: str
    parameters: tuple[Parameter, ...]
    implementation: Implementation
    blocking: bool = False

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(parameter.name for parameter in self.parameters)

    def signature_problem(self, *, positional: int = 0, named: tuple[str, ...] = ()) -> str | None:
        """Why a call with these arguments cannot work, or None if it can."""
        if positional > len(self.parameters):
            return f"{self.name} takes at most {len(self.parameters)} arguments, got {positional}"
        unknown = [name for name in named if name not in self.parameter_names]
        if unknown:
            return (
                f"{self.name} has no argument '{unknown[0]}' (arguments: "
                f"{', '.join(self.parameter_names) or 'none'})"
            )
        given = set(self.parameter_names[:positional]) | set(named)
        missing = [p.name for p in self.parameters if p.required and p.name not in given]
        if missing:
            return f"{self.name} needs argument '{missing[0]}'"
        return None

    def bind(self, positional: list[Any], named: Mapping[str, Any]) -> dict[str, Any]:
        problem = self.signature_problem(positional=len(positional), named=tuple(named))
        if problem:
            raise WorkflowError.tagged("TypeError", problem)
        arguments = dict(zip(self.parameter_names, positional, strict=False))
        arguments.update(named)
        for parameter in self.parameters:
            arguments.setdefault(parameter.name, parameter.default)
        return arguments

    def invoke(
        self, environment: CallEnvironment, positional: list[Any], named: Mapping[str, Any]
    ) -> Any:
        return self.implementation(environment, self.bind(positional, named))


@dataclass(frozen=True)
class RetryPolicy:
    predicate: str  # a library predicate or a subworkflow name
    max_retries: int
    initial_delay: float
    max_delay: float
    multiplier: float


DEFAULT_BACKOFF = {"initial_delay": 1, "max_delay": 60, "multiplier": 1.25}
RETRY_POLICIES: dict[str, RetryPolicy] = {
    "http.default_retry": RetryPolicy("http.default_retry_predicate", 5, 1.0, 60.0, 1.25),
    "http.default_retry_non_idempotent": RetryPolicy(
        "http.default_retry_predicate_non_idempotent", 5, 1.0, 60.0, 1.25
    ),
}

FUNCTIONS: dict[str, LibraryFunction] = {}
_F = TypeVar("_F", bound=Implementation)


def _register(
    name: str, *parameters: str | Parameter, blocking: bool = False
) -> Callable[[_F], _F]:
    def decorate(implementation: _F) -> _F:
        FUNCTIONS[name] = LibraryFunction(
            name,
            tuple(p if isinstance(p, Parameter) else Parameter(p) for p in parameters),
            implementation,
            blocking,
        )
        return implementation

    return decorate


def _error(tag: str, message: str) -> WorkflowError:
    return WorkflowError.tagged(tag, message)


# ---------------------------------------------------------------- expression helpers


@_register("len", "value")
def _len(_: CallEnvironment, args: dict[str, Any]) -> int:
    value = args["value"]
    require_type("len", "value", value, "string", "list", "map", "bytes")
    return len(value)


@_register("keys", "map")
def _keys(_: CallEnvironment, args: dict[str, Any]) -> list[str]:
    require_type("keys", "map", args["map"], "map")
    return list(args["map"])


@_register("default", "value", "default_value")
def _default(_: CallEnvironment, args: dict[str, Any]) -> Any:
    return args["default_value"] if args["value"] is None else args["value"]


@_register("if", "condition", "if_true", "if_false")
def _if(_: CallEnvironment, args: dict[str, Any]) -> Any:
    require_type("if", "condition", args["condition"], "boolean")
    return args["if_true"] if args["condition"] else args["if_false"]


@_register("get_type", "value")
def _get_type(_: CallEnvironment, args: dict[str, Any]) -> str:
    return type_name(args["value"])


@_register("int", "value")
def _int(_: CallEnvironment, args: dict[str, Any]) -> int:
    value = args["value"]
    require_type("int", "value", value, "string", "integer", "double")
    if isinstance(value, str):
        text = value.strip()
        try:
            return checked_int(int(text))
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise _error("ValueError", f"int: cannot convert {value!r} to integer") from None
            return _int(_, {"value": number})
    if isinstance(value, float):
        if not math.isfinite(value) or not INT64_MIN <= value <= INT64_MAX:
            raise _error("ValueError", f"int: {value} does not fit in a 64-bit integer")
        return int(value)  # truncates toward zero
    return int(value)


@_register("double", "value")
def _double(_: CallEnvironment, args: dict[str, Any]) -> float:
    value = args["value"]
    require_type("double", "value", value, "string", "integer", "double")
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _error("ValueError", f"double: cannot convert {value!r} to double") from None
        if not math.isfinite(number):
            raise _error("ValueError", f"double: {value!r} is not a finite number")
        return number
    return float(value)


@_register("string", "value")
def _string(_: CallEnvironment, args: dict[str, Any]) -> str:
    value = args["value"]
    require_type("string", "value", value, "string", "integer", "double", "boolean")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_double(value)
    return str(value)


@_register("bool", "value")
def _bool(_: CallEnvironment, args: dict[str, Any]) -> bool:
    value = args["value"]
    require_type("bool", "value", value, "string", "boolean")
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise _error("ValueError", f"bool: cannot convert {value!r} to boolean")


# ---------------------------------------------------------------- maps and lists


@_register("map.get", "map", "keys")
def _map_get(_: CallEnvironment, args: dict[str, Any]) -> Any:
    current = args["map"]
    require_type("map.get", "map", current, "map")
    keys = args["keys"]
    require_type("map.get", "keys", keys, "string", "list")
    for key in [keys] if isinstance(keys, str) else keys:
        if not isinstance(key, str):
            raise _error("TypeError", f"map.get: keys must be strings, got {type_name(key)}")
        if not isinstance(current, dict) or key not in current:
            return None
        current = current[key]
    return current


@_register("map.merge", "first", "second")
def _map_merge(_: CallEnvironment, args: dict[str, Any]) -> dict[str, Any]:
    require_type("map.merge", "first", args["first"], "map")
    require_type("map.merge", "second", args["second"], "map")
    return {**args["first"], **args["second"]}


def _merge_nested(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    merged = dict(first)
    for key, value in second.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_nested(merged[key], value)
        else:
            merged[key] = value
    return merged


@_register("map.merge_nested", "first", "second")
def _map_merge_nested(_: CallEnvironment, args: dict[str, Any]) -> dict[str, Any]:
    require_type("map.merge_nested", "first", args["first"], "map")
    require_type("map.merge_nested", "second", args["second"], "map")
    return _merge_nested(args["first"], args["second"])


@_register("map.delete", "map", "key")
def _map_delete(_: CallEnvironment, args: dict[str, Any]) -> dict[str, Any]:
    require_type("map.delete", "map", args["map"], "map")
    require_type("map.delete", "key", args["key"], "string")
    return {k: v for k, v in args["map"].items() if k != args["key"]}


@_register("list.concat", "objs", "val")
def _list_concat(_: CallEnvironment, args: dict[str, Any]) -> list[Any]:
    require_type("list.concat", "objs", args["objs"], "list")
    return [*args["objs"], args["val"]]


@_register("list.prepend", "objs", "val")
def _list_prepend(_: CallEnvironment, args: dict[str, Any]) -> list[Any]:
    require_type("list.prepend", "objs", args["objs"], "list")
    return [args["val"], *args["objs"]]


# ---------------------------------------------------------------- math


@_register("math.abs", "x")
def _math_abs(_: CallEnvironment, args: dict[str, Any]) -> int | float:
    require_type("math.abs", "x", args["x"], "integer", "double")
    value = args["x"]
    return checked_int(abs(value)) if is_int(value) else abs(value)


@_register("math.floor", "x")
def _math_floor(_: CallEnvironment, args: dict[str, Any]) -> int:
    require_type("math.floor", "x", args["x"], "integer", "double")
    return checked_int(math.floor(args["x"]))


def _pick_number(name: str, pick: Callable[[float, float], float]) -> Implementation:
    def implementation(_: CallEnvironment, args: dict[str, Any]) -> int | float:
        require_type(name, "x", args["x"], "integer", "double")
        require_type(name, "y", args["y"], "integer", "double")
        return pick(args["x"], args["y"])

    return implementation


_register("math.max", "x", "y")(_pick_number("math.max", max))
_register("math.min", "x", "y")(_pick_number("math.min", min))


# ---------------------------------------------------------------- text


def _text_args(function: str, args: dict[str, Any], *names: str) -> list[str]:
    for name in names:
        require_type(function, name, args[name], "string")
    return [args[name] for name in names]


def _codec(function: str, charset: Any) -> str:
    require_type(function, "charset", charset, "string")
    try:
        return codecs.lookup(charset).name
    except LookupError:
        raise _error("ValueError", f"{function}: unknown charset {charset!r}") from None


@_register("text.encode", "text", Parameter("charset", "UTF-8"))
def _text_encode(_: CallEnvironment, args: dict[str, Any]) -> bytes:
    (text,) = _text_args("text.encode", args, "text")
    try:
        return text.encode(_codec("text.encode", args["charset"]))
    except UnicodeEncodeError as error:
        raise _error("ValueError", f"text.encode: {error}") from None


@_register("text.decode", "data", Parameter("charset", "UTF-8"))
def _text_decode(_: CallEnvironment, args: dict[str, Any]) -> str:
    require_type("text.decode", "data", args["data"], "bytes")
    try:
        return str(args["data"].decode(_codec("text.decode", args["charset"])))
    except UnicodeDecodeError as error:
        raise _error("ValueError", f"text.decode: {error}") from None


@_register("text.find_all", "source", "substr")
def _text_find_all(_: CallEnvironment, args: dict[str, Any]) -> list[int]:
    source, substr = _text_args("text.find_all", args, "source", "substr")
    if not substr:
        raise _error("ValueError", "text.find_all: 'substr' must not be empty")
    # Only non-overlapping matches, leftmost first: "00000" and "00" give [0, 2].
    found, start = [], source.find(substr)
    while start != -1:
        found.append(start)
        start = source.find(substr, start + len(substr))
    return found


@_register("text.find_all_regex", "source", "regexp")
def _text_find_all_regex(_: CallEnvironment, args: dict[str, Any]) -> list[dict[str, Any]]:
    source, pattern = _text_args("text.find_all_regex", args, "source", "regexp")
    regex = compile_re2("text.find_all_regex", pattern)
    return [{"index": m.start(), "match": m.group(0)} for m in regex.finditer(source)]


@_register("text.match_regex", "source", "regexp")
def _text_match_regex(_: CallEnvironment, args: dict[str, Any]) -> bool:
    source, pattern = _text_args("text.match_regex", args, "source", "regexp")
    return compile_re2("text.match_regex", pattern).search(source) is not None


@_register("text.replace_all", "source", "substr", "repl")
def _text_replace_all(_: CallEnvironment, args: dict[str, Any]) -> str:
    source, substr, repl = _text_args("text.replace_all", args, "source", "substr", "repl")
    if not substr:
        raise _error("ValueError", "text.replace_all: 'substr' must not be empty")
    return source.replace(substr, repl)


@_register("text.replace_all_regex", "source", "regexp", "repl")
def _text_replace_all_regex(_: CallEnvironment, args: dict[str, Any]) -> str:
    source, pattern, repl = _text_args("text.replace_all_regex", args, "source", "regexp", "repl")
    regex = compile_re2("text.replace_all_regex", pattern)
    # The reference: backreferences are not supported, so repl is inserted as it is.
    return regex.sub(lambda _: repl, source)


@_register("text.split", "source", "separator")
def _text_split(_: CallEnvironment, args: dict[str, Any]) -> list[str]:
    source, separator = _text_args("text.split", args, "source", "separator")
    if not separator:
        return list(source)
    return source.split(separator)


@_register("text.substring", "source", "start", "end")
def _text_substring(_: CallEnvironment, args: dict[str, Any]) -> str:
    (source,) = _text_args("text.substring", args, "source")
    require_type("text.substring", "start", args["start"], "integer")
    require_type("text.substring", "end", args["end"], "integer")
    start = min(max(args["start"], 0), len(source))
    end = min(max(args["end"], 0), len(source))
    return source[start:end] if start < end else ""


@_register("text.to_lower", "source")
def _text_to_lower(_: CallEnvironment, args: dict[str, Any]) -> str:
    return _text_args("text.to_lower", args, "source")[0].lower()


@_register("text.to_upper", "source")
def _text_to_upper(_: CallEnvironment, args: dict[str, Any]) -> str:
    return _text_args("text.to_upper", args, "source")[0].upper()


@_register("text.url_encode", "source")
def _text_url_encode(_: CallEnvironment, args: dict[str, Any]) -> str:
    return urllib.parse.quote(_text_args("text.url_encode", args, "source")[0], safe="-_.~")


@_register("text.url_encode_plus", "source")
def _text_url_encode_plus(_: CallEnvironment, args: dict[str, Any]) -> str:
    source = _text_args("text.url_encode_plus", args, "source")[0]
    return urllib.parse.quote_plus(source, safe="-_.~")


@_register("text.url_decode", "source")
def _text_url_decode(_: CallEnvironment, args: dict[str, Any]) -> str:
    source = _text_args("text.url_decode", args, "source")[0]
    try:
        return urllib.parse.unquote_plus(source, errors="strict")
    except UnicodeDecodeError as error:
        raise _error("ValueError", f"text.url_decode: {error}") from None


# ---------------------------------------------------------------- json, base64, hash


def _json_layout(function: str, indent: Any) -> tuple[str | None, str]:
    if indent is None or indent is False:
        return None, ""
    if indent is True:
        return "  ", ""
    require_type(function, "indent", indent, "boolean", "map")
    unknown = set(indent) - {"prefix", "indent"}
    if unknown:
        raise _error("ValueError", f"{function}: unknown indent option '{sorted(unknown)[0]}'")
    prefix, spaces = indent.get("prefix", ""), indent.get("indent", "  ")
    require_type(function, "indent.prefix", prefix, "string")
    require_type(function, "indent.indent", spaces, "string")
    return spaces, prefix


@_register("json.encode", "data", Parameter("indent", None))
def _json_encode(_: CallEnvironment, args: dict[str, Any]) -> bytes:
    indent, prefix = _json_layout("json.encode", args["indent"])
    return to_json_text(args["data"], indent=indent, prefix=prefix).encode("utf-8")


@_register("json.encode_to_string", "data", Parameter("indent", None))
def _json_encode_to_string(_: CallEnvironment, args: dict[str, Any]) -> str:
    indent, prefix = _json_layout("json.encode_to_string", args["indent"])
    return to_json_text(args["data"], indent=indent, prefix=prefix)


@_register("json.decode", "data")
def _json_decode(_: CallEnvironment, args: dict[str, Any]) -> Any:
    data = args["data"]
    require_type("json.decode", "data", data, "bytes", "string")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, parse_constant=_reject_json_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _error("ValueError", f"json.decode: invalid JSON: {error}") from None


def _reject_json_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


@_register("base64.encode", "data", Parameter("padding", True))
def _base64_encode(_: CallEnvironment, args: dict[str, Any]) -> str:
    require_type("base64.encode", "data", args["data"], "bytes")
    require_type("base64.encode", "padding", args["padding"], "boolean")
    encoded = base64.b64encode(args["data"]).decode("ascii")
    return encoded if args["padding"] else encoded.rstrip("=")


@_register("base64.decode", "data", Parameter("padding", True))
def _base64_decode(_: CallEnvironment, args: dict[str, Any]) -> bytes:
    require_type("base64.decode", "data", args["data"], "string")
    require_type("base64.decode", "padding", args["padding"], "boolean")
    data = args["data"]
    if not args["padding"]:
        data += "=" * (-len(data) % 4)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise _error("ValueError", f"base64.decode: invalid base64 data: {error}") from None


_HASH_ALGORITHMS = {
    "MD5": "md5",
    "SHA1": "sha1",
    "SHA256": "sha256",
    "SHA384": "sha384",
    "SHA512": "sha512",
}


def _hash_name(function: str, algorithm: Any) -> str:
    require_type(function, "algorithm", algorithm, "string")
    if algorithm not in _HASH_ALGORITHMS:
        raise _error(
            "ValueError",
            f"{function}: unsupported algorithm {algorithm!r} (use one of "
            f"{', '.join(_HASH_ALGORITHMS)})",
        )
    return _HASH_ALGORITHMS[algorithm]


@_register("hash.compute_checksum", "data", "algorithm")
def _hash_checksum(_: CallEnvironment, args: dict[str, Any]) -> bytes:
    require_type("hash.compute_checksum", "data", args["data"], "bytes")
    name = _hash_name("hash.compute_checksum", args["algorithm"])
    return hashlib.new(name, args["data"]).digest()


@_register("hash.compute_hmac", "key", "data", "algorithm")
def _hash_hmac(_: CallEnvironment, args: dict[str, Any]) -> bytes:
    require_type("hash.compute_hmac", "key", args["key"], "bytes")
    require_type("hash.compute_hmac", "data", args["data"], "bytes")
    name = _hash_name("hash.compute_hmac", args["algorithm"])
    return hmac.new(args["key"], args["data"], name).digest()


# ---------------------------------------------------------------- time, uuid, sys


@_register("time.format", "seconds", Parameter("timezone", "UTC"))
def _time_format(_: CallEnvironment, args: dict[str, Any]) -> str:
    require_type("time.format", "seconds", args["seconds"], "integer", "double")
    require_type("time.format", "timezone", args["timezone"], "string")
    try:
        zone = UTC if args["timezone"] in ("UTC", "Z") else ZoneInfo(args["timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        raise _error("ValueError", f"time.format: unknown timezone {args['timezone']!r}") from None
    try:
        moment = datetime.fromtimestamp(args["seconds"], tz=zone)
    except (OverflowError, OSError, ValueError):
        raise _error("ValueError", f"time.format: {args['seconds']} is out of range") from None
    text = moment.isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z") if zone is UTC else text


@_register("time.parse", "value")
def _time_parse(_: CallEnvironment, args: dict[str, Any]) -> float:
    require_type("time.parse", "value", args["value"], "string")
    try:
        moment = datetime.fromisoformat(args["value"])
    except ValueError:
        raise _error(
            "ValueError", f"time.parse: {args['value']!r} is not an RFC 3339 timestamp"
        ) from None
    if moment.tzinfo is None:
        raise _error("ValueError", f"time.parse: {args['value']!r} has no time zone offset")
    return moment.timestamp()


@_register("uuid.generate")
def _uuid_generate(_: CallEnvironment, args: dict[str, Any]) -> str:
    return str(uuid.uuid4())


@_register("sys.now")
def _sys_now(environment: CallEnvironment, args: dict[str, Any]) -> float:
    return float(environment.services.now())


@_register("sys.get_env", "name", Parameter("default", None))
def _sys_get_env(environment: CallEnvironment, args: dict[str, Any]) -> Any:
    require_type("sys.get_env", "name", args["name"], "string")
    return environment.env.get(args["name"], args["default"])


def sleep_for(environment: CallEnvironment, seconds: float) -> None:
    """Sleep through the injectable service; the engine checks cancellation after."""
    environment.services.sleep(seconds, environment.cancel_event)


@_register("sys.sleep", "seconds", blocking=True)
def _sys_sleep(environment: CallEnvironment, args: dict[str, Any]) -> None:
    seconds = args["seconds"]
    require_type("sys.sleep", "seconds", seconds, "integer", "double")
    if seconds < 0:
        raise _error("ValueError", f"sys.sleep: seconds must not be negative, got {seconds}")
    sleep_for(environment, float(seconds))


@_register("sys.sleep_until", "time", blocking=True)
def _sys_sleep_until(environment: CallEnvironment, args: dict[str, Any]) -> None:
    until = _time_parse(environment, {"value": args["time"]})
    sleep_for(environment, max(0.0, until - environment.services.now()))


@_register(
    "sys.log",
    Parameter("data", None),
    Parameter("severity", "DEFAULT"),
    Parameter("text", None),
    Parameter("json", None),
    Parameter("timeout", None),
    blocking=True,
)
def _sys_log(environment: CallEnvironment, args: dict[str, Any]) -> None:
    severity = args["severity"]
    if severity not in LOG_SEVERITIES:
        raise _error("ValueError", f"sys.log: severity must be one of {', '.join(LOG_SEVERITIES)}")
    payloads = [name for name in ("data", "text", "json") if args[name] is not None]
    if len(payloads) != 1:
        raise _error("ValueError", "sys.log: give exactly one of 'data', 'text' or 'json'")
    entry: dict[str, Any] = {"severity": severity}
    value = args[payloads[0]]
    if payloads[0] == "json" or (payloads[0] == "data" and isinstance(value, dict | list)):
        if payloads[0] == "json":
            require_type("sys.log", "json", value, "map")
        to_json_text(value)  # bytes are not loggable, as in the service
        entry["json"] = value
    else:
        entry["text"] = value if isinstance(value, str) else to_json_text(value)
    with environment.log_lock:
        if environment.on_log is not None:
            environment.on_log(entry)
        else:
            _log.info("sys.log %s", entry)


# ---------------------------------------------------------------- retry predicates


def _error_code(error: Any) -> Any:
    return error.get("code") if isinstance(error, dict) else None


def _error_tags(error: Any) -> list[Any]:
    tags = error.get("tags") if isinstance(error, dict) else None
    return tags if isinstance(tags, list) else []


def _retry_predicate(codes: tuple[int, ...], tags: tuple[str, ...]) -> Implementation:
    def predicate(_: CallEnvironment, args: dict[str, Any]) -> bool:
        error = args["e"]
        if "HttpError" in _error_tags(error) and _error_code(error) in codes:
            return True
        return any(tag in tags for tag in _error_tags(error))

    return predicate


_register("http.default_retry_predicate", "e")(
    _retry_predicate(
        (429, 502, 503, 504), ("ConnectionError", "ConnectionFailedError", "TimeoutError")
    )
)
_register("http.default_retry_predicate_non_idempotent", "e")(
    _retry_predicate((429, 503), ("ConnectionFailedError",))
)
_register("retry.always", "e")(lambda _, args: True)
_register("retry.never", "e")(lambda _, args: False)


# ---------------------------------------------------------------- HTTP


def _query_pairs(query: Any) -> list[tuple[str, str]]:
    if query is None:
        return []
    require_type("http", "query", query, "map")
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict | list | bytes) or item is None:
                raise _error(
                    "TypeError", f"http: query value of '{key}' must be a scalar or a list"
                )
            pairs.append((key, _scalar_text(item)))
    return pairs


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_double(value)
    return str(value)


def _header_value(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _encode_body(body: Any, headers: dict[str, str]) -> bytes | None:
    if body is None:
        return None
    content_type = (_header_value(headers, "Content-Type") or "").lower()
    if isinstance(body, bytes):
        return body
    if isinstance(body, str) and content_type.startswith("text/"):
        return body.encode("utf-8")
    if content_type.startswith("application/x-www-form-urlencoded"):
        if isinstance(body, str):
            return body.encode("utf-8")
        return urllib.parse.urlencode(_query_pairs(body)).encode("ascii")
    if not content_type:
        headers["Content-Type"] = "application/json"
    return to_json_text(body).encode("utf-8")


def _decode_body(content: bytes, headers: Mapping[str, str]) -> Any:
    content_type = (_header_value(headers, "Content-Type") or "").lower()
    media_type = content_type.split(";")[0].strip()
    if media_type == "application/json" or media_type.endswith("+json"):
        if not content:
            return None
        try:
            return json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _error(
                "ResponseTypeError", "HTTP response declared JSON but its body is not JSON"
            ) from None
    if media_type.startswith("text/") or not content_type:
        try:
            return content.decode("utf-8")
        except UnicodeDecodeError:
            return content
    return content


def _check_auth(auth: Any) -> None:
    if auth is None:
        return
    require_type("http", "auth", auth, "map")
    if auth.get("type") not in ("OIDC", "OAuth2"):
        raise _error("ValueError", "http: auth.type must be 'OIDC' or 'OAuth2'")
    unknown = set(auth) - {"type", "audience", "scopes", "scope"}
    if unknown:
        raise _error("ValueError", f"http: unknown auth option '{sorted(unknown)[0]}'")


def _base64url_json(part: Mapping[str, Any]) -> str:
    encoded = base64.urlsafe_b64encode(json.dumps(part, sort_keys=True).encode())
    return encoded.rstrip(b"=").decode()


def _stand_in_token(auth: Any, url: str, env: Mapping[str, str]) -> str | None:
    """An unsigned JWT (``alg: none``) standing in for the token the service would mint.

    No Google credentials exist locally and local services verify no caller, but the
    claims that matter are visible: an OIDC token's ``aud`` is the configured audience
    or, as in the service, the full request URL, so a workflow that needs the
    service's root URL as audience can be tested for it.
    """
    if auth is None:
        return None
    claims: dict[str, Any] = {
        "iss": "workflows-emulator",
        "sub": env.get("GOOGLE_CLOUD_WORKFLOW_ID", ""),
    }
    if auth["type"] == "OIDC":
        claims["aud"] = auth.get("audience") or url
    else:
        claims["scope"] = auth.get("scopes") or auth.get("scope") or "cloud-platform"
    header = {"alg": "none", "typ": "JWT"}
    return f"{_base64url_json(header)}.{_base64url_json(claims)}."


def _send_until_cancelled(environment: CallEnvironment, request: HttpRequest) -> HttpResponse:
    """Send on a worker thread so that cancelling the execution abandons a request in
    flight (the thread ends with the request's own timeout) instead of waiting for it."""
    outcome: list[HttpResponse | BaseException] = []
    done = threading.Event()

    def send() -> None:
        try:
            outcome.append(environment.services.transport(request))
        except BaseException as error:  # handed to the waiting thread, which re-raises
            outcome.append(error)
        finally:
            done.set()

    threading.Thread(target=send, name=f"http {request.method} {request.url}", daemon=True).start()
    while not done.wait(_CANCEL_POLL_SECONDS):
        if environment.cancel_event.is_set():
            raise Cancelled(f"cancelled during {request.method} {request.url}")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def http_request(environment: CallEnvironment, method: str, args: dict[str, Any]) -> Any:
    """Perform one HTTP call as the ``http.*`` functions do, returning the response map
    ``{code, headers, body}`` or raising HttpError / ConnectionError / TimeoutError."""
    url = args["url"]
    require_type(f"http.{method.lower()}", "url", url, "string")
    if not url.startswith(("http://", "https://")):
        raise _error("ValueError", f"http: url must start with http:// or https://, got {url!r}")
    timeout = args.get("timeout")
    timeout = HTTP_DEFAULT_TIMEOUT if timeout is None else timeout
    if not is_number(timeout) or not 0 < timeout <= HTTP_MAX_TIMEOUT:
        raise _error("ValueError", f"http: timeout must be in (0, {HTTP_MAX_TIMEOUT:.0f}] seconds")
    raw_headers = args.get("headers") or {}
    require_type("http", "headers", raw_headers, "map")
    headers = {str(k): _scalar_text(v) for k, v in raw_headers.items()}
    _check_auth(args.get("auth"))
    token = _stand_in_token(args.get("auth"), url, environment.env)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = HttpRequest(
        method=method,
        url=url,
        headers=headers,
        query=_query_pairs(args.get("query")),
        body=_encode_body(args.get("body"), headers),
        timeout=float(timeout),
    )
    try:
        response = _send_until_cancelled(environment, request)
    except TransportTimeoutError as error:
        raise _error("TimeoutError", f"HTTP request to {url} timed out: {error}") from None
    except TransportConnectionFailedError as error:
        raise WorkflowError.tagged(
            ["ConnectionFailedError"], f"could not connect to {url}: {error}"
        ) from None
    except TransportConnectionBrokenError as error:
        raise _error("ConnectionError", f"connection to {url} broke: {error}") from None
    if len(response.body) > HTTP_MAX_RESPONSE_BYTES:
        raise _error(
            "ResourceLimitError",
            f"HTTP response from {url} is {len(response.body)} bytes, over the limit of "
            f"{HTTP_MAX_RESPONSE_BYTES // (1024 * 1024)} MB",
        )
    body = _decode_body(response.body, response.headers)
    if response.status >= 400:
        raise WorkflowError.tagged(
            "HttpError",
            f"HTTP server responded with error code {response.status}",
            code=response.status,
            headers=dict(response.headers),
            body=body,
        )
    return {"code": response.status, "headers": dict(response.headers), "body": body}


_HTTP_PARAMETERS = (
    Parameter("timeout", None),
    Parameter("headers", None),
    Parameter("query", None),
    Parameter("auth", None),
)
_BODY = Parameter("body", None)


def _http_method(verb: str) -> Implementation:
    def call(environment: CallEnvironment, args: dict[str, Any]) -> Any:
        return http_request(environment, verb, args)

    return call


for _method in ("get", "post", "put", "patch", "delete"):
    _register(
        f"http.{_method}",
        "url",
        *(_HTTP_PARAMETERS if _method == "get" else (_BODY, *_HTTP_PARAMETERS)),
        blocking=True,
    )(_http_method(_method.upper()))


@_register("http.request", "method", "url", _BODY, *_HTTP_PARAMETERS, blocking=True)
def _http_request(environment: CallEnvironment, args: dict[str, Any]) -> Any:
    require_type("http.request", "method", args["method"], "string")
    method = args["method"].upper()
    if method not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
        raise _error("ValueError", f"http.request: unsupported method {args['method']!r}")
    return http_request(environment, method, args)


# ---------------------------------------------------------------- connectors

PUBSUB_PUBLISH = "googleapis.pubsub.v1.projects.topics.publish"
_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")


@_register(PUBSUB_PUBLISH, "topic", "body", Parameter("connector_params", None), blocking=True)
def _pubsub_publish(environment: CallEnvironment, args: dict[str, Any]) -> Any:
    topic, body = args["topic"], args["body"]
    require_type(PUBSUB_PUBLISH, "topic", topic, "string")
    require_type(PUBSUB_PUBLISH, "body", body, "map")
    if not _TOPIC.match(topic):
        raise _error("ValueError", f"{PUBSUB_PUBLISH}: topic must be projects/P/topics/T")
    timeout = HTTP_DEFAULT_TIMEOUT
    params = args["connector_params"]
    if params is not None:
        require_type(PUBSUB_PUBLISH, "connector_params", params, "map")
        unknown = set(params) - {"timeout"}
        if unknown:
            raise _error(
                "ValueError",
                f"{PUBSUB_PUBLISH}: connector_params '{sorted(unknown)[0]}' is not supported "
                "locally (only 'timeout')",
            )
        timeout = params.get("timeout", timeout)
    host = environment.pubsub_emulator_host
    if not host:
        raise _error(
            "ConnectionError",
            f"{PUBSUB_PUBLISH}: no Pub/Sub emulator configured (set PUBSUB_EMULATOR_HOST)",
        )
    response = http_request(
        environment,
        "POST",
        {"url": f"http://{host}/v1/{topic}:publish", "body": body, "timeout": timeout},
    )
    return response["body"]
