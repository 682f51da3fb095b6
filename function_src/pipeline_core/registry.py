"""The model registry in the data bucket: versions, manifests and the champion pointer.

``models/<version>/model.joblib``, its compiled form ``models/<version>/model.onnx`` (when
it passed the parity check) and ``models/<version>/manifest.json`` are written before
the pointer ``models/champion.json`` ever names them, and the pointer is only
replaced with a generation precondition, so two trainings cannot both win and a reader
never sees a champion without its artifact.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline_core import logging as log
from pipeline_core.contract import (
    CHAMPION_OBJECT,
    MANIFEST_NAME,
    MODELS_PREFIX,
    LogEvent,
    PromotionPolicy,
    artifact_object,
    manifest_object,
    onnx_artifact_object,
)
from pipeline_core.errors import ObjectNotFoundError, PreconditionFailedError, TransientError
from pipeline_core.storage import Storage, read_json, write_json

# What new_version makes; anything else in a request is refused before it names an object.
VERSION_PATTERN = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{6}", re.ASCII)
ARTIFACT_CONTENT_TYPE = "application/octet-stream"
PROMOTION_ATTEMPTS = 5


def new_version(now: datetime) -> str:
    """Sortable by time (UTC, microseconds) and unique (random suffix)."""
    return f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(3)}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Champion:
    pointer: dict[str, Any]
    generation: int

    @property
    def version(self) -> str:
        return str(self.pointer["model_version"])


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    champion_version: str | None
    reason: str


def decide(
    policy: PromotionPolicy, metrics: dict[str, Any], champion: Champion | None
) -> PromotionDecision:
    """The promotion policy, pure: minimum first, then the champion with tolerance."""
    score = float(metrics[policy.metric])
    current = champion.version if champion else None
    if score < policy.minimum:
        return PromotionDecision(
            False, current, f"{policy.metric} {score:.4f} is below the minimum {policy.minimum}"
        )
    if champion is None:
        return PromotionDecision(True, None, f"first model ({policy.metric} {score:.4f})")
    champion_score = champion.pointer.get("metrics", {}).get(policy.metric)
    if champion_score is None:
        return PromotionDecision(
            True, current, f"champion {current} has no {policy.metric}; replacing it"
        )
    comparison = (
        f"{policy.metric} {score:.4f} vs champion {champion_score:.4f} "
        f"(tolerance {policy.tolerance})"
    )
    if score < float(champion_score) - policy.tolerance:
        return PromotionDecision(False, current, f"worse than the champion: {comparison}")
    return PromotionDecision(True, current, f"not worse than the champion: {comparison}")


class ModelRegistry:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def champion(self) -> Champion | None:
        """The pointer and its generation from one read: a stat followed by a read of
        that generation fails when a rival promotes in between."""
        try:
            stored = self.storage.read(CHAMPION_OBJECT)
        except ObjectNotFoundError:
            return None
        return Champion(json.loads(stored.data), stored.generation)

    def champion_generation(self) -> int:
        """The cheap check: one metadata call, 0 when there is no champion."""
        info = self.storage.stat(CHAMPION_OBJECT)
        return 0 if info is None else info.generation

    def manifest(self, version: str) -> dict[str, Any]:
        document = read_json(self.storage, manifest_object(version))
        return document

    def versions(self) -> list[str]:
        """Every registered version (one with a manifest), newest first."""
        found = []
        for name in self.storage.names(MODELS_PREFIX):
            version, _, rest = name[len(MODELS_PREFIX) :].partition("/")
            if rest == MANIFEST_NAME and VERSION_PATTERN.fullmatch(version):
                found.append(version)
        return sorted(found, reverse=True)

    def save_candidate(
        self, artifact: bytes, manifest: dict[str, Any], onnx_model: bytes | None = None
    ) -> dict[str, Any]:
        """Artifacts first, manifest (with their SHA-256) second. ``manifest["onnx"]``
        describes the compilation; the compiled model, if any, is ``onnx_model``."""
        version = manifest["model_version"]
        complete = {
            **manifest,
            "artifact": artifact_object(version),
            "sha256": sha256_hex(artifact),
            "size_bytes": len(artifact),
        }
        self.storage.write(artifact_object(version), artifact, content_type=ARTIFACT_CONTENT_TYPE)
        if onnx_model is not None:
            complete["onnx"] = {
                **manifest["onnx"],
                "artifact": onnx_artifact_object(version),
                "sha256": sha256_hex(onnx_model),
                "size_bytes": len(onnx_model),
            }
            self.storage.write(
                onnx_artifact_object(version), onnx_model, content_type=ARTIFACT_CONTENT_TYPE
            )
        write_json(self.storage, manifest_object(version), complete)
        return complete

    def promote(
        self, manifest: dict[str, Any], policy: PromotionPolicy, promoted_at: datetime
    ) -> PromotionDecision:
        """Replace the pointer if the policy allows; re-decide whenever someone won first.

        A lost compare-and-swap means another promotion landed: the pointer is read
        again and the candidate decided against the new champion, which may be this
        very candidate (a duplicate attempt of the same run won the race)."""
        version = manifest["model_version"]
        for _ in range(PROMOTION_ATTEMPTS):
            champion = self.champion()
            if champion is not None and champion.version == version:
                return PromotionDecision(True, version, "already the champion")
            decision = decide(policy, manifest["metrics"], champion)
            if not decision.promoted:
                return decision
            pointer = {
                "model_version": version,
                "manifest": manifest_object(version),
                "artifact": manifest["artifact"],
                "sha256": manifest["sha256"],
                "onnx_sha256": manifest.get("onnx", {}).get("sha256"),
                "metrics": {key: manifest["metrics"][key] for key in ("accuracy", "f1_macro")},
                "source": manifest["lineage"]["source"],
                "previous_version": champion.version if champion else None,
                "promoted_at": promoted_at.isoformat(),
            }
            try:
                write_json(
                    self.storage,
                    CHAMPION_OBJECT,
                    pointer,
                    if_generation_match=champion.generation if champion else 0,
                )
            except PreconditionFailedError:
                log.info("champion changed while promoting; deciding again", model_version=version)
                continue
            # These fields are a contract: the log-based metrics of promotions read them.
            log.info(
                "promoted a new champion",
                event=LogEvent.MODEL_PROMOTED,
                model_version=version,
                metric_name=policy.metric,
                metric_value=float(manifest["metrics"][policy.metric]),
                previous_version=pointer["previous_version"],
                reason=decision.reason,
            )
            return PromotionDecision(True, version, decision.reason)
        raise TransientError(
            f"the champion pointer changed {PROMOTION_ATTEMPTS} times while promoting {version}"
        )
