"""predict's OpenAPI 3.1 description, generated from the model it serves.

With a champion loaded, the request and response schemas name its feature names and
classes; before one is, they describe the same shapes with any feature names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline_core.http_body import MAX_BODY_BYTES, MAX_JSON_DEPTH
from pipeline_core.registry import VERSION_PATTERN
from pipeline_core.serving import FLOAT32_MAX, MAX_REPORTED_PROBLEMS

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"
JSON = "application/json"


@dataclass(frozen=True)
class ServedModel:
    """What the description is generated from: the serving model, when there is one."""

    model_version: str
    feature_names: Sequence[str]
    classes: Sequence[str]


def predict_api(model: ServedModel | None, max_batch: int) -> dict[str, Any]:
    """The whole document: every route, its request and its answers."""
    schemas = {
        **_request_schemas(model, max_batch),
        **_prediction_schemas(model),
        **_status_schemas(),
        "Error": ERROR_SCHEMA,
    }
    served = (
        f"Generated from model version {model.model_version}."
        if model
        else "No model is serving yet: feature names and classes are not known."
    )
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "predict",
            "version": API_VERSION,
            "description": (
                f"Predictions from the champion model. {served} Request bodies are at most "
                f"{MAX_BODY_BYTES} bytes and {MAX_JSON_DEPTH} levels deep; every answer, "
                "errors included, is JSON."
            ),
            "x-model-version": model.model_version if model else None,
        },
        "paths": _paths(),
        "components": {"schemas": schemas, "responses": _error_responses()},
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _answer(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content(_ref(schema))}


ERROR_STATUSES = {
    "400": "Malformed JSON, an empty body, a wrong shape, a malformed version or parameter",
    "404": "The pinned model version is not registered",
    "409": "The pinned model version failed verification",
    "413": "The body or the batch is over its limit",
    "422": "Values the model cannot take, every one listed in 'problems'",
    "503": "No model to serve yet, or storage is unavailable: retry",
}


def _error_responses() -> dict[str, Any]:
    return {status: _answer(text, "Error") for status, text in ERROR_STATUSES.items()}


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: {"$ref": f"#/components/responses/{status}"} for status in statuses}


def _get(operation: str, summary: str, schema: str, *errors: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "operationId": operation,
            "responses": {"200": _answer(summary, schema), **_errors(*errors)},
        }
    }


def _paths() -> dict[str, Any]:
    return {
        "/": {
            "post": {
                "summary": "Predict the class of one or more instances",
                "operationId": "predict",
                "requestBody": {"required": True, "content": _json_content(_ref("PredictRequest"))},
                "responses": {
                    "200": _answer("One prediction per instance, in order", "PredictResponse"),
                    **_errors(*ERROR_STATUSES),
                },
            }
        },
        "/health": _get("health", "Liveness; never loads a model", "Health"),
        "/ready": {
            "get": {
                "summary": "Readiness: a verified champion is loaded",
                "operationId": "ready",
                "responses": {
                    "200": _answer("Ready to serve", "Ready"),
                    "503": _answer("Not ready yet", "NotReady"),
                },
            }
        },
        "/model": _get("model", "What the champion takes and how it was made", "Model", "503"),
        "/versions": _get("versions", "The registered model versions", "Versions", "503"),
        "/reload": {
            "post": {
                "summary": "Check the champion pointer now",
                "operationId": "reload",
                "requestBody": {
                    "required": False,
                    "description": "Ignored: empty, {} or a Pub/Sub push envelope",
                    "content": _json_content({}),
                },
                "responses": {
                    "200": _answer("The champion now serving", "Reloaded"),
                    **_errors("400", "413", "503"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This description",
                "operationId": "openapi",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": _json_content({"type": "object"}),
                    },
                    **_errors("503"),
                },
            }
        },
    }


FEATURE_VALUE = {
    "type": "number",
    "minimum": -FLOAT32_MAX,
    "maximum": FLOAT32_MAX,
    "description": "Finite, within the float32 range the model computes in",
}


def _request_schemas(model: ServedModel | None, max_batch: int) -> dict[str, Any]:
    if model:
        names = list(model.feature_names)
        record: dict[str, Any] = {
            "type": "object",
            "properties": dict.fromkeys(names, FEATURE_VALUE),
            "required": names,
            "additionalProperties": False,
        }
        positional: dict[str, Any] = {
            "type": "array",
            "prefixItems": [{**FEATURE_VALUE, "title": name} for name in names],
            "items": False,
            "minItems": len(names),
            "maxItems": len(names),
        }
    else:
        record = {"type": "object", "additionalProperties": FEATURE_VALUE, "minProperties": 1}
        positional = {"type": "array", "items": FEATURE_VALUE, "minItems": 1}
    batch = {"type": "array", "items": _ref("Instance"), "minItems": 1, "maxItems": max_batch}
    return {
        "Record": {**record, "description": "One instance by feature name"},
        "Positional": {**positional, "description": "One instance in the feature order"},
        "Instance": {"oneOf": [_ref("Record"), _ref("Positional")]},
        "Parameters": {
            "type": "object",
            "properties": {
                "model_version": {
                    "type": "string",
                    "pattern": f"^{VERSION_PATTERN.pattern}$",
                    "description": "Pin a registered version (GET /versions)",
                }
            },
            "additionalProperties": False,
        },
        "PredictRequest": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"instances": batch, "parameters": _ref("Parameters")},
                    "required": ["instances"],
                    "additionalProperties": False,
                },
                _ref("Record"),
                {**batch, "items": _ref("Record")},
                {
                    "type": "object",
                    "properties": {"features": _ref("Positional")},
                    "required": ["features"],
                    "additionalProperties": False,
                },
            ]
        },
    }


PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}


def _prediction_schemas(model: ServedModel | None) -> dict[str, Any]:
    if model:
        classes = list(model.classes)
        label: dict[str, Any] = {"type": "string", "enum": classes}
        probabilities: dict[str, Any] = {
            "type": "object",
            "properties": dict.fromkeys(classes, PROBABILITY),
            "required": classes,
            "additionalProperties": False,
        }
    else:
        label = {"type": "string"}
        probabilities = {"type": "object", "additionalProperties": PROBABILITY}
    return {
        "Prediction": {
            "type": "object",
            "properties": {
                "label": {**label, "description": "A class value of the training data"},
                "confidence": PROBABILITY,
                "probabilities": probabilities,
            },
            "required": ["label", "confidence", "probabilities"],
            "additionalProperties": False,
        },
        "PredictResponse": {
            "type": "object",
            "properties": {
                "model_version": {"type": "string"},
                "predictions": {"type": "array", "items": _ref("Prediction")},
            },
            "required": ["model_version", "predictions"],
            "additionalProperties": False,
        },
    }


def _object(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {**required, **optional},
        "required": list(required),
    }


STRING = {"type": "string"}
NULLABLE_STRING = {"type": ["string", "null"]}
REFUSED = _object({"model_version": STRING, "problem": STRING})


def _status_schemas() -> dict[str, Any]:
    return {
        "Health": _object(
            {
                "status": {"const": "ok"},
                "model_loaded": {"type": "boolean"},
                "model_version": NULLABLE_STRING,
            },
            refused_champion=REFUSED,
        ),
        "Ready": _object(
            {"status": {"const": "ready"}, "model_version": STRING, "runtime": STRING},
            refused_champion=REFUSED,
        ),
        "NotReady": _object(
            {"status": {"const": "not_ready"}, "detail": STRING},
            refused_champion=REFUSED,
        ),
        "Model": _object(
            {
                "model_version": STRING,
                "feature_names": {"type": "array", "items": STRING},
                "classes": {"type": "array", "items": STRING},
                "metrics": {"type": "object"},
                "runtime": STRING,
            }
        ),
        "Versions": _object(
            {"champion": NULLABLE_STRING, "versions": {"type": "array", "items": STRING}}
        ),
        "Reloaded": _object({"status": {"const": "serving"}, "model_version": STRING}),
    }


PROBLEM = _object(
    {"row": {"type": "integer", "minimum": 0}, "feature": NULLABLE_STRING, "message": STRING}
)
ERROR_SCHEMA = _object(
    {
        "error": _object(
            {"code": STRING, "message": STRING},
            row={"type": "integer"},
            feature=NULLABLE_STRING,
            problems={"type": "array", "items": PROBLEM, "maxItems": MAX_REPORTED_PROBLEMS},
            problem_count={"type": "integer", "minimum": 1},
        )
    }
)
