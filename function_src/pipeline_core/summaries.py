"""Run summaries published to the model-events topic (docs/ARCHITECTURE.md)."""

from __future__ import annotations

from typing import Any

from pipeline_core.errors import DataRejectedError
from pipeline_core.events import ObjectRef


def succeeded(ref: ObjectRef, training: dict[str, Any]) -> dict[str, Any]:
    metrics = training["metrics"]
    return {
        "status": "succeeded",
        **ref.to_json(),
        "model_version": training["model_version"],
        "promoted": training["promoted"],
        "champion_version": training["champion_version"],
        "metrics": {"accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"]},
        "reason": training["reason"],
        # The candidate's own answer to its smoke rows, given before it was promoted.
        "smoke_prediction": training.get("smoke_prediction"),
    }


def scored(ref: ObjectRef, scoring: dict[str, Any]) -> dict[str, Any]:
    """A scoring run's outcome (the summary document beside its predictions, shortened)."""
    return {
        "status": "scored",
        **ref.to_json(),
        "stage": "score_data",
        **{
            key: scoring[key]
            for key in (
                "model_version",
                "rows_in",
                "rows_scored",
                "rows_refused",
                "refusals",
                "predictions_object",
                "predictions_csv",
                "summary_object",
                "duration_seconds",
            )
        },
    }


def rejected(ref: ObjectRef, stage: str, rejection: DataRejectedError) -> dict[str, Any]:
    return {
        "status": "rejected",
        **ref.to_json(),
        "stage": stage,
        "reason": rejection.detail,
        "rejection_object": rejection.rejection_object,
    }


def failed(ref: ObjectRef, stage: str, reason: str) -> dict[str, Any]:
    return {"status": "failed", **ref.to_json(), "stage": stage, "reason": reason}


def attributes(summary: dict[str, Any]) -> dict[str, str]:
    return {
        "status": summary["status"],
        "object": summary["object"],
        "generation": summary["generation"],
    }
