"""Errors of the local stack that a person can act on.

The CLI prints them as one message (no traceback) and exits non-zero; each says what
went wrong and what to do about it.
"""

from __future__ import annotations

from typing import Any

PUBSUB_EMULATOR_INSTALL = (
    "install the Pub/Sub emulator: on Debian/Ubuntu with Google's apt repository run "
    "'sudo apt-get install google-cloud-cli-pubsub-emulator' (it needs Java 17: "
    "'sudo apt-get install openjdk-17-jre-headless'); with a standalone gcloud run "
    "'gcloud components install pubsub-emulator beta'"
)


class DevstackError(Exception):
    """An error of the local stack with a message that says how to fix it."""


class EmulatorMissingError(DevstackError):
    """A required emulator (or its runtime) is not installed."""


class PortBusyError(DevstackError):
    """A port the stack was about to use is taken."""


class ServiceDiedError(DevstackError):
    """A service process exited or never answered its health check."""

    def __init__(self, service: str, problem: str, log_tail: str, hint: str = "") -> None:
        self.service = service
        self.log_tail = log_tail
        message = f"service '{service}' {problem}."
        if hint:
            message += f" {hint}."
        message += f"\n--- last lines of its log ---\n{log_tail or '(empty log)'}"
        super().__init__(message)


class StackStateError(DevstackError):
    """The stack is not running when it should be, or running when it should not."""


class RunFailedError(DevstackError):
    """A pipeline run ended rejected or failed; carries the run summary."""

    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        stage = summary.get("stage", "unknown stage")
        reason = summary.get("reason", "no reason given")
        super().__init__(f"run {summary.get('status', 'failed')} at {stage}: {reason}")


class RunTimeoutError(DevstackError):
    """A run did not finish in time."""
