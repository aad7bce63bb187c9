"""How many cores inference may use, which onnxruntime's default does not ask: it counts
the machine's physical cores whatever the process may run on (a container's cpuset, a
CPU quota)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

SYS_CPU = Path("/sys/devices/system/cpu")
CGROUP = Path("/sys/fs/cgroup")


def physical_cores(cpus: Iterable[int]) -> int:
    """Physical cores among the logical ``cpus`` (the hyper-threads of a core count once),
    from sysfs; the logical count where sysfs does not say."""
    cpus = list(cpus)
    cores = set()
    for n in cpus:
        topology = SYS_CPU / f"cpu{n}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or 1


def cpu_quota() -> int | None:
    """The CPUs a cgroup quota allows (``docker run --cpus``, a Kubernetes CPU limit),
    rounded up; None without a quota."""
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = (CGROUP / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: -1 when there is none
        quota_us = int((CGROUP / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((CGROUP / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else max(1, math.ceil(quota_us / period_us))
    except (OSError, ValueError):
        return None


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return list(range(os.cpu_count() or 1))


def machine_cores() -> int:
    """The machine's physical cores: the threads onnxruntime's default asks for."""
    return physical_cores(range(os.cpu_count() or 1))


def available_cores() -> int:
    """The physical cores this process may use: those of its CPU affinity (a container's
    cpuset), and no more than its cgroup CPU quota allows."""
    cores = physical_cores(_allowed_cpus())
    quota = cpu_quota()
    return min(cores, quota) if quota else cores
