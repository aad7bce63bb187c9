"""How many torch threads a training run takes: the cores other work leaves free.

Torch takes every core it sees. On a 2-core line PC that also runs the edge server, or
beside another training job, the extra threads thrash: the single-image recipe trained at
5-17 img/s with two threads beside a one-thread job, against 30 img/s with one thread
(docs/benchmarks.md, the non-PCB proxy pairs). So a run that is not told a number counts
the cores the 1-minute load average says other work keeps busy and takes the rest, at
least one. This process's own recent work is not other work: out-of-fold calibration
trains its folds one after another in one process, and the load a fold left behind must
not halve the next fold's threads. Nor is work that has already ended: the load average
lags a minute, so a run started right after `lineside bench train` or a test run would
take one thread for its whole budget; the CPU other processes use right now (half a
second of ``/proc/stat``) bounds it.
"""

from __future__ import annotations

import math
import os
import time

import torch

# torch's own choice (physical cores), read before any run lowers it in this process
_TORCH_DEFAULT = torch.get_num_threads()
LOAD_WINDOW_S = 60.0  # the 1-minute load average's time constant
SAMPLE_S = 0.5  # how long busy_cores() watches the CPU
# (wall, CPU seconds of this process) when its last run chose, or when this module loaded
_since = (time.monotonic(), time.process_time())


def own_load(cpu_s: float, wall_s: float) -> float:
    """What this process added to the 1-minute load average over the last ``wall_s``
    seconds, in which it used ``cpu_s`` of CPU: its rate, decayed as the kernel averages
    it (a 30-minute run at 2 cores adds 2; 5 s of loading at 1 core adds 0.08)."""
    if wall_s <= 0:
        return 0.0
    return cpu_s / wall_s * (1 - math.exp(-wall_s / LOAD_WINDOW_S))


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window_s: float = SAMPLE_S) -> float | None:
    """Cores other processes keep busy now: the host's CPU use over ``window_s`` seconds,
    less this process's own. None where ``/proc/stat`` cannot be read."""
    start, cpu0, t0 = _cpu_times(), time.process_time(), time.monotonic()
    if start is None:
        return None
    time.sleep(window_s)
    end, cpu1, t1 = _cpu_times(), time.process_time(), time.monotonic()
    if end is None or end[1] <= start[1]:
        return None
    host = (end[0] - start[0]) / (end[1] - start[1]) * (os.cpu_count() or 1)
    return max(0.0, host - (cpu1 - cpu0) / max(t1 - t0, 1e-9))


def _cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - macOS and Windows lack affinity


def choose_threads(requested: int | None, *, load: float | None = None,
                   cores: int | None = None, own: float | None = None,
                   busy: float | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads for a training run; returns the number and why.

    ``requested`` (the config's ``threads``) wins; then ``OMP_NUM_THREADS`` (torchrun sets
    it to 1 per process) is left as torch read it. Otherwise the run takes the cores the
    1-minute load average leaves free once this process's own part (:func:`own_load`) is
    taken out, or the cores other processes keep busy now (:func:`busy_cores`) if fewer,
    rounded, at least 1 and at most torch's own choice (which counts physical cores).
    ``load``, ``cores``, ``own`` and ``busy`` stand in for the host's in tests (a given
    ``load`` without ``busy`` leaves the present out).
    """
    global _since
    now = (time.monotonic(), time.process_time())
    if own is None:
        own = own_load(now[1] - _since[1], now[0] - _since[0])
    _since = now
    if requested is not None:
        torch.set_num_threads(requested)
        return requested, "set by threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "from OMP_NUM_THREADS"
    cores = _cores() if cores is None else cores
    if load is None:
        busy = busy_cores() if busy is None else busy
        try:
            load = os.getloadavg()[0]
        except OSError:  # pragma: no cover - no load average on this platform
            load = 0.0
    other = max(0.0, load - own)
    why = f"1-minute load {other:.1f} from other work"
    if busy is not None and busy < other:  # the rest of that load has ended
        other = busy
        why += f", {busy:.1f} cores busy now"
    n = max(1, min(_TORCH_DEFAULT, cores, round(cores - other)))
    torch.set_num_threads(n)
    return n, f"chosen: {cores} cores, {why}; set threads to choose"
