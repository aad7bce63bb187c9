"""How many torch threads a training run takes: the cores other work leaves free.

Torch takes every core it sees. On a 2-core line PC that also runs the edge server, or
beside another training job, the extra threads thrash: the single-image recipe trained at
5-17 img/s with two threads beside a one-thread job, against 30 img/s with one thread
(docs/benchmarks.md, the non-PCB proxy pairs). So a run that is not told a number counts
the cores the 1-minute load average says are busy and takes the rest, at least one.
"""

from __future__ import annotations

import os

import torch

# torch's own choice (physical cores), read before any run lowers it in this process
_TORCH_DEFAULT = torch.get_num_threads()


def _cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - macOS and Windows lack affinity


def choose_threads(requested: int | None, *, load: float | None = None,
                   cores: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads for a training run; returns the number and why.

    ``requested`` (the config's ``threads``) wins; then ``OMP_NUM_THREADS`` (torchrun sets
    it to 1 per process) is left as torch read it. Otherwise the run takes the cores the
    1-minute load average leaves free, rounded, at least 1 and at most torch's own choice
    (which counts physical cores). ``load`` and ``cores`` stand in for the host's in tests.
    """
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
    n = max(1, min(_TORCH_DEFAULT, cores, round(cores - load)))
    torch.set_num_threads(n)
    return n, (f"chosen: {cores} cores, 1-minute load {load:.1f} from other work; "
               "set threads to choose")
