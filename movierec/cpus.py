"""How many CPUs this process may really use: the smaller of its CPU affinity and its
cgroup's CPU quota (a container's ``--cpus`` / Kubernetes CPU limit).

``os.cpu_count()`` reports the host's cores. In a container limited to 2 CPUs on a 64-core
host, sizing thread pools by it makes 64 threads fight over 2 CPUs' worth of time slices:
torch training measured 4.8 s alone and 75 s with every core's thread on a machine where a
neighbour held one core (``--threads 1``: ~6 s).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use, at least 1: affinity, capped by the cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota in CPUs (e.g. 1.5), or None when unlimited or unknown.

    cgroup v2: ``cpu.max`` holds "QUOTA PERIOD" or "max PERIOD" for this process's group;
    cgroup v1: ``cpu/cpu.cfs_quota_us`` (-1 = none) over ``cpu.cfs_period_us``."""
    for quota_file, period_file in (
        (root / "cpu.max", None),
        (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"),
        (root / "cpu,cpuacct" / "cpu.cfs_quota_us", root / "cpu,cpuacct" / "cpu.cfs_period_us"),
    ):
        try:
            fields = quota_file.read_text().split()
            if period_file is not None:
                fields.append(period_file.read_text().strip())
        except OSError:
            continue
        if len(fields) != 2 or fields[0] in ("max", "-1"):
            return None
        try:
            quota, period = int(fields[0]), int(fields[1])
        except ValueError:
            return None
        return quota / period if quota > 0 and period > 0 else None
    return None
