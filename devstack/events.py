"""``python -m devstack events``: the run summaries published to model-events, in order.

The local stack creates one pull subscription for them when it starts
(``topology.summary_subscription_name``, e.g. ``mlp-dev-run-summaries``), as the
cloud stack keeps them in its own. Reading does not consume: every message is given
back after it is read, so each call shows the whole history since ``up``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from devstack.pubsub import ReceivedMessage
from devstack.stack import StackState

# More than any local session publishes; bounds the loop should the emulator misbehave.
_MAX_PULLS = 100


def model_events(state: StackState) -> list[dict[str, Any]]:
    """Every summary published since the stack started, oldest first, each with the
    time the emulator received it (``published_at``)."""
    pubsub = state.pubsub()
    subscription = state.summary_subscription
    received: dict[str, ReceivedMessage] = {}
    try:
        for _ in range(_MAX_PULLS):
            batch = pubsub.pull(subscription, max_messages=100)
            if not batch:
                break
            received.update((message.message_id, message) for message in batch)
    finally:
        pubsub.release(subscription, [message.ack_id for message in received.values()])
    ordered = sorted(received.values(), key=_publish_order)
    return [_summary(message) for message in ordered]


def _publish_order(message: ReceivedMessage) -> tuple[datetime, str]:
    # Parsed: the emulator's fractional seconds vary in length, so text does not sort.
    try:
        published = datetime.fromisoformat(message.publish_time)
    except ValueError:
        published = datetime.min.replace(tzinfo=UTC)
    return published, message.message_id


def _summary(message: ReceivedMessage) -> dict[str, Any]:
    try:
        document = json.loads(message.data)
    except ValueError:
        document = {"undecodable_message": message.data.decode("utf-8", errors="replace")}
    if not isinstance(document, dict):
        document = {"unexpected_message": document}
    return {"published_at": message.publish_time, **document}
