"""A model history read from the registry in the data bucket (local or real).

Every name comes from the contract the functions write by (``pipeline_core.contract``:
statistics, rejection records, each upload's recorded outcome) and the registry's own
code (versions, manifests, the champion pointer), so the report cannot drift from the
layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline_core.contract import PROCESSED_PREFIX, REJECTED_PREFIX, STATS_NAME, lineage_object
from pipeline_core.errors import ObjectNotFoundError, PipelineError
from pipeline_core.events import ObjectRef
from pipeline_core.registry import ModelRegistry
from pipeline_core.storage import GcsStorage, Storage, read_json

__all__ = ["GcsStorage", "History", "PipelineError", "Run", "Storage", "Version", "load_history"]


@dataclass(frozen=True)
class Version:
    version: str
    created_at: datetime
    model_type: str
    metrics: dict[str, Any]
    source: ObjectRef
    rows: dict[str, int]
    # From the upload's recorded outcome: None while undecided (or never recorded).
    promoted: bool | None
    reason: str


@dataclass(frozen=True)
class Run:
    """One upload (object generation) and what processing made of it."""

    source: ObjectRef
    status: str  # "processed" or "rejected"
    rows_in: int
    rows_out: int
    row_rejections: dict[str, int]
    reason: str | None = None  # the file's rejection code
    detail: str | None = None
    model_versions: tuple[str, ...] = ()


@dataclass(frozen=True)
class History:
    bucket: str
    metric: str
    versions: list[Version]  # oldest first
    runs: list[Run]  # by upload generation
    champion: Version | None
    champion_manifest: dict[str, Any] = field(default_factory=dict)

    def champion_steps(self) -> list[Version]:
        """The promoted versions in the order they were created: the champion line."""
        return [version for version in self.versions if version.promoted]


def load_history(storage: Storage, metric: str) -> History:
    registry = ModelRegistry(storage)
    versions = [_version(registry, name) for name in reversed(registry.versions())]
    champion_pointer = registry.champion()
    by_name = {version.version: version for version in versions}
    champion = by_name.get(champion_pointer.version) if champion_pointer else None
    return History(
        bucket=storage.bucket,
        metric=metric,
        versions=versions,
        runs=_runs(storage, versions),
        champion=champion,
        champion_manifest=registry.manifest(champion.version) if champion else {},
    )


def _version(registry: ModelRegistry, name: str) -> Version:
    manifest = registry.manifest(name)
    lineage = manifest["lineage"]
    source = ObjectRef.from_request(lineage["source"])
    try:
        outcome = read_json(registry.storage, lineage_object(source))
    except ObjectNotFoundError:
        outcome = {}
    recorded = outcome.get("model_version") == name
    decided = recorded and outcome.get("decided", True)
    return Version(
        version=name,
        created_at=datetime.fromisoformat(manifest["created_at"]),
        model_type=str(manifest.get("model_type", "")),
        metrics=manifest["metrics"],
        source=source,
        rows={key: int(value) for key, value in lineage.get("rows", {}).items()},
        promoted=bool(outcome["promoted"]) if decided else None,
        reason=str(outcome.get("reason", "")) if recorded else "no recorded decision",
    )


def _runs(storage: Storage, versions: list[Version]) -> list[Run]:
    trained: dict[ObjectRef, list[str]] = {}
    for version in versions:
        trained.setdefault(version.source, []).append(version.version)
    found: list[Run] = []
    for name in storage.names(PROCESSED_PREFIX):
        if name.rsplit("/", 1)[-1] != STATS_NAME:
            continue
        stats = read_json(storage, name)
        source = ObjectRef.from_request(stats["source"])
        found.append(
            Run(
                source=source,
                status="processed",
                rows_in=int(stats["rows_in"]),
                rows_out=int(stats["rows_out"]),
                row_rejections=dict(stats["rejections"]),
                model_versions=tuple(trained.get(source, ())),
            )
        )
    for name in storage.names(REJECTED_PREFIX):
        record = read_json(storage, name)
        rows_in = int(record.get("rows_in", 0))
        found.append(
            Run(
                source=ObjectRef.from_request(record["source"]),
                status="rejected",
                rows_in=rows_in,
                rows_out=0,
                row_rejections=dict(record.get("row_rejections", {})),
                reason=str(record["reason"]),
                detail=str(record.get("detail", "")),
            )
        )
    return sorted(found, key=lambda run: (run.source.generation, run.source.name))
