"""Leases: at most one live attempt per run, even when deliveries arrive at once.

A lease is a small JSON object created with if-generation-match=0, so exactly one of
several concurrent attempts creates it. It records who holds it and until when. An
attempt that finds a live lease raises ``LeaseHeldError`` (transient: the platform
redelivers later, and that delivery finds the recorded outcome). A lease past its
expiry belonged to an attempt that crashed or was killed at its timeout; it is taken
over with a generation precondition, so of several late attempts only one wins.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pipeline_core import logging as log
from pipeline_core.errors import ObjectNotFoundError, PreconditionFailedError, TransientError
from pipeline_core.storage import Storage, StoredObject, write_json

Clock = Callable[[], datetime]
Outcome = TypeVar("Outcome")


def utc_now() -> datetime:
    return datetime.now(UTC)


class LeaseHeldError(TransientError):
    """Another attempt holds the run; retry later."""

    code = "run_in_progress"


@dataclass(frozen=True)
class Lease:
    storage: Storage
    name: str
    generation: int
    holder: str

    def release(self) -> None:
        """Delete the lease if it is still ours (a takeover may have replaced it)."""
        try:
            self.storage.delete(self.name, if_generation_match=self.generation)
        except PreconditionFailedError:
            log.warning("the lease was taken over before release", lease=self.name)


def acquire(storage: Storage, name: str, *, seconds: int, clock: Clock) -> Lease:
    """The lease ``name`` for ``seconds``, or ``LeaseHeldError`` while another holds it."""
    holder = secrets.token_hex(8)
    now = clock()
    record = {
        "holder": holder,
        "claimed_at": now.isoformat(),
        "expires_at": (now + timedelta(seconds=seconds)).isoformat(),
    }
    try:
        generation = write_json(storage, name, record, if_generation_match=0)
        return Lease(storage, name, generation, holder)
    except PreconditionFailedError:
        existing = _read_existing(storage, name)
    held: dict[str, Any] = json.loads(existing.data)
    expires_at = datetime.fromisoformat(held["expires_at"])
    if now < expires_at:
        raise LeaseHeldError(
            f"attempt {held['holder']} has held {name} since {held['claimed_at']} "
            f"(until {held['expires_at']}); retry later"
        )
    log.warning("taking over an expired lease", lease=name, previous_holder=held["holder"])
    try:
        generation = write_json(storage, name, record, if_generation_match=existing.generation)
    except PreconditionFailedError:
        raise LeaseHeldError(
            f"the expired lease {name} changed while taking it over "
            "(another attempt was first); retry later"
        ) from None
    return Lease(storage, name, generation, holder)


def once(
    storage: Storage,
    lease_name: str,
    *,
    seconds: int,
    clock: Clock,
    recorded: Callable[[], Outcome | None],
    work: Callable[[], Outcome],
) -> Outcome:
    """A run's ``recorded`` outcome, or else its ``work`` done under the lease
    ``lease_name``: concurrent deliveries do the work once, the others get
    ``LeaseHeldError`` and, redelivered, the outcome ``work`` recorded."""
    earlier = recorded()
    if earlier is not None:
        return earlier
    lease = acquire(storage, lease_name, seconds=seconds, clock=clock)
    try:
        # The attempt that held the lease before us may have finished since our check.
        earlier = recorded()
        return earlier if earlier is not None else work()
    finally:
        lease.release()


def _read_existing(storage: Storage, name: str) -> StoredObject:
    try:
        return storage.read(name)
    except ObjectNotFoundError:
        # Released between our create and this read: its holder has just finished.
        raise LeaseHeldError(f"{name} was released while we read it; retry later") from None
