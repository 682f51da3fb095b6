"""A small client of the Pub/Sub emulator's REST API.

The emulator serves the same REST surface as pubsub.googleapis.com. Plain HTTP keeps
the CLI free of gRPC channel set-up and lets every call name the emulator explicitly
instead of relying on a process-wide PUBSUB_EMULATOR_HOST.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from devstack.errors import DevstackError

_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class ReceivedMessage:
    ack_id: str
    data: bytes
    attributes: dict[str, str]
    delivery_attempt: int
    message_id: str = ""
    publish_time: str = ""  # RFC 3339, as the emulator stamps it


class PubSubEmulator:
    def __init__(self, host: str, project: str) -> None:
        self.host = host
        self.project = project
        self._session = requests.Session()

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"

    def subscription_path(self, subscription: str) -> str:
        return f"projects/{self.project}/subscriptions/{subscription}"

    def create_topic(self, topic: str) -> None:
        self._call("PUT", self.topic_path(topic), None, allow_conflict=True)

    def create_subscription(
        self,
        name: str,
        topic: str,
        *,
        push_endpoint: str | None = None,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int | None = None,
        ack_deadline_seconds: int = 60,
        retry_backoff_seconds: tuple[int, int] = (1, 10),
    ) -> None:
        body: dict[str, Any] = {
            "topic": self.topic_path(topic),
            "ackDeadlineSeconds": ack_deadline_seconds,
            "retryPolicy": {
                "minimumBackoff": f"{retry_backoff_seconds[0]}s",
                "maximumBackoff": f"{retry_backoff_seconds[1]}s",
            },
        }
        if push_endpoint is not None:
            body["pushConfig"] = {"pushEndpoint": push_endpoint}
        if dead_letter_topic is not None:
            body["deadLetterPolicy"] = {
                "deadLetterTopic": self.topic_path(dead_letter_topic),
                "maxDeliveryAttempts": max_delivery_attempts,
            }
        self._call("PUT", self.subscription_path(name), body, allow_conflict=True)

    def delete_subscription(self, name: str) -> None:
        self._call("DELETE", self.subscription_path(name), None)

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        message = {"data": base64.b64encode(data).decode("ascii"), "attributes": dict(attributes)}
        answer = self._call("POST", f"{self.topic_path(topic)}:publish", {"messages": [message]})
        return str(answer["messageIds"][0])

    def pull(self, subscription: str, max_messages: int = 10) -> list[ReceivedMessage]:
        answer = self._call(
            "POST",
            f"{self.subscription_path(subscription)}:pull",
            {"maxMessages": max_messages, "returnImmediately": True},
        )
        return [
            ReceivedMessage(
                ack_id=item["ackId"],
                data=base64.b64decode(item["message"].get("data", "")),
                attributes=dict(item["message"].get("attributes", {})),
                delivery_attempt=int(item.get("deliveryAttempt", 0)),
                message_id=str(item["message"].get("messageId", "")),
                publish_time=str(item["message"].get("publishTime", "")),
            )
            for item in answer.get("receivedMessages", [])
        ]

    def acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        if ack_ids:
            self._call(
                "POST", f"{self.subscription_path(subscription)}:acknowledge", {"ackIds": ack_ids}
            )

    def release(self, subscription: str, ack_ids: list[str]) -> None:
        """Give messages back unacknowledged (deadline 0): they stay for the next pull."""
        if ack_ids:
            self._call(
                "POST",
                f"{self.subscription_path(subscription)}:modifyAckDeadline",
                {"ackIds": ack_ids, "ackDeadlineSeconds": 0},
            )

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        *,
        allow_conflict: bool = False,
    ) -> dict[str, Any]:
        url = f"http://{self.host}/v1/{path}"
        try:
            response = self._session.request(method, url, json=body, timeout=_TIMEOUT_SECONDS)
        except requests.ConnectionError:
            raise DevstackError(
                f"the Pub/Sub emulator at {self.host} does not answer; is the stack up? "
                "(python -m devstack up --detach)"
            ) from None
        if allow_conflict and response.status_code == 409:
            return {}
        if not response.ok:
            raise DevstackError(
                f"Pub/Sub emulator refused {method} {path}: {response.status_code} {response.text}"
            )
        answer: dict[str, Any] = response.json() if response.content else {}
        return answer
