"""The C allocator's set-up for a process that inspects: one malloc arena.

glibc gives every thread that allocates its own malloc arena, and a thread's arena hands
freed pages back to the kernel: each inspection's ~1.2 MB model input, allocated on a
worker thread, then faulted its pages in again. With every thread on the main arena the
pages are reused. Measured on the server (issue #12, 2 cores, interleaved A/B of the same
tree): preprocess 0.74 -> 0.25 ms, round trip minus inference 5.33 -> 4.86 ms p50. With
two cores there is nothing to gain from more arenas (they exist to spare threads on many
cores from waiting on one arena's lock).

Called by ``lineside serve`` and the edge benchmarks (so a benchmark's in-process baseline
runs as the server does), before they start threads: a thread that has allocated keeps
its arena (and glibc may hand a new thread an arena that already exists, so call it early).
Elsewhere (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("lineside")

M_ARENA_MAX = -8  # glibc's <malloc.h>


def use_one_arena() -> bool:
    """Put threads created from now on onto glibc's main malloc arena; True if done. An
    operator's own choice (``MALLOC_ARENA_MAX``, or ``arena_max`` in ``GLIBC_TUNABLES``)
    is left as it is."""
    if "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        log.info("malloc arenas as the environment sets them (MALLOC_ARENA_MAX/GLIBC_TUNABLES)")
        return False
    try:
        libc_name = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):  # not a GNU system
        return False
    if not libc_name.startswith("glibc"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, glibc's among them
        return bool(libc.mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError):  # pragma: no cover - a glibc without mallopt
        log.debug("mallopt unavailable: malloc arenas left as they are")
        return False
