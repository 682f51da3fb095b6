"""One error hierarchy for every handler.

Permanent errors are recorded and acknowledged (retrying cannot help); transient errors
are raised so the platform retries. Entry points map ``http_status`` to the response.
"""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """Base of every error the core raises on purpose."""

    http_status = 500
    code = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class PermanentError(PipelineError):
    """Retrying the same input gives the same failure."""

    http_status = 422
    code = "permanent"


class BadRequestError(PermanentError):
    """The request is malformed or has the wrong shape."""

    http_status = 400
    code = "bad_request"


class InvalidInputError(PermanentError):
    """The request is well-formed but a value cannot be used."""

    http_status = 422
    code = "invalid_input"


class PayloadTooLargeError(PermanentError):
    http_status = 413
    code = "payload_too_large"


class DataRejectedError(PermanentError):
    """A whole raw file was rejected, recorded in ``rejection_object``: ``reason_code``
    names the rule it broke (``too_few_rows``), ``detail`` says what was wrong in words."""

    http_status = 422
    code = "rejected"

    def __init__(self, reason_code: str, *, rejection_object: str, detail: str) -> None:
        super().__init__(detail)
        self.reason_code = reason_code
        self.detail = detail
        self.rejection_object = rejection_object

    def to_json(self) -> dict[str, Any]:
        # On the wire (docs/FUNCTIONS.md) the words are the "reason", the rule's name
        # the "rejection_code".
        body = super().to_json()
        body["error"].update(
            reason=self.detail,
            rejection_code=self.reason_code,
            rejection_object=self.rejection_object,
        )
        return body


class TrainingFailedError(PermanentError):
    code = "training_failed"


class ConfigurationError(PipelineError):
    """An environment variable the function needs is missing or invalid.

    Not permanent: a redeploy with the right value fixes it, so events are retried.
    """

    http_status = 500
    code = "configuration"


class TransientError(PipelineError):
    """A dependency failed in a way that a retry may fix."""

    http_status = 503
    code = "transient"


class NoChampionError(TransientError):
    """No model has been promoted yet, or the champion cannot be loaded."""

    code = "no_champion"


class ObjectNotFoundError(PermanentError):
    http_status = 404
    code = "not_found"


class PreconditionFailedError(TransientError):
    """A generation precondition did not hold (someone else wrote first)."""

    http_status = 412
    code = "precondition_failed"


class ModelVersionNotFoundError(PermanentError):
    """A request pinned a model version the registry does not hold."""

    http_status = 404
    code = "model_version_not_found"


class ModelRefusedError(PermanentError):
    """A pinned model version failed verification (its artifact does not match its
    manifest); it is never served, and asking again gives the same answer."""

    http_status = 409
    code = "model_refused"


class SmokeTestFailedError(PermanentError):
    """A candidate could not answer its smoke prediction, so it is never promoted."""

    code = "smoke_test_failed"


class ScoringFailedError(PermanentError):
    """A scoring upload cannot be scored as it is (no champion to score with, or the
    champion was refused); the outcome is recorded and the upload is not retried."""

    code = "scoring_failed"
