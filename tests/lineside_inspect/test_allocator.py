"""One malloc arena for an inspecting process (``lineside_inspect.allocator``): threads
started after the call allocate from glibc's main arena, not one of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import ctypes, sys, threading
from lineside_inspect.allocator import use_one_arena
if sys.argv[1] == "one":
    assert use_one_arena()
if sys.argv[1] == "kept":
    assert not use_one_arena()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
def work():
    p = libc.malloc(200_000)  # under the mmap threshold: from the thread's arena
    libc.free(ctypes.c_void_p(p))
t = threading.Thread(target=work)
t.start()
t.join()
libc.malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def _arenas(mode: str, **extra: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    env.update(PYTHONPATH=str(ROOT / "inspect"), **extra)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return sum(line.startswith("Arena ") for line in out.stderr.splitlines())


@pytest.mark.skipif(not (hasattr(os, "confstr") and
                         (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")),
                    reason="glibc only")
def test_threads_share_the_main_arena_once_asked() -> None:
    assert _arenas("default") == 2  # the thread got an arena of its own
    assert _arenas("one") == 1
    # an operator's own setting is left alone
    assert _arenas("kept", MALLOC_ARENA_MAX="4") == 2


def test_serve_sets_it_before_threads_start() -> None:
    """``lineside serve`` calls it before uvicorn, onnxruntime or the limiter start a
    thread (a thread that has allocated keeps its arena)."""
    import inspect as pyinspect

    from lineside_inspect import serve

    source = pyinspect.getsource(serve.run)
    assert source.index("use_one_arena()") < source.index("create_app(")
