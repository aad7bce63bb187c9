"""A ``lineside`` server (``serve`` or ``hub``) in a child process: a free loopback port to
put it on, the wait until it answers ``/readyz``, and stopping it. What ``lineside bench``
measures against (its own interpreter and GIL, as in production) and what the tests that
start real server processes use."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import IO, Any

import httpx

# the CLI of the installed package, run by this interpreter
LINESIDE = [sys.executable, "-m", "lineside_inspect.cli"]


# the last lines a server started without a log wrote to stderr (see start)
_TAILS: weakref.WeakKeyDictionary[subprocess.Popen[Any], deque[bytes]] = (
    weakref.WeakKeyDictionary())


def _drain(stream: IO[bytes] | None, tail: deque[bytes]) -> None:
    for line in stream or ():
        tail.append(line)


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS's pick), and not one this
    process was handed lately."""
    return free_ports(1)[0]


# ports free_ports handed out lately: one bound only later (a server starting) is free
# again in the OS's eyes, and the OS does hand a just-released port out again (CI saw a
# weed master and its S3 grpc port get the same one)
_REMEMBERED = 512
_HANDED: deque[int] = deque(maxlen=_REMEMBERED)
_HANDED_LOCK = threading.Lock()
_SHARE = (0, 1)  # this process takes ports p with p // 2 % count == index: see share_ports


def share_ports(index: int, count: int) -> tuple[int, int]:
    """From now on take only ports ``p`` with ``p // 2 % count == index`` (Linux hands
    ``bind`` odd ports only, leaving ``connect`` the even ones), and return the share
    this process had. ``count`` processes picking ports side by side (pytest-xdist's
    workers) each remember only their own picks, so without a share of their own two of
    them can pick the same port before either's server binds it."""
    global _SHARE
    if not 0 <= index < count:
        raise ValueError(f"port share {index} of {count}: index must be in 0..count-1")
    before, _SHARE = _SHARE, (index, count)
    return before


def free_ports(n: int) -> list[int]:
    """``n`` different loopback ports nobody listens on right now, none handed out by this
    process lately, all in this process's share (:func:`share_ports`). Every socket is held
    open until all are picked, so the OS cannot give the same port twice in one call."""
    held: list[socket.socket] = []
    picked: list[int] = []
    try:
        with _HANDED_LOCK:
            index, count = _SHARE
            while len(picked) < n:
                if len(held) > (n + _REMEMBERED) * count + 64:
                    raise RuntimeError("no free loopback port")
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
                if port // 2 % count == index and port not in _HANDED:
                    picked.append(port)
            _HANDED.extend(picked)
        return picked
    finally:
        for s in held:
            s.close()


def _output(proc: subprocess.Popen[Any], log: Path | None) -> str:
    if log is not None and log.is_file():
        return log.read_text(errors="replace")[-3000:]
    if proc in _TAILS:
        return b"".join(_TAILS[proc]).decode(errors="replace")[-3000:]
    stream = proc.stderr or proc.stdout
    if stream is None or proc.poll() is None:  # reading a live process's pipe would block
        return ""
    data = stream.read()
    return (data.decode(errors="replace") if isinstance(data, bytes) else data)[-3000:]


def wait_ready(proc: subprocess.Popen[Any], url: str, *, timeout_s: float = 120.0,
               log: Path | None = None) -> None:
    """Until ``url`` answers ``GET /readyz`` with 200. Raises ``RuntimeError`` with the tail
    of the server's output (``log``, else its piped output) when the process exits first,
    and when ``timeout_s`` passes (the process is then left running: the caller stops it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({proc.returncode}) before it was "
                               f"ready:\n{_output(proc, log)}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: the server was not ready within {timeout_s:g} s:\n"
                               f"{_output(proc, log)}")
        time.sleep(0.1)


def start(args: list[str], port: int, *, env: dict[str, str] | None = None,
          log: Path | None = None, timeout_s: float = 120.0) -> tuple[subprocess.Popen[bytes], str]:
    """``lineside ARGS`` (listening on ``port``) started by this interpreter, its output
    appended to ``log`` (without one: stdout dropped, stderr kept for the error); returns
    (process, URL) once it is ready. Killed again if it is not (``RuntimeError``)."""
    url = f"http://127.0.0.1:{port}"
    if log is None:
        proc = subprocess.Popen([*LINESIDE, *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        # read as it comes (a full pipe would stop the server mid-benchmark), keeping the
        # last lines for an error message
        tail: deque[bytes] = deque(maxlen=100)
        _TAILS[proc] = tail
        threading.Thread(target=_drain, args=(proc.stderr, tail), daemon=True).start()
    else:
        with log.open("ab") as out:
            proc = subprocess.Popen([*LINESIDE, *args], env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, url, timeout_s=timeout_s, log=log)
    except BaseException:  # not ready, or a Ctrl-C (SIGTERM) while waiting: not left running
        proc.kill()
        proc.wait()
        raise
    return proc, url


def stop(proc: subprocess.Popen[Any], *, sig: int = signal.SIGTERM,
         timeout_s: float = 30.0) -> None:
    """Send ``sig`` (a graceful stop: the server drains) and wait; killed if it has not
    exited within ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
