"""A private, versioned bucket with narrow object grants and an optional upload
notification (pitfall 1). Used for the data bucket and the function-source bucket."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

_BUCKET_NAME_LIMIT = 63


@dataclass(frozen=True)
class BucketGrant:
    """One role on the bucket, optionally narrowed to objects under ``object_prefix``."""

    key: str
    role: str
    member: pulumi.Input[str]
    object_prefix: str | None = None

    def __post_init__(self) -> None:
        if not self.role.startswith("roles/storage."):
            raise ValueError(f"grant {self.key}: '{self.role}' is not a Cloud Storage role")
        if self.object_prefix is not None and not self.object_prefix.endswith("/"):
            raise ValueError(f"grant {self.key}: prefix '{self.object_prefix}' must end with /")


@dataclass(frozen=True)
class UploadNotification:
    """Publish OBJECT_FINALIZE events under ``object_prefix`` to ``topic``; ``key``
    names the resource (empty for the upload notification's original name).

    ``publisher_grant`` is the Cloud Storage agent's publisher role on the topic: GCS
    checks it when the notification is created, so the notification waits for it.
    """

    key: str
    topic: pulumi.Input[str]
    object_prefix: str
    publisher_grant: pulumi.Resource


@dataclass(frozen=True)
class DataBucketArgs:
    name: str
    project: str
    location: str
    labels: Mapping[str, str] = field(default_factory=dict)
    force_destroy: bool = False
    noncurrent_days: int = 30
    noncurrent_versions_kept: int = 3
    grants: Sequence[BucketGrant] = ()
    notifications: Sequence[UploadNotification] = ()
    apis: tuple[pulumi.Resource, ...] = ()

    def __post_init__(self) -> None:
        if not 3 <= len(self.name) <= _BUCKET_NAME_LIMIT:
            raise ValueError(
                f"bucket name '{self.name}' must be 3-63 characters: shorten ml-pipeline:namePrefix"
            )
        if self.noncurrent_days < 1 or self.noncurrent_versions_kept < 1:
            raise ValueError("noncurrent_days and noncurrent_versions_kept must be at least 1")
        keys = [grant.key for grant in self.grants]
        if len(set(keys)) != len(keys):
            raise ValueError(f"bucket {self.name}: grant keys must be unique, got {keys}")
        prefixes = [notification.object_prefix for notification in self.notifications]
        overlapping = [
            (first, second)
            for index, first in enumerate(prefixes)
            for second in prefixes[index + 1 :]
            if first.startswith(second) or second.startswith(first)
        ]
        if overlapping:
            raise ValueError(
                f"bucket {self.name}: notification prefixes overlap {overlapping}; an "
                "object would start two kinds of run"
            )


class DataBucket(pulumi.ComponentResource):
    bucket: gcp.storage.Bucket
    name: pulumi.Output[str]

    def __init__(
        self, name: str, args: DataBucketArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ml-pipeline:gcp:DataBucket", name, None, opts)
        needs_apis = pulumi.ResourceOptions(parent=self, depends_on=list(args.apis))
        self.bucket = gcp.storage.Bucket(
            name,
            name=args.name,
            project=args.project,
            location=args.location,
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            versioning=gcp.storage.BucketVersioningArgs(enabled=True),
            # Versioning keeps every overwritten object; these rules bound what it costs.
            lifecycle_rules=[
                gcp.storage.BucketLifecycleRuleArgs(
                    action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                    condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                        days_since_noncurrent_time=args.noncurrent_days, with_state="ARCHIVED"
                    ),
                ),
                gcp.storage.BucketLifecycleRuleArgs(
                    action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                    condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                        num_newer_versions=args.noncurrent_versions_kept, with_state="ARCHIVED"
                    ),
                ),
            ],
            labels=dict(args.labels),
            force_destroy=args.force_destroy,
            opts=needs_apis,
        )
        self.name = self.bucket.name
        for grant in args.grants:
            gcp.storage.BucketIAMMember(
                f"{name}-{grant.key}",
                bucket=self.bucket.name,
                role=grant.role,
                member=grant.member,
                condition=_prefix_condition(args.name, grant.object_prefix),
                opts=needs_apis,
            )
        self.notifications = [
            gcp.storage.Notification(
                "-".join(filter(None, (name, notification.key, "uploads"))),
                bucket=self.bucket.name,
                topic=notification.topic,
                payload_format="JSON_API_V1",
                event_types=["OBJECT_FINALIZE"],
                object_name_prefix=notification.object_prefix,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[*args.apis, notification.publisher_grant],
                ),
            )
            for notification in args.notifications
        ]
        self.register_outputs({"name": self.name, "url": self.bucket.url})


def _prefix_condition(
    bucket: str, object_prefix: str | None
) -> gcp.storage.BucketIAMMemberConditionArgs | None:
    # Conditions on object names need uniform bucket-level access, which the bucket enforces.
    if object_prefix is None:
        return None
    return gcp.storage.BucketIAMMemberConditionArgs(
        title=f"only {object_prefix}",
        description=f"objects under {object_prefix} only",
        expression=(
            f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{object_prefix}")'
        ),
    )
