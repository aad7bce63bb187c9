"""A real ``lineside serve`` or ``lineside hub`` process for the tests that need one (a
kill -9, a SIGTERM drain, a start-up message, an installed command): started on a known
port with its output in a log file, waited for until ``/readyz`` answers, stopped, killed
and started again on the same port. The waiting and stopping are the package's own
(``lineside_inspect.serve_process``, which ``lineside bench`` uses too)."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from lineside_inspect.serve_process import LINESIDE, free_port, stop, wait_ready

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["LINESIDE", "ROOT", "ServerProcess", "free_port"]


@dataclass
class ServerProcess:
    """``args`` (the whole command: ``[*LINESIDE, "serve", ...]`` or an installed
    ``lineside``) serving on ``port``; its output is appended to ``log``. As a context
    manager: started and ready inside, stopped after."""

    args: list[str]
    log: Path
    port: int = field(default_factory=free_port)
    cwd: Path = ROOT
    env: dict[str, str] | None = None
    new_session: bool = False  # its own process group: a terminal's ^C does not reach it
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         start_new_session=self.new_session)

    def wait_ready(self, timeout_s: float = 90) -> None:
        assert self.proc is not None, "not started"
        try:
            wait_ready(self.proc, self.url, timeout_s=timeout_s, log=self.log)
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None

    def kill9(self) -> None:
        """SIGKILL: no clean-up at all, as a power cut (a no-op once it has exited)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self) -> None:
        """SIGTERM without waiting (stop several side by side, then :meth:`stop` each)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        if self.proc is not None:
            stop(self.proc, sig=sig, timeout_s=timeout_s)

    def __enter__(self) -> ServerProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
