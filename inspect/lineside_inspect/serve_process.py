"""A ``lineside`` server (``serve`` or ``hub``) in a child process: a free loopback port to
put it on, the wait until it answers ``/readyz``, and stopping it. What ``lineside bench``
measures against (its own interpreter and GIL, as in production) and what the tests that
start real server processes use."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
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


class _Scope:
    """The servers :func:`start` started while a :func:`stopped_at_exit` block is open."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: list[subprocess.Popen[Any]] = []
        self.closed = False


_SCOPES: list[_Scope] = []  # open blocks, innermost last (a start in any thread joins all)
_SCOPES_LOCK = threading.Lock()


@contextmanager
def stopped_at_exit() -> Iterator[None]:
    """Every server a :func:`start` that began inside the block (in any thread) started is
    stopped when the block ends, however it ends. A Ctrl-C (SIGTERM under ``cli.sigterm_as_ctrl_c``) between a
    server's start and the caller recording it left that server running (and writing in
    the bench's temp folder being removed). A start still going on in another thread when
    the block ends stops its own server (``RuntimeError``)."""
    scope = _Scope()
    with _SCOPES_LOCK:
        _SCOPES.append(scope)
    try:
        yield
    finally:
        with _SCOPES_LOCK:
            _SCOPES.remove(scope)
        with scope.lock:
            scope.closed = True
            procs = list(scope.procs)
        for proc in procs:
            stop(proc)


def _track(proc: subprocess.Popen[Any], scopes: list[_Scope]) -> bool:
    """Record ``proc`` in ``scopes`` (the blocks open when its start began): False when one
    has ended meanwhile (its owner stopped what it had: this one would run on unseen)."""
    for scope in scopes:
        with scope.lock:
            if scope.closed:
                return False
            scope.procs.append(proc)
    return True


@contextmanager
def interrupts_held() -> Iterator[None]:
    """SIGINT and SIGTERM held until the block ends, then delivered to the handlers they
    had (in the main thread: only there do signals reach Python). One inside ``Popen``
    (after the fork, before it returned) left the child running with nothing to stop it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        came.append(signum)

    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):  # (one at a time: each put back below)
            previous[sig] = signal.signal(sig, hold)
        yield
    finally:
        for sig, handler in previous.items():
            # (None: one set outside Python, which Python cannot put back)
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(came):
            signal.raise_signal(signum)  # (its own handler: a KeyboardInterrupt, or the end)


def temp_directory(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """``tempfile.TemporaryDirectory(prefix=prefix)``, SIGINT and SIGTERM held while it is
    made. One after mkdtemp's mkdir, before the object had its finalizer (a kill can come
    at any moment), left the folder behind; held, it comes once the object owns the folder,
    which is removed here when the held signal comes."""
    made: tempfile.TemporaryDirectory[str] | None = None
    try:
        with interrupts_held():
            made = tempfile.TemporaryDirectory(prefix=prefix)
    except BaseException:
        if made is not None:
            made.cleanup()
        raise
    return made


def _popen(args: list[str], env: dict[str, str] | None,
           log: Path | None) -> subprocess.Popen[bytes]:
    if log is None:
        proc = subprocess.Popen([*LINESIDE, *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        # read as it comes (a full pipe would stop the server mid-benchmark), keeping the
        # last lines for an error message
        tail: deque[bytes] = deque(maxlen=100)
        _TAILS[proc] = tail
        threading.Thread(target=_drain, args=(proc.stderr, tail), daemon=True).start()
        return proc
    with log.open("ab") as out:
        return subprocess.Popen([*LINESIDE, *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def start(args: list[str], port: int, *, env: dict[str, str] | None = None,
          log: Path | None = None, timeout_s: float = 120.0) -> tuple[subprocess.Popen[bytes], str]:
    """``lineside ARGS`` (listening on ``port``) started by this interpreter, its output
    appended to ``log`` (without one: stdout dropped, stderr kept for the error); returns
    (process, URL) once it is ready. Killed again if it is not (``RuntimeError``), and on
    a Ctrl-C (SIGTERM) at any point before this returns. Recorded in the open
    :func:`stopped_at_exit` blocks, which stop it at their end."""
    url = f"http://127.0.0.1:{port}"
    with _SCOPES_LOCK:
        scopes = list(_SCOPES)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with interrupts_held():
            proc = _popen(args, env, log)
            tracked = _track(proc, scopes)
        if not tracked:
            raise RuntimeError(f"{url}: started after the block stopping its servers ended")
        wait_ready(proc, url, timeout_s=timeout_s, log=log)
    except BaseException:  # not ready, or a Ctrl-C (SIGTERM) meanwhile: not left running
        if proc is not None:
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
