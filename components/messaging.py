"""Pub/Sub topics of the pipeline, the dead-letter queue and the service-agent grants
that notifications, dead-lettering and OIDC push depend on (pitfalls 1, 10, 11)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

from components.topology import Notification, TopicSpec

# How long the dead-letter subscription keeps what failed: the Pub/Sub maximum.
DEAD_LETTER_RETENTION = "604800s"
# Run summaries are kept 7 days, the longest a subscription holds messages, and kept
# after they are acknowledged too, so a week of runs can be replayed with `seek`
# whoever read them first: long enough to look back over a weekend or a week's
# uploads. Longer history is not needed here: every outcome is also recorded in the
# data bucket (models/ manifests, models/by-source/, rejected/), which is the lasting
# record; 31-day topic retention would bill for a copy of it.
SUMMARY_RETENTION = "604800s"


@dataclass(frozen=True)
class TopicPublisher:
    key: str
    topic: str  # topic key
    member: pulumi.Input[str]


@dataclass(frozen=True)
class MessagingArgs:
    project: str
    name_prefix: str
    topics: tuple[TopicSpec, ...]
    dead_letter_topic: str  # topic key
    notifications: tuple[Notification, ...]  # the bucket notifications, by topic
    summary_topic: str  # topic key of the run summaries, kept by a pull subscription
    summary_subscription_name: str
    dead_letter_subscription_name: str  # the pull subscription that holds the dead letters
    storage_agent: pulumi.Input[str]
    pubsub_agent: pulumi.Input[str]
    push_identity: pulumi.Input[str]  # account id (projects/.../serviceAccounts/...) of OIDC push
    publishers: Sequence[TopicPublisher] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    apis: tuple[pulumi.Resource, ...] = ()

    def __post_init__(self) -> None:
        keys = {topic.key for topic in self.topics}
        for role, key in (
            ("dead_letter_topic", self.dead_letter_topic),
            *(("notifications", notification.topic) for notification in self.notifications),
            ("summary_topic", self.summary_topic),
            *(("publishers", publisher.topic) for publisher in self.publishers),
        ):
            if key not in keys:
                raise ValueError(f"MessagingArgs.{role}: no topic '{key}' among {sorted(keys)}")


class Messaging(pulumi.ComponentResource):
    topics: dict[str, gcp.pubsub.Topic]
    notification_grants: dict[str, gcp.pubsub.TopicIAMMember]  # by notification key
    dead_letter_grant: gcp.pubsub.TopicIAMMember
    token_creator_grant: gcp.serviceaccount.IAMMember

    def __init__(
        self, name: str, args: MessagingArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ml-pipeline:gcp:Messaging", name, None, opts)
        needs_apis = pulumi.ResourceOptions(parent=self, depends_on=list(args.apis))
        self.topics = {
            spec.key: gcp.pubsub.Topic(
                f"{name}-{spec.suffix}",
                project=args.project,
                name=f"{args.name_prefix}-{spec.suffix}",
                labels=dict(args.labels),
                opts=needs_apis,
            )
            for spec in args.topics
        }
        dead_letter = self.topics[args.dead_letter_topic]
        # A dead-letter topic without a subscription drops what it receives.
        self.dead_letter_subscription = gcp.pubsub.Subscription(
            f"{name}-dead-letter-hold",
            project=args.project,
            name=args.dead_letter_subscription_name,
            topic=dead_letter.id,
            message_retention_duration=DEAD_LETTER_RETENTION,
            retain_acked_messages=True,
            expiration_policy=gcp.pubsub.SubscriptionExpirationPolicyArgs(ttl=""),
            labels=dict(args.labels),
            opts=needs_apis,
        )
        # Without a subscription the summaries published to the topic are dropped.
        self.summary_subscription = gcp.pubsub.Subscription(
            f"{name}-run-summaries",
            project=args.project,
            name=args.summary_subscription_name,
            topic=self.topics[args.summary_topic].id,
            message_retention_duration=SUMMARY_RETENTION,
            retain_acked_messages=True,
            # The default deletes a subscription nobody pulled from for 31 days.
            expiration_policy=gcp.pubsub.SubscriptionExpirationPolicyArgs(ttl=""),
            labels=dict(args.labels),
            opts=needs_apis,
        )

        def grant_publisher(
            suffix: str, topic_key: str, member: pulumi.Input[str]
        ) -> gcp.pubsub.TopicIAMMember:
            return gcp.pubsub.TopicIAMMember(
                f"{name}-{suffix}",
                project=args.project,
                topic=self.topics[topic_key].name,
                role="roles/pubsub.publisher",
                member=member,
                opts=needs_apis,
            )

        self.dead_letter_grant = grant_publisher(
            "dead-letter-agent-publisher", args.dead_letter_topic, args.pubsub_agent
        )
        # GCS publishes each notification as the project's Cloud Storage agent.
        self.notification_grants = {
            notification.key: grant_publisher(
                "-".join(filter(None, ("storage-agent-publisher", notification.key))),
                notification.topic,
                args.storage_agent,
            )
            for notification in args.notifications
        }
        # Pub/Sub mints the OIDC tokens of push subscriptions as the push identity.
        self.token_creator_grant = gcp.serviceaccount.IAMMember(
            f"{name}-pubsub-agent-token-creator",
            service_account_id=args.push_identity,
            role="roles/iam.serviceAccountTokenCreator",
            member=args.pubsub_agent,
            opts=needs_apis,
        )
        for publisher in args.publishers:
            grant_publisher(publisher.key, publisher.topic, publisher.member)
        self.register_outputs(
            {
                "topics": {key: topic.name for key, topic in self.topics.items()},
                "dead_letter_subscription": self.dead_letter_subscription.name,
                "summary_subscription": self.summary_subscription.name,
            }
        )

    def topic(self, key: str) -> gcp.pubsub.Topic:
        try:
            return self.topics[key]
        except KeyError:
            raise KeyError(f"no topic '{key}' in this stack") from None
