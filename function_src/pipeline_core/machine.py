"""What the instance a function runs on offers it."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """The CPUs this process may run on: a Cloud Function gets 1 vCPU up to 2 GiB and
    2 at 4 GiB or more; ``os.cpu_count()`` would report the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
