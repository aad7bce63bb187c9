"""How many torch threads a training run takes: the cores other work leaves free.

Torch takes every core it sees. On a 2-core line PC that also runs the edge server, or
beside another training job, the extra threads thrash: the single-image recipe trained at
5-17 img/s with two threads beside a one-thread job, against 30 img/s with one thread
(docs/benchmarks.md, the non-PCB proxy pairs). So a run that is not told a number counts
the cores the 1-minute load average says other work keeps busy and takes the rest, at
least one. This process's own recent work is not other work: out-of-fold calibration
trains its folds one after another in one process, and the load a fold left behind must
not halve the next fold's threads.
"""

from __future__ import annotations

import math
import os
import time

import torch

# torch's own choice (physical cores), read before any run lowers it in this process
_TORCH_DEFAULT = torch.get_num_threads()
LOAD_WINDOW_S = 60.0  # the 1-minute load average's time constant
# (wall, CPU seconds of this process) when its last run chose, or when this module loaded
_since = (time.monotonic(), time.process_time())


def own_load(cpu_s: float, wall_s: float) -> float:
    """What this process added to the 1-minute load average over the last ``wall_s``
    seconds, in which it used ``cpu_s`` of CPU: its rate, decayed as the kernel averages
    it (a 30-minute run at 2 cores adds 2; 5 s of loading at 1 core adds 0.08)."""
    if wall_s <= 0:
        return 0.0
    return cpu_s / wall_s * (1 - math.exp(-wall_s / LOAD_WINDOW_S))


def _cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - macOS and Windows lack affinity


def choose_threads(requested: int | None, *, load: float | None = None,
                   cores: int | None = None, own: float | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads for a training run; returns the number and why.

    ``requested`` (the config's ``threads``) wins; then ``OMP_NUM_THREADS`` (torchrun sets
    it to 1 per process) is left as torch read it. Otherwise the run takes the cores the
    1-minute load average leaves free once this process's own part (:func:`own_load`) is
    taken out, rounded, at least 1 and at most torch's own choice (which counts physical
    cores). ``load``, ``cores`` and ``own`` stand in for the host's in tests.
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
        try:
            load = os.getloadavg()[0]
        except OSError:  # pragma: no cover - no load average on this platform
            load = 0.0
    other = max(0.0, load - own)
    n = max(1, min(_TORCH_DEFAULT, cores, round(cores - other)))
    torch.set_num_threads(n)
    return n, (f"chosen: {cores} cores, 1-minute load {other:.1f} from other work; "
               "set threads to choose")
