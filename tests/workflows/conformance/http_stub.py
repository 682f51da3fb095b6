"""A scriptable HTTP server on loopback, standing in for the services a workflow calls.

Each path answers from a script: a list of ``(status, body)`` replies consumed in
order, the last one repeating. Built-in paths:

- ``/echo`` (any method): 200 with the request's method, path, query, headers and body;
- ``/slow``: answers after ``SLOW_SECONDS`` (for timeouts);
- ``POST /v1/projects/{p}/topics/{t}:publish``: a Pub/Sub emulator publish, 200 with
  ``{"messageIds": [...]}``; the published messages are recorded.

Every request is recorded, so tests can count calls per path.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SLOW_SECONDS = 2.0


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # decoded JSON when the body is JSON, else the text


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None  # a dict/list is sent as JSON, a str as text/plain


class HttpStub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Reply]] = {}
        self.requests: list[RecordedRequest] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> HttpStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self.requests.clear()

    def script(self, path: str, replies: Iterable[Reply]) -> None:
        replies = list(replies)
        if not replies:
            raise ValueError(f"script for {path} needs at least one reply")
        with self._lock:
            self._scripts[path] = replies

    def calls(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def published(self, topic: str) -> list[dict[str, Any]]:
        """Messages published to ``projects/P/topics/T``, with ``data`` base64-decoded."""
        messages = []
        for request in self.calls(f"/v1/{topic}:publish"):
            for message in request.body["messages"]:
                decoded = dict(message)
                decoded["data"] = base64.b64decode(message.get("data", "")).decode("utf-8")
                messages.append(decoded)
        return messages

    def _reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            script = self._scripts.get(request.path)
            if script is not None:
                return script.pop(0) if len(script) > 1 else script[0]
        if request.path == "/echo":
            return Reply(
                200,
                {
                    "method": request.method,
                    "path": request.path,
                    "query": request.query,
                    "headers": {k.lower(): v for k, v in request.headers.items()},
                    "body": request.body,
                },
            )
        if request.path == "/slow":
            time.sleep(SLOW_SECONDS)
            return Reply(200, {"slow": True})
        if request.method == "POST" and request.path.endswith(":publish"):
            count = len(request.body.get("messages", []))
            return Reply(
                200, {"messageIds": [str(len(self.requests) * 100 + i) for i in range(count)]}
            )
        return Reply(404, {"error": f"no script for {request.method} {request.path}"})


def _handler_for(stub: HttpStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            text = raw.decode("utf-8", errors="replace")
            try:
                body: Any = json.loads(text) if text else None
            except json.JSONDecodeError:
                body = text
            request = RecordedRequest(
                method=self.command,
                path=url.path,
                query={key: values[-1] for key, values in parse_qs(url.query).items()},
                headers=dict(self.headers.items()),
                body=body,
            )
            reply = stub._reply(request)
            if isinstance(reply.body, str):
                data, content_type = reply.body.encode("utf-8"), "text/plain; charset=utf-8"
            else:
                data, content_type = json.dumps(reply.body).encode("utf-8"), "application/json"
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                # A timeout case's client has already given up on /slow; the default
                # handler would print a traceback into whichever test runs next.
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the recorded requests are the log."""

    return Handler
