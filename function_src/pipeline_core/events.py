"""Typed events: the first thing every entry point builds from its raw input."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline_core.contract import MAX_PARTS, PROCESSED_PREFIX, RAW_PREFIX, part_objects
from pipeline_core.errors import BadRequestError

FINALIZE = "OBJECT_FINALIZE"
PUBSUB_MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"


@dataclass(frozen=True)
class ObjectRef:
    """One exact version of an object: what every stage works on."""

    bucket: str
    name: str
    generation: int

    def to_json(self) -> dict[str, str]:
        # GCS's JSON API carries generations as strings (they exceed 2**53).
        return {"bucket": self.bucket, "object": self.name, "generation": str(self.generation)}

    def check_bucket(self, data_bucket: str) -> None:
        """A stage works on its own pipeline's data bucket only."""
        if self.bucket != data_bucket:
            raise BadRequestError(f"bucket {self.bucket!r} is not this pipeline's data bucket")

    @classmethod
    def from_request(cls, payload: Any) -> ObjectRef:
        """``{bucket, object, generation}`` from an HTTP body (workflow mode)."""
        if not isinstance(payload, Mapping):
            raise BadRequestError("the body must be a JSON object {bucket, object, generation}")
        bucket = _required_string(payload, "bucket")
        name = _required_string(payload, "object")
        return cls(bucket, name, parse_generation(payload.get("generation"), "generation"))


@dataclass(frozen=True)
class TrainingRequest:
    """What train_model works on: the upload and the data processing made of it (the
    ``processed_parts`` Parquet parts under the prefix ``processed_data``)."""

    source: ObjectRef  # the raw upload the data came from
    processed_data: str
    processed_parts: int

    @classmethod
    def from_json(cls, payload: Any) -> TrainingRequest:
        source = ObjectRef.from_request(payload)
        dataset = payload.get("processed_data")
        if (
            not isinstance(dataset, str)
            or not dataset.startswith(PROCESSED_PREFIX)
            or not dataset.endswith("/")
        ):
            raise BadRequestError(
                f"'processed_data' must name a prefix under {PROCESSED_PREFIX} ending in "
                f"'/', got {dataset!r}"
            )
        parts = payload.get("processed_parts")
        if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= MAX_PARTS:
            raise BadRequestError(
                f"'processed_parts' must be a whole number from 1 to {MAX_PARTS}, got {parts!r}"
            )
        return cls(source, dataset, parts)

    @classmethod
    def of_processed(cls, source: ObjectRef, processed: Mapping[str, Any]) -> TrainingRequest:
        """The request for the data a processing result (its JSON) names."""
        return cls(source, processed["processed_data"], processed["processed_parts"])

    @property
    def part_objects(self) -> list[str]:
        return part_objects(self.processed_data, self.processed_parts)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.source.to_json(),
            "processed_data": self.processed_data,
            "processed_parts": self.processed_parts,
        }


@dataclass(frozen=True)
class PromotionRequest:
    """Promote the candidate trained from an upload, once its smoke test passed."""

    source: ObjectRef
    model_version: str

    @classmethod
    def from_json(cls, payload: Any) -> PromotionRequest:
        source = ObjectRef.from_request(payload)
        version = payload.get("model_version")
        if not isinstance(version, str) or not version:
            raise BadRequestError(
                f"'model_version' must name the candidate to promote, got {version!r}"
            )
        return cls(source, version)

    def to_json(self) -> dict[str, str]:
        return {**self.source.to_json(), "model_version": self.model_version}


@dataclass(frozen=True)
class StorageNotification:
    """A GCS notification, whichever way it arrived."""

    ref: ObjectRef
    event_type: str
    size: int | None  # None when the payload format carries no object resource
    event_id: str

    def skip_reason(self, prefix: str = RAW_PREFIX) -> str | None:
        """Why this notification must not start a run of the stage that reads ``prefix``
        (training: raw/, scoring: the scoring prefix), or None when it should."""
        if self.event_type != FINALIZE:
            return f"event type {self.event_type} is not {FINALIZE}"
        if not self.ref.name.startswith(prefix):
            return f"object {self.ref.name} is outside {prefix}"
        if self.size == 0:
            return f"object {self.ref.name} is empty (zero bytes)"
        return None

    @classmethod
    def from_cloud_event(cls, event_type: str, event_id: str, data: Any) -> StorageNotification:
        """From a Pub/Sub ``messagePublished`` or a storage ``finalized`` CloudEvent."""
        if event_type == PUBSUB_MESSAGE_PUBLISHED:
            return cls._from_pubsub(event_id, data)
        if event_type == STORAGE_FINALIZED:
            if not isinstance(data, Mapping):
                raise BadRequestError("storage event data is not an object resource")
            return cls._from_resource(FINALIZE, event_id, data, {})
        raise BadRequestError(f"unsupported CloudEvent type {event_type!r}")

    @classmethod
    def _from_pubsub(cls, event_id: str, data: Any) -> StorageNotification:
        message = pubsub_message(data)
        attributes = message.attributes
        event_type = attributes.get("eventType")
        if not event_type:
            raise BadRequestError(
                "Pub/Sub message has no eventType attribute; not a GCS notification"
            )
        resource: Mapping[str, Any] = {}
        if attributes.get("payloadFormat", "JSON_API_V1") == "JSON_API_V1" and message.data:
            decoded = message.json()
            if not isinstance(decoded, Mapping):
                raise BadRequestError("GCS notification payload is not a JSON object")
            resource = decoded
        return cls._from_resource(event_type, message.message_id or event_id, resource, attributes)

    @classmethod
    def _from_resource(
        cls,
        event_type: str,
        event_id: str,
        resource: Mapping[str, Any],
        attributes: Mapping[str, str],
    ) -> StorageNotification:
        bucket = attributes.get("bucketId") or resource.get("bucket")
        name = attributes.get("objectId") or resource.get("name")
        generation = attributes.get("objectGeneration") or resource.get("generation")
        if not isinstance(bucket, str) or not bucket:
            raise BadRequestError("GCS notification names no bucket")
        if not isinstance(name, str) or not name:
            raise BadRequestError("GCS notification names no object")
        size_raw = resource.get("size")
        size = None if size_raw is None else parse_generation(size_raw, "size")
        return cls(
            ref=ObjectRef(bucket, name, parse_generation(generation, "generation")),
            event_type=event_type,
            size=size,
            event_id=event_id,
        )


@dataclass(frozen=True)
class PubSubMessage:
    data: bytes
    attributes: Mapping[str, str]
    message_id: str

    def json(self) -> Any:
        try:
            return json.loads(self.data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadRequestError(f"Pub/Sub message data is not JSON: {error}") from None


def pubsub_message(data: Any) -> PubSubMessage:
    """The message inside a ``messagePublished`` CloudEvent's data or a push envelope."""
    if not isinstance(data, Mapping) or not isinstance(data.get("message"), Mapping):
        raise BadRequestError("event data has no Pub/Sub 'message' object")
    message = data["message"]
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping) or not all(
        isinstance(value, str) for value in attributes.values()
    ):
        raise BadRequestError("Pub/Sub message attributes must map strings to strings")
    encoded = message.get("data") or ""
    if not isinstance(encoded, str):
        raise BadRequestError("Pub/Sub message data must be a base64 string")
    try:
        payload = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("Pub/Sub message data is not valid base64") from None
    message_id = message.get("messageId") or message.get("message_id") or ""
    return PubSubMessage(payload, dict(attributes), str(message_id))


def parse_generation(value: Any, field_name: str) -> int:
    if isinstance(value, bool):
        raise BadRequestError(f"'{field_name}' must be a whole number, got {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    # str.isdigit alone accepts "²" (int() then fails) and "١٢٣" (int() reads 123).
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise BadRequestError(
        f"'{field_name}' must be a whole number (or a string of digits), got {value!r}"
    )


def _required_string(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"'{key}' must be a non-empty string, got {value!r}")
    return value
