"""An explicit OIDC push subscription with a dead-letter policy (pitfalls 9 and 10).

Eventarc's managed subscription cannot dead-letter, so deliveries that need a
dead-letter queue are declared here instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

_MIN_ATTEMPTS, _MAX_ATTEMPTS = 5, 100
_MAX_ACK_DEADLINE = 600


@dataclass(frozen=True)
class PushSubscriptionArgs:
    project: str
    subscription_name: str
    topic: pulumi.Input[str]  # topic id
    push_endpoint: pulumi.Input[str]
    audience: pulumi.Input[str]
    push_identity_email: pulumi.Input[str]
    dead_letter_topic: pulumi.Input[str]  # topic id
    max_delivery_attempts: int
    pubsub_agent: pulumi.Input[str]
    ack_deadline_seconds: int = 60
    labels: Mapping[str, str] = field(default_factory=dict)
    # Grants Pub/Sub needs before it can push or dead-letter (token creator, publisher).
    grants: tuple[pulumi.Resource, ...] = ()
    apis: tuple[pulumi.Resource, ...] = ()

    def __post_init__(self) -> None:
        if not _MIN_ATTEMPTS <= self.max_delivery_attempts <= _MAX_ATTEMPTS:
            raise ValueError(
                f"max_delivery_attempts {self.max_delivery_attempts} is outside "
                f"{_MIN_ATTEMPTS}..{_MAX_ATTEMPTS}, the range Pub/Sub accepts"
            )
        if not 10 <= self.ack_deadline_seconds <= _MAX_ACK_DEADLINE:
            raise ValueError(f"ack_deadline_seconds {self.ack_deadline_seconds} is outside 10..600")


class PushSubscription(pulumi.ComponentResource):
    subscription: gcp.pubsub.Subscription

    def __init__(
        self, name: str, args: PushSubscriptionArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ml-pipeline:gcp:PushSubscription", name, None, opts)
        self.subscription = gcp.pubsub.Subscription(
            name,
            project=args.project,
            name=args.subscription_name,
            topic=args.topic,
            ack_deadline_seconds=args.ack_deadline_seconds,
            push_config=gcp.pubsub.SubscriptionPushConfigArgs(
                push_endpoint=args.push_endpoint,
                oidc_token=gcp.pubsub.SubscriptionPushConfigOidcTokenArgs(
                    service_account_email=args.push_identity_email,
                    audience=args.audience,
                ),
            ),
            dead_letter_policy=gcp.pubsub.SubscriptionDeadLetterPolicyArgs(
                dead_letter_topic=args.dead_letter_topic,
                max_delivery_attempts=args.max_delivery_attempts,
            ),
            retry_policy=gcp.pubsub.SubscriptionRetryPolicyArgs(
                minimum_backoff="10s", maximum_backoff="600s"
            ),
            labels=dict(args.labels),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*args.apis, *args.grants]),
        )
        # Dead-lettering acknowledges on the source subscription as the Pub/Sub agent.
        gcp.pubsub.SubscriptionIAMMember(
            f"{name}-agent-subscriber",
            project=args.project,
            subscription=self.subscription.name,
            role="roles/pubsub.subscriber",
            member=args.pubsub_agent,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.apis)),
        )
        self.register_outputs({"name": self.subscription.name, "push_endpoint": args.push_endpoint})
