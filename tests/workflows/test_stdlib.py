"""The standard library, HTTP functions and the Pub/Sub connector."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from workflows_emulator.errors import Cancelled, WorkflowError
from workflows_emulator.services import (
    HttpRequest,
    HttpResponse,
    Services,
    TransportConnectionFailedError,
    TransportTimeoutError,
    requests_transport,
)
from workflows_emulator.stdlib import FUNCTIONS, CallEnvironment


class FakeTransport:
    """Answers requests from a queue of responses or exceptions, recording each request."""

    def __init__(self, *answers: HttpResponse | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[HttpRequest] = []

    def __call__(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def json_response(status: int, body: Any) -> HttpResponse:
    return HttpResponse(status, {"Content-Type": "application/json"}, json.dumps(body).encode())


def environment(
    transport: FakeTransport | None = None,
    *,
    env: dict[str, str] | None = None,
    pubsub: str | None = None,
    logs: list[dict[str, Any]] | None = None,
) -> CallEnvironment:
    services = Services(transport=transport or FakeTransport(), now=lambda: 1_700_000_000.25)
    return CallEnvironment(
        env=env or {},
        services=services,
        cancel_event=threading.Event(),
        on_log=logs.append if logs is not None else None,
        pubsub_emulator_host=pubsub,
    )


def call(name: str, *args: Any, _env: CallEnvironment | None = None, **named: Any) -> Any:
    return FUNCTIONS[name].invoke(_env or environment(), list(args), named)


def error_of(name: str, *args: Any, **named: Any) -> WorkflowError:
    with pytest.raises(WorkflowError) as caught:
        call(name, *args, **named)
    return caught.value


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("len", ["héllo"], 5),
        ("len", [[1, 2]], 2),
        ("len", [{"a": 1}], 1),
        ("keys", [{"b": 1, "a": 2}], ["b", "a"]),
        ("default", [None, "x"], "x"),
        ("default", [0, "x"], 0),
        ("get_type", [None], "null"),
        ("get_type", [True], "boolean"),
        ("get_type", [1], "integer"),
        ("get_type", [1.0], "double"),
        ("get_type", ["s"], "string"),
        ("get_type", [b"b"], "bytes"),
        ("get_type", [[1]], "list"),
        ("get_type", [{}], "map"),
        ("int", ["42"], 42),
        ("int", ["-7"], -7),
        ("int", [3.9], 3),
        ("int", [-3.9], -3),
        ("int", ["2.5"], 2),
        ("double", ["2.5"], 2.5),
        ("double", [2], 2.0),
        ("string", [12], "12"),
        ("string", [2.5], "2.5"),
        ("string", [True], "true"),
        ("bool", ["TRUE"], True),
        ("bool", ["false"], False),
        ("map.get", [{"a": {"b": 1}}, ["a", "b"]], 1),
        ("map.get", [{"a": {"b": 1}}, ["a", "x"]], None),
        ("map.get", [{"a": 1}, "a"], 1),
        ("map.merge", [{"a": 1, "b": 1}, {"b": 2}], {"a": 1, "b": 2}),
        ("map.merge_nested", [{"a": {"x": 1}}, {"a": {"y": 2}}], {"a": {"x": 1, "y": 2}}),
        ("map.delete", [{"a": 1, "b": 2}, "a"], {"b": 2}),
        ("map.delete", [{"a": 1}, "missing"], {"a": 1}),
        ("list.concat", [[1], 2], [1, 2]),
        ("list.prepend", [[1], 0], [0, 1]),
        ("math.abs", [-3], 3),
        ("math.abs", [-2.5], 2.5),
        ("math.floor", [2.7], 2),
        ("math.floor", [-2.1], -3),
        ("math.max", [1, 2.5], 2.5),
        ("math.min", [1, 2.5], 1),
        ("text.find_all", ["abcabc", "bc"], [1, 4]),
        (
            "text.find_all_regex",
            ["a1b22", "[0-9]+"],
            [{"index": 1, "match": "1"}, {"index": 3, "match": "22"}],
        ),
        ("text.match_regex", ["hello world", "wor"], True),
        ("text.match_regex", ["hello", "^x"], False),
        ("text.replace_all", ["a-b-c", "-", "+"], "a+b+c"),
        ("text.replace_all_regex", ["a1b2", "([0-9])", "<\\1>"], "a<\\1>b<\\1>"),
        ("text.split", ["a,b,,c", ","], ["a", "b", "", "c"]),
        ("text.substring", ["workflows", 0, 4], "work"),
        ("text.substring", ["abc", 1, 99], "bc"),
        ("text.substring", ["abc", 2, 1], ""),
        ("text.to_lower", ["AbC"], "abc"),
        ("text.to_upper", ["AbC"], "ABC"),
        ("text.url_encode", ["a b/c?d"], "a%20b%2Fc%3Fd"),
        ("text.url_encode_plus", ["a b"], "a+b"),
        ("text.url_decode", ["a%20b+c"], "a b c"),
        ("text.encode", ["é"], b"\xc3\xa9"),
        ("text.decode", [b"\xc3\xa9"], "é"),
        ("text.decode", [b"\xe9", "ISO-8859-1"], "é"),
        ("base64.encode", [b"hi"], "aGk="),
        ("base64.encode", [b"hi", False], "aGk"),
        ("base64.decode", ["aGk="], b"hi"),
        ("base64.decode", ["aGk", False], b"hi"),
        ("json.encode", [{"a": [1, True, None]}], b'{"a":[1,true,null]}'),
        ("json.encode_to_string", [[1, "x"]], '[1,"x"]'),
        ("json.decode", ['{"a": 1.5}'], {"a": 1.5}),
        ("json.decode", [b"[1, 2]"], [1, 2]),
        ("time.format", [0], "1970-01-01T00:00:00.000000Z"),
        ("time.format", [1.5], "1970-01-01T00:00:01.500000Z"),
        ("time.format", [0, "Europe/Paris"], "1970-01-01T01:00:00.000000+01:00"),
        ("if", [False, 1, 2], 2),
        ("time.parse", ["1970-01-01T00:01:00Z"], 60.0),
        ("time.parse", ["1970-01-01T01:00:00+01:00"], 0.0),
        ("http.default_retry_predicate", [{"tags": ["HttpError"], "code": 503}], True),
        ("http.default_retry_predicate", [{"tags": ["HttpError"], "code": 500}], False),
        ("http.default_retry_predicate", [{"tags": ["TimeoutError"]}], True),
        ("http.default_retry_predicate", [{"tags": ["ConnectionError"]}], True),
        (
            "http.default_retry_predicate_non_idempotent",
            [{"tags": ["HttpError"], "code": 502}],
            False,
        ),
        (
            "http.default_retry_predicate_non_idempotent",
            [{"tags": ["HttpError"], "code": 429}],
            True,
        ),
        ("http.default_retry_predicate_non_idempotent", [{"tags": ["TimeoutError"]}], False),
        (
            "http.default_retry_predicate_non_idempotent",
            [{"tags": ["ConnectionFailedError"]}],
            True,
        ),
        ("retry.always", [{}], True),
        ("retry.never", [{}], False),
    ],
)
def test_functions(name: str, args: list[Any], expected: Any) -> None:
    result = call(name, *args)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("name", "args", "tag"),
    [
        ("len", [5], "TypeError"),
        ("keys", [[1]], "TypeError"),
        ("int", ["abc"], "ValueError"),
        ("int", [True], "TypeError"),
        ("int", [1e30], "ValueError"),
        ("double", ["x"], "ValueError"),
        ("string", [None], "TypeError"),
        ("string", [[1]], "TypeError"),
        ("bool", ["yes"], "ValueError"),
        ("bool", [1], "TypeError"),
        ("map.get", [[1], "a"], "TypeError"),
        ("map.merge", [{}, 1], "TypeError"),
        ("list.concat", [{}, 1], "TypeError"),
        ("math.abs", ["1"], "TypeError"),
        ("text.split", [1, ","], "TypeError"),
        ("text.match_regex", ["a", "("], "ValueError"),
        ("text.decode", ["not bytes"], "TypeError"),
        ("text.decode", [b"\xff"], "ValueError"),
        ("text.encode", ["x", "NO-SUCH-CHARSET"], "ValueError"),
        ("base64.encode", ["a string"], "TypeError"),
        ("base64.decode", ["!!!"], "ValueError"),
        ("json.decode", ["{bad"], "ValueError"),
        ("json.decode", ["NaN"], "ValueError"),
        ("json.encode", [b"bytes"], "TypeError"),
        ("time.format", [0, "Mars/Olympus"], "ValueError"),
        ("time.parse", ["yesterday"], "ValueError"),
        ("time.parse", ["2024-01-01T00:00:00"], "ValueError"),
    ],
)
def test_function_errors(name: str, args: list[Any], tag: str) -> None:
    assert error_of(name, *args).tags == [tag]


def test_argument_binding_is_checked() -> None:
    assert "needs argument 'map'" in error_of("keys").message
    assert "no argument 'nope'" in error_of("keys", nope=1).message
    assert "at most 1 arguments" in error_of("len", 1, 2).message


def test_json_indent_and_hash() -> None:
    text = call("json.encode_to_string", {"a": 1}, {"prefix": "> ", "indent": "  "})
    assert text == '> {\n>   "a": 1\n> }'
    digest = call("hash.compute_checksum", b"abc", "SHA256")
    assert digest.hex().startswith("ba7816bf")
    assert call("hash.compute_hmac", b"k", b"abc", "SHA256") != digest


def test_sys_functions() -> None:
    logs: list[dict[str, Any]] = []
    env = environment(env={"NAME": "value"}, logs=logs)
    assert call("sys.get_env", "NAME", _env=env) == "value"
    assert call("sys.get_env", "MISSING", _env=env) is None
    assert call("sys.get_env", "MISSING", "fallback", _env=env) == "fallback"
    assert call("sys.now", _env=env) == 1_700_000_000.25
    call("sys.log", _env=env, text="hello", severity="INFO")
    call("sys.log", _env=env, data={"k": 1})
    call("sys.log", _env=env, data=5)
    assert logs == [
        {"severity": "INFO", "text": "hello"},
        {"severity": "DEFAULT", "json": {"k": 1}},
        {"severity": "DEFAULT", "text": "5"},
    ]
    with pytest.raises(WorkflowError, match="severity"):
        call("sys.log", _env=env, text="x", severity="LOUD")
    with pytest.raises(WorkflowError, match="exactly one"):
        call("sys.log", _env=env, text="x", json={})


def test_uuid_generate_is_random_v4() -> None:
    first, second = call("uuid.generate"), call("uuid.generate")
    assert first != second
    assert len(first) == 36
    assert first[14] == "4"


# ---------------------------------------------------------------- HTTP


def test_http_post_encodes_json_and_decodes_the_response() -> None:
    transport = FakeTransport(json_response(200, {"ok": True}))
    result = call(
        "http.post",
        _env=environment(transport),
        url="http://svc/run",
        body={"n": 1},
        query={"a": [1, True], "b": "x"},
        headers={"X-Trace": 7},
        auth={"type": "OIDC"},
        timeout=12,
    )
    assert result["code"] == 200
    assert result["body"] == {"ok": True}
    (request,) = transport.requests
    assert request.method == "POST"
    assert json.loads(request.body or b"") == {"n": 1}
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Trace"] == "7"
    assert list(request.query) == [("a", "1"), ("a", "true"), ("b", "x")]
    assert request.timeout == 12.0


def token_claims(request: HttpRequest) -> dict[str, Any]:
    scheme, _, token = request.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    header, claims, signature = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "none", "typ": "JWT"}
    assert signature == ""
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(claims + "=="))
    return decoded


@pytest.mark.parametrize(
    ("auth", "claim", "expected"),
    [
        ({"type": "OIDC"}, "aud", "https://svc.run.app/reload"),
        ({"type": "OIDC", "audience": "https://svc.run.app"}, "aud", "https://svc.run.app"),
        ({"type": "OAuth2"}, "scope", "cloud-platform"),
        ({"type": "OAuth2", "scopes": "https://x/auth"}, "scope", "https://x/auth"),
    ],
)
def test_http_auth_sends_a_stand_in_token_with_the_service_claims(
    auth: dict[str, str], claim: str, expected: str
) -> None:
    transport = FakeTransport(json_response(200, {}))
    env = environment(transport, env={"GOOGLE_CLOUD_WORKFLOW_ID": "wf"})
    call("http.get", _env=env, url="https://svc.run.app/reload", auth=auth)
    (request,) = transport.requests
    claims = token_claims(request)
    assert claims[claim] == expected
    assert claims["sub"] == "wf"


def test_http_without_auth_sends_no_token() -> None:
    transport = FakeTransport(json_response(200, {}))
    call("http.get", _env=environment(transport), url="https://svc.run.app/")
    (request,) = transport.requests
    assert "Authorization" not in request.headers


def test_http_error_status_raises_http_error_with_details() -> None:
    transport = FakeTransport(json_response(404, {"error": "missing"}))
    with pytest.raises(WorkflowError) as caught:
        call("http.get", _env=environment(transport), url="http://svc/x")
    payload = caught.value.payload
    assert payload["tags"] == ["HttpError"]
    assert payload["code"] == 404
    assert payload["body"] == {"error": "missing"}
    assert payload["headers"]["Content-Type"] == "application/json"
    assert "404" in payload["message"]


@pytest.mark.parametrize(
    ("failure", "tag"),
    [
        (TransportTimeoutError("slow"), "TimeoutError"),
        (TransportConnectionFailedError("refused"), "ConnectionFailedError"),
    ],
)
def test_http_transport_failures_map_to_tags(failure: Exception, tag: str) -> None:
    with pytest.raises(WorkflowError) as caught:
        call("http.get", _env=environment(FakeTransport(failure)), url="http://svc/x")
    assert caught.value.tags == [tag]


def test_http_response_over_two_megabytes_is_a_resource_limit_error() -> None:
    limit = 2 * 1024 * 1024
    transport = FakeTransport(
        HttpResponse(200, {"Content-Type": "text/plain"}, b"x" * limit),
        HttpResponse(200, {"Content-Type": "text/plain"}, b"x" * (limit + 1)),
    )
    env = environment(transport)
    assert len(call("http.get", _env=env, url="http://svc/x")["body"]) == limit
    with pytest.raises(WorkflowError, match="over the limit of 2 MB") as caught:
        call("http.get", _env=env, url="http://svc/x")
    assert caught.value.tags == ["ResourceLimitError"]


def test_cancelling_abandons_a_request_in_flight() -> None:
    started, release = threading.Event(), threading.Event()

    def hanging_transport(request: HttpRequest) -> HttpResponse:
        started.set()
        release.wait()
        return json_response(200, {})

    env = environment()
    env.services = Services(transport=hanging_transport)

    def cancel_once_sent() -> None:
        started.wait()
        env.cancel_event.set()

    canceller = threading.Thread(target=cancel_once_sent)
    canceller.start()
    try:
        with pytest.raises(Cancelled, match="GET http://svc/slow"):
            call("http.get", _env=env, url="http://svc/slow")
    finally:
        release.set()
        canceller.join()


def test_http_rejects_bad_arguments() -> None:
    env = environment(FakeTransport())
    for named, text in (
        ({"url": "ftp://x"}, "http://"),
        ({"url": "http://x", "timeout": 0}, "timeout"),
        ({"url": "http://x", "timeout": 5000}, "timeout"),
        ({"url": "http://x", "auth": {"type": "Basic"}}, "auth.type"),
    ):
        with pytest.raises(WorkflowError, match=text):
            call("http.get", _env=env, **named)
    with pytest.raises(WorkflowError, match="unsupported method"):
        call("http.request", _env=env, method="TRACE", url="http://x")


def test_http_text_and_bytes_bodies() -> None:
    transport = FakeTransport(
        HttpResponse(200, {"Content-Type": "text/plain"}, b"plain"),
        HttpResponse(200, {"Content-Type": "application/octet-stream"}, b"\x00\x01"),
    )
    env = environment(transport)
    assert call("http.put", _env=env, url="http://x", body=b"raw")["body"] == "plain"
    assert transport.requests[0].body == b"raw"
    assert call("http.request", _env=env, method="patch", url="http://x")["body"] == b"\x00\x01"
    assert transport.requests[1].method == "PATCH"


class _EchoHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.dumps({"path": self.path, "echo": json.loads(self.rfile.read(length))})
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_real_transport_against_a_local_server(echo_server: str) -> None:
    env = CallEnvironment(env={}, services=Services(), cancel_event=threading.Event())
    result = call(
        "http.post", _env=env, url=f"http://{echo_server}/p", body={"x": 1}, query={"q": "1"}
    )
    assert result["code"] == 201
    assert result["body"] == {"path": "/p?q=1", "echo": {"x": 1}}


def test_real_transport_refused_connection() -> None:
    request = HttpRequest("GET", "http://127.0.0.1:9/", {}, [], None, 2.0)
    with pytest.raises(TransportConnectionFailedError):
        requests_transport(request)


# ---------------------------------------------------------------- Pub/Sub connector

PUBLISH = "googleapis.pubsub.v1.projects.topics.publish"


def test_pubsub_publish_posts_to_the_emulator() -> None:
    transport = FakeTransport(json_response(200, {"messageIds": ["7"]}))
    data = base64.b64encode(b'{"status": "ok"}').decode()
    result = call(
        PUBLISH,
        _env=environment(transport, pubsub="localhost:8085"),
        topic="projects/p/topics/t",
        body={"messages": [{"data": data, "attributes": {"k": "v"}}]},
    )
    assert result == {"messageIds": ["7"]}
    (request,) = transport.requests
    assert request.url == "http://localhost:8085/v1/projects/p/topics/t:publish"
    assert json.loads(request.body or b"")["messages"][0]["data"] == data


def test_pubsub_publish_without_emulator_is_a_connection_error() -> None:
    with pytest.raises(WorkflowError) as caught:
        call(PUBLISH, topic="projects/p/topics/t", body={"messages": []})
    assert caught.value.tags == ["ConnectionError"]
    assert "PUBSUB_EMULATOR_HOST" in caught.value.message


def test_pubsub_publish_validates_the_topic_and_reports_api_errors() -> None:
    with pytest.raises(WorkflowError, match="projects/P/topics/T"):
        call(PUBLISH, _env=environment(pubsub="h:1"), topic="t", body={"messages": []})
    transport = FakeTransport(json_response(404, {"error": {"message": "Topic not found"}}))
    with pytest.raises(WorkflowError) as caught:
        call(
            PUBLISH,
            _env=environment(transport, pubsub="h:1"),
            topic="projects/p/topics/t",
            body={"messages": []},
        )
    assert caught.value.payload["code"] == 404


def test_the_engine_docs_list_exactly_the_registered_functions_and_their_arguments() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "WORKFLOWS_ENGINE.md").read_text("utf-8")
    table = docs.split("| Module | Functions | Notes |", 1)[1].split("\n\n", 1)[0]
    documented = {
        name: tuple(filter(None, (arg.strip() for arg in arguments.split(","))))
        for row in table.splitlines()[2:]
        for name, arguments in re.findall(r"`([\w.]+)\(([^)]*)\)`", row.split("|")[2])
    }
    registered = {name: function.parameter_names for name, function in FUNCTIONS.items()}
    assert documented == registered
