"""``python -m devstack.notifications``: the data bucket's notifications, on one machine.

GCS holds one notification per prefix, each publishing to its own topic
(``components.topology.Notification``). fake-gcs-server publishes every object event
to a single topic and takes a single prefix, so the local stack points it at one
local-only topic and this router, fed by an emulator push subscription, publishes
each event to the topic of every notification whose prefix the object's name starts
with, data and attributes unchanged: what GCS's own filter does in the cloud.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from devstack.errors import DevstackError
from devstack.pubsub import PubSubEmulator
from pipeline_core.errors import BadRequestError
from pipeline_core.events import pubsub_message

HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class Route:
    prefix: str
    topic: str


def parse_route(text: str) -> Route:
    """``--route PREFIX=TOPIC``: one notification of the bucket."""
    prefix, separator, topic = text.partition("=")
    if not separator or not prefix or not topic:
        raise argparse.ArgumentTypeError(f"expected PREFIX=TOPIC, got {text!r}")
    return Route(prefix, topic)


def topics_for(routes: Sequence[Route], object_name: str) -> list[str]:
    return [route.topic for route in routes if object_name.startswith(route.prefix)]


def serve(host: str, port: int, pubsub: PubSubEmulator, routes: Sequence[Route]) -> None:
    class Router(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(HTTPStatus.OK if self.path == HEALTH_PATH else HTTPStatus.NOT_FOUND)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                # The functions' own parser of push envelopes (pipeline_core.events).
                message = pubsub_message(json.loads(body))
            except (ValueError, BadRequestError):
                # Not an event fake-gcs-server sent; redelivering it cannot help.
                print(f"notifications: dropping a malformed push: {body[:200]!r}", flush=True)
                self._answer(HTTPStatus.NO_CONTENT)
                return
            try:
                for topic in topics_for(routes, message.attributes.get("objectId", "")):
                    pubsub.publish(topic, message.data, message.attributes)
            except DevstackError as error:
                print(f"notifications: {error}", flush=True)
                self._answer(HTTPStatus.SERVICE_UNAVAILABLE)  # redelivered
                return
            self._answer(HTTPStatus.NO_CONTENT)

        def _answer(self, status: HTTPStatus) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: one line per object event would drown the log."""

    server = ThreadingHTTPServer((host, port), Router)
    print(f"notifications: routing {[f'{r.prefix}={r.topic}' for r in routes]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.notifications")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pubsub-host", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--route", type=parse_route, action="append", default=[])
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port, PubSubEmulator(args.pubsub_host, args.project), args.route)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
