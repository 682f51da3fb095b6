"""Request bodies of every HTTP function: bounded in size and nesting, parsed as JSON,
every parser failure a 400 (docs/FUNCTIONS.md, "Limits")."""

from __future__ import annotations

import json
from typing import Any

import orjson

from pipeline_core.errors import BadRequestError, PayloadTooLargeError

# Cloud Run's own limit on an HTTP/1 request: a larger body never reaches a deployed
# function, so the local stack and the tests refuse it the same way, before reading it.
MAX_BODY_BYTES = 32 * 1024 * 1024
# The deepest of our requests (predict's {"instances": [[...]]}) nests 3 levels; 32
# leaves room for any envelope while no parser or error message meets a recursion limit.
MAX_JSON_DEPTH = 32


def check_declared_size(content_length: int | None) -> None:
    """Refuse a body by its Content-Length before reading it."""
    if content_length is not None and content_length > MAX_BODY_BYTES:
        raise too_large(content_length)


def too_large(size: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body has {size} bytes or more, over the limit of {MAX_BODY_BYTES} "
        f"({MAX_BODY_BYTES // (1024 * 1024)} MiB); split the request",
        limit_bytes=MAX_BODY_BYTES,
    )


def parse_json(data: bytes) -> Any:
    """The JSON document ``data`` holds; BadRequestError for anything else."""
    if len(data) > MAX_BODY_BYTES:
        raise too_large(len(data))
    if not data.strip():
        raise BadRequestError("the request body is empty; send JSON")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        # The standard parser decides, so that NaN, Infinity and integers beyond 64 bits
        # read as before (a model refuses them with a 422 naming the value).
        document = _standard_json(data)
    _check_depth(document)
    return document


def _standard_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as error:  # bad syntax or UTF-8, or an integer of over 4,300 digits
        detail = str(error).split("; use sys.set_int_max_str_digits")[0]
        raise BadRequestError(f"the request body is not valid JSON: {detail}") from None


CONTAINERS = frozenset({dict, list})


def _check_depth(document: Any) -> None:
    """Level by level, so that the check itself has no recursion limit; a container
    whose values hold no container costs one C-level pass over their types."""
    level: list[Any] = [document] if type(document) in CONTAINERS else []
    for _ in range(MAX_JSON_DEPTH):
        deeper: list[Any] = []
        for value in level:
            children = value.values() if type(value) is dict else value
            if not CONTAINERS.isdisjoint(map(type, children)):
                deeper.extend(child for child in children if type(child) in CONTAINERS)
        if not deeper:
            return
        level = deeper
    raise _too_deep()


def _too_deep() -> BadRequestError:
    return BadRequestError(
        f"the request body nests JSON arrays or objects too deeply (the limit is "
        f"{MAX_JSON_DEPTH} levels)",
        limit_depth=MAX_JSON_DEPTH,
    )
