"""The publishing port: JSON messages with string attributes to a Pub/Sub topic."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from pipeline_core.errors import TransientError

PUBLISH_TIMEOUT_SECONDS = 60.0


class Publisher(Protocol):
    def publish(self, topic: str, message: Mapping[str, Any], attributes: Mapping[str, str]) -> str:
        """Publish to a full topic path; returns the message id."""
        ...


class PubSubPublisher:
    """google-cloud-pubsub; honours PUBSUB_EMULATOR_HOST. Created on first use."""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    def publish(self, topic: str, message: Mapping[str, Any], attributes: Mapping[str, str]) -> str:
        if self._client is None:
            from google.cloud.pubsub_v1 import PublisherClient

            self._client = PublisherClient()
        from google.api_core import exceptions

        data = json.dumps(message, sort_keys=True).encode()
        try:
            future = self._client.publish(topic, data, **attributes)
            return str(future.result(timeout=PUBLISH_TIMEOUT_SECONDS))
        except (exceptions.GoogleAPIError, TimeoutError) as error:
            raise TransientError(f"publishing to {topic} failed: {error}") from error
